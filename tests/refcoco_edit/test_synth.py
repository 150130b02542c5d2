"""Stage-1 synthesis: masks and pixels relate as designed, spans are exact, runs are deterministic,
flips swap left/right (or are skipped), and the output is the export's dataset format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.cli import main
from refcoco_edit.dataset.synth import (
    MASK_TEMPLATES,
    NAMED_COLOURS,
    SynthConfig,
    choose_colour,
    compose_prompt,
    crop_box,
    iter_synth,
    picture_hash,
    swap_left_right,
    synth_dataset,
    synth_sample,
)
from refcoco_edit.errors import InputError
from refcoco_edit.refer.reader import RefCOCO
from refcoco_edit.schema import validate
from refcoco_edit.text.llm import Enrichment
from refcoco_edit.text.prompts import Prompt, ref_sentences, referring_phrase


@pytest.fixture(scope="module")
def shapes() -> RefCOCO:
    return RefCOCO.load("sample")


def _original(data: RefCOCO, sample) -> tuple[np.ndarray, np.ndarray]:
    """The ref's picture and object mask with the sample's crop and flip applied, recomputed here."""
    g = sample.generation
    image = np.asarray(data.load_image(sample.image_id).convert("RGB"))
    mask = data.mask(sample.ref_id)
    if g["crop_xyxy"] is not None:
        x0, y0, x1, y1 = g["crop_xyxy"]
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    if g["flipped"]:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, mask


# ---------------------------------------------------------------------------- the samples
def test_every_sample_relates_source_target_and_masks_as_designed(shapes: RefCOCO) -> None:
    samples = list(iter_synth(shapes, SynthConfig(seed=3)))
    assert len(samples) == len(shapes.ref_ids(split="train"))  # every train ref gives one
    assert {s.split for s in samples} == {"train"}
    assert any(s.generation["flipped"] for s in samples) and any(s.generation["crop_xyxy"] for s in samples)
    assert any(not s.generation["flipped"] for s in samples) and any(s.generation["crop_xyxy"] is None
                                                                      for s in samples)
    for s in samples:
        assert validate(s) == [], s.sample_id
        src, tgt = np.asarray(s.source_image), np.asarray(s.edited_image)
        m, me = s.source_mask.astype(bool), s.edit_mask.astype(bool)
        image, mask = _original(shapes, s)
        np.testing.assert_array_equal(tgt, image)  # target = the original picture (augmented)
        np.testing.assert_array_equal(s.source_mask, mask)  # M = the object mask (augmented)
        assert mask.sum() == shapes.mask(s.ref_id).sum()  # the crop kept the whole object
        assert (me | m).sum() == me.sum() and me.sum() > m.sum()  # M_e contains M and is larger
        rgb = NAMED_COLOURS[s.generation["colour"]]
        assert (src[me] == rgb).all()  # inside M_e: the flat named colour
        np.testing.assert_array_equal(src[~me], tgt[~me])  # outside: untouched
        assert s.edit_type == "other" and s.pipeline == "synthetic" and s.status == "accepted"
        assert s.annotator == "synth" and s.target


def test_expression_style_spans_are_exact_and_name_the_expression_colour_and_subject(shapes: RefCOCO) -> None:
    for s in iter_synth(shapes, SynthConfig(seed=5, limit=40, prompt_style="expression")):
        g = s.generation
        assert s.referring_spans and s.edit_spans
        assert " ".join(s.prompt[a:b] for a, b in s.referring_spans) == s.referring_text
        assert " ".join(s.prompt[a:b] for a, b in s.edit_spans) == s.edit_text
        expression = swap_left_right(g["sentence"]) if g["flipped"] else g["sentence"]
        assert s.referring_text == referring_phrase(expression)
        assert g["sentence"] in ref_sentences(shapes.ref(s.ref_id))
        assert f"the {g['colour']} mask" in s.edit_text
        assert s.target in s.edit_text and s.target in s.prompt


def test_mask_style_is_the_default_and_refers_to_the_coloured_mask(shapes: RefCOCO) -> None:
    samples = list(iter_synth(shapes, SynthConfig(seed=5, limit=40)))
    for s in samples:
        g = s.generation
        assert g["prompt_style"] == "mask"
        assert " ".join(s.prompt[a:b] for a, b in s.referring_spans) == s.referring_text
        assert " ".join(s.prompt[a:b] for a, b in s.edit_spans) == s.edit_text
        assert s.referring_text == f"the {g['colour']} mask"  # P_r: the coloured mask
        assert s.target in s.edit_text and g["colour"] not in s.edit_text  # P_e: paint the subject
        expression = swap_left_right(g["sentence"]) if g["flipped"] else g["sentence"]
        assert expression.lower() not in s.prompt.lower()  # the RefCOCO expression is not in the prompt
    assert len({s.generation["template"] for s in samples}) > 3  # the templates vary the phrasing


def test_the_papers_example_prompt_and_spans() -> None:
    import random

    class First(random.Random):
        def choice(self, seq):  # always the first template: "<paint {target_np}> on {ref}"
            return seq[0]

    assert MASK_TEMPLATES[0] == "<paint {target_np}> on {ref}"
    p, _ = compose_prompt(First(0), "sandwich on the left", "sandwich", "blue", "mask")
    assert p.prompt == "paint a sandwich on the blue mask"
    assert p.referring_spans == [[20, 33]] and p.prompt[20:33] == "the blue mask" == p.referring_text
    assert p.edit_spans == [[0, 16]] and p.prompt[0:16] == "paint a sandwich" == p.edit_text


def test_both_styles_are_recorded_and_the_style_changes_only_the_prompt(shapes: RefCOCO) -> None:
    for ref_id in shapes.ref_ids(split="train")[:15]:
        m = synth_sample(shapes, ref_id, SynthConfig(seed=9, prompt_style="mask"))
        e = synth_sample(shapes, ref_id, SynthConfig(seed=9, prompt_style="expression"))
        np.testing.assert_array_equal(np.asarray(m.source_image), np.asarray(e.source_image))
        np.testing.assert_array_equal(m.edit_mask, e.edit_mask)
        assert m.generation["prompts"] == e.generation["prompts"]
        for sample, style in ((m, "mask"), (e, "expression")):
            rec = sample.generation["prompts"][style]
            assert (rec["prompt"], rec["referring_spans"], rec["edit_spans"]) == (
                sample.prompt, sample.referring_spans, sample.edit_spans)
        other = m.generation["prompts"]["expression"]
        assert Prompt.from_spans(other["prompt"], other["referring_spans"], other["edit_spans"], "other",
                                 m.target).referring_text == e.referring_text


def test_image_hash_is_of_the_untouched_picture(shapes: RefCOCO) -> None:
    s = synth_sample(shapes, shapes.ref_ids(split="train")[0], SynthConfig(seed=0, crop_prob=1, flip_prob=1))
    original = np.asarray(shapes.load_image(s.image_id).convert("RGB"))
    assert s.generation["image_sha256"] == picture_hash(original)
    assert picture_hash(original) != picture_hash(original[:, ::-1])
    assert picture_hash(original) != picture_hash(original.reshape(original.shape[1], original.shape[0], 3))


# ---------------------------------------------------------------------------- splits
def test_evaluation_splits_are_refused_unless_asked_for(shapes: RefCOCO, caplog) -> None:
    with pytest.raises(InputError, match="testA.*--allow-eval-splits"):
        SynthConfig(split="testA").check()
    with pytest.raises(InputError, match="testA, testB, val"):
        next(iter_synth(shapes, SynthConfig(split=None)))
    with caplog.at_level("WARNING"):
        samples = list(iter_synth(shapes, SynthConfig(split=None, allow_eval_splits=True)))
    assert len(samples) == len(shapes.ref_ids())
    assert {"testA", "testB"} <= {s.split for s in samples}
    assert "evaluation split" in caplog.text


def test_cli_refuses_evaluation_splits_and_warns_when_allowed(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--refcoco", "sample", "--out", str(tmp_path / "x"), "--split", "testA"]) == 2
    assert "--allow-eval-splits" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["synth", "--refcoco", "sample", "--out", str(tmp_path / "y"), "--split", "all",
                 "--allow-eval-splits", "--limit", "3", "--no-save-to-disk", "--json"]) == 0
    assert "warning: using evaluation split(s) testA, testB, val" in capsys.readouterr().err


def test_dilation_grows_with_the_object(shapes: RefCOCO) -> None:
    cfg = SynthConfig(seed=0, crop_prob=0, flip_prob=0, dilation_ratio=0.2, max_dilation_px=40)
    rows = [(int(shapes.mask(s.ref_id).sum()), s.generation["dilation_px"]) for s in iter_synth(shapes, cfg)]
    rows.sort()
    small, large = rows[0], rows[-1]
    assert large[0] > 4 * small[0] and large[1] > small[1]
    for area, r in rows:
        assert r == min(40, max(3, round(0.2 * area ** 0.5)))


def test_same_seed_same_samples_other_seed_other_samples(shapes: RefCOCO) -> None:
    def run(seed: int, limit: int | None = 12) -> list:
        return list(iter_synth(shapes, SynthConfig(seed=seed, limit=limit)))

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        assert x.prompt == y.prompt and x.generation == y.generation
        np.testing.assert_array_equal(np.asarray(x.source_image), np.asarray(y.source_image))
        np.testing.assert_array_equal(x.edit_mask, y.edit_mask)
    assert [x.prompt for x in a] != [z.prompt for z in c]
    # a ref's sample does not depend on what came before it (limit, split filter)
    some = a[5]
    alone = synth_sample(shapes, some.ref_id, SynthConfig(seed=7))
    assert alone.prompt == some.prompt and alone.generation == some.generation
    split = shapes.ref(some.ref_id)["split"]
    same = next(s for s in iter_synth(shapes, SynthConfig(seed=7, split=split)) if s.ref_id == some.ref_id)
    assert same.prompt == some.prompt


def test_dataset_is_the_export_format_and_byte_identical_for_a_seed(tmp_path: Path, shapes: RefCOCO) -> None:
    import datasets

    cfg = SynthConfig(seed=2, limit=10)
    s1 = synth_dataset(shapes, tmp_path / "a", cfg, shard_size=4)
    synth_dataset(shapes, tmp_path / "b", SynthConfig(seed=2, limit=10), shard_size=4, save_to_disk=False)
    assert s1.written == 10 and s1.export.rows == 10

    def digest(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").glob("*"))}

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    ds = datasets.load_dataset(str(tmp_path / "a"), cache_dir=str(tmp_path / "cache"))
    want = {s.sample_id: s for s in iter_synth(shapes, SynthConfig(seed=2, limit=10))}
    assert sum(len(d) for d in ds.values()) == 10
    for d in ds.values():
        assert d.features["pipeline"].int2str(d[0]["pipeline"]) == "synthetic"
        for row in d:
            s = want[row["sample_id"]]
            np.testing.assert_array_equal(np.asarray(row["source_image"]), np.asarray(s.source_image))
            np.testing.assert_array_equal(np.asarray(row["edit_mask"]) // 255, s.edit_mask)
            assert row["prompt"] == s.prompt and row["referring_spans"] == s.referring_spans
            assert json.loads(row["generation"]) == s.generation
    assert (tmp_path / "a" / "hf" / "dataset_dict.json").is_file()
    assert "stage-1" in (tmp_path / "a" / "README.md").read_text().lower()


# ---------------------------------------------------------------------------- flips
@pytest.mark.parametrize("text, want", [
    ("man on the left", "man on the right"),
    ("Right guy", "Left guy"),
    ("leftmost zebra", "rightmost zebra"),
    ("the LEFT one", "the RIGHT one"),
    ("left-hand side cup", "right-hand side cup"),
    ("bright red car", "bright red car"),  # "right" inside a word is not a direction
    ("upper left corner, not the right one", "upper right corner, not the left one"),
    ("guy on lft", None),  # an abbreviation it cannot swap: do not flip
    ("cup rt side", None),
])
def test_swap_left_right(text: str, want: str | None) -> None:
    assert swap_left_right(text) == want


def test_flip_swaps_the_expression_and_mirrors_everything(tmp_path: Path, mini_root: Path) -> None:
    data = RefCOCO.load(mini_root)
    cfg = SynthConfig(seed=0, flip_prob=1.0, crop_prob=0.0, prompt_style="expression")
    s = synth_sample(data, 0, cfg)  # "man on the left" / "the left guy"
    assert s.generation["flipped"]
    assert "right" in s.referring_text and "left" not in s.referring_text
    image = np.asarray(data.load_image(1).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(s.edited_image), image[:, ::-1])
    np.testing.assert_array_equal(s.source_mask, data.mask(0)[:, ::-1])
    # an expression it cannot swap: not flipped, the words stay
    for sent in data.ref(0)["sentences"]:
        sent["sent"] = "guy on lft"
    s = synth_sample(data, 0, cfg)
    assert not s.generation["flipped"] and s.generation["flip_skipped"]
    assert "lft" in s.referring_text
    np.testing.assert_array_equal(np.asarray(s.edited_image), image)


# ---------------------------------------------------------------------------- pieces
def test_colour_avoids_named_and_similar_colours() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        c = choose_colour(rng, "the red car next to a grey van", np.array([20.0, 60.0, 220.0]))
        assert c not in ("red", "gray", "blue")


def test_crop_box_always_contains_the_kept_box() -> None:
    import random

    rng = random.Random(1)
    for _ in range(200):
        w, h = rng.randint(20, 300), rng.randint(20, 300)
        x0, y0 = rng.randrange(w), rng.randrange(h)
        keep = (x0, y0, rng.randint(x0 + 1, w), rng.randint(y0 + 1, h))
        cx0, cy0, cx1, cy1 = crop_box(rng, keep, w, h, 0.5)
        assert 0 <= cx0 <= keep[0] and keep[2] <= cx1 <= w and 0 <= cy0 <= keep[1] and keep[3] <= cy1 <= h


class FakeRephraser:
    """Stands in for the LLM: one rephrasing that keeps the colour, one that drops it."""

    def __init__(self) -> None:
        self.calls = 0

    def rephrase(self, prompt: Prompt, n: int, *, category=None, extra_nouns=()) -> Enrichment:
        self.calls += 1
        if prompt.referring_text.endswith(" mask"):  # mask style: the colour is in P_r
            out = []
            for text, ref in ((f"please paint {prompt.target} over {prompt.referring_text}", prompt.referring_text),
                              (f"please paint {prompt.target} over that area", "that area")):
                r = text.index(ref)
                out.append(Prompt.from_spans(text, [[r, r + len(ref)]], [[0, len(f"please paint {prompt.target}")]],
                                             "other", prompt.target, source="llm", reviewed=False))
            return Enrichment(prompt, rephrasings=out)
        colour = next(c for c in NAMED_COLOURS if f"the {c} mask" in prompt.edit_text)
        good_text = f"please paint {prompt.target} over the {colour} mask where {prompt.referring_text} was"
        bad_text = f"please paint {prompt.target} where {prompt.referring_text} was"
        out = []
        for text, edit in ((good_text, f"please paint {prompt.target} over the {colour} mask"),
                           (bad_text, f"please paint {prompt.target}")):
            r = text.index(prompt.referring_text)
            out.append(Prompt.from_spans(text, [[r, r + len(prompt.referring_text)]], [[0, len(edit)]],
                                         "other", prompt.target, source="llm", reviewed=False))
        return Enrichment(prompt, rephrasings=out)


@pytest.mark.parametrize("style", ["mask", "expression"])
def test_enrichment_keeps_only_rephrasings_that_name_the_colour(shapes: RefCOCO, style: str) -> None:
    fake = FakeRephraser()
    samples = list(iter_synth(shapes, SynthConfig(seed=1, limit=30, enrich=2, prompt_style=style), rephraser=fake))
    assert fake.calls == 30
    sources = {s.generation["prompt_source"] for s in samples}
    assert sources == {"template", "llm"}
    for s in samples:
        part = s.referring_text if style == "mask" else s.edit_text
        assert f"the {s.generation['colour']} mask" in part
        assert s.generation["prompts"][style]["prompt"] == s.prompt
        assert validate(s) == []
        if s.generation["prompt_source"] == "llm":
            assert s.prompt.startswith("please paint") and s.prompt != s.generation["template_prompt"]


# ---------------------------------------------------------------------------- CLI
def test_cli_synth_writes_limit_rows(tmp_path: Path, capsys) -> None:
    out = tmp_path / "stage1"
    assert main(["synth", "--refcoco", "sample", "--out", str(out), "--limit", "5", "--seed", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 5 and summary["export"]["rows"] == 5
    assert (out / "README.md").is_file() and list((out / "data").glob("*-00000-of-00001.parquet"))
    assert summary["export"]["splits"] == {"train": 5}  # the train split by default


@pytest.mark.parametrize("style", ["mask", "expression"])
def test_cli_prompt_style(tmp_path: Path, capsys, style: str) -> None:
    import datasets

    out = tmp_path / style
    args = ["synth", "--refcoco", "sample", "--out", str(out), "--limit", "3", "--no-save-to-disk", "--json"]
    assert main(args + (["--prompt-style", style] if style != "mask" else [])) == 0
    rows = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    for row in rows:
        g = json.loads(row["generation"])
        assert g["prompt_style"] == style and g["prompts"][style]["prompt"] == row["prompt"]
        assert (row["referring_text"] == f"the {g['colour']} mask") == (style == "mask")


def test_cli_enrich_without_an_llm_is_an_error(tmp_path: Path, monkeypatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert main(["synth", "--refcoco", "sample", "--out", str(tmp_path / "x"), "--enrich", "2"]) == 2
    assert not (tmp_path / "x").exists()


def test_bad_config_is_refused() -> None:
    with pytest.raises(InputError):
        SynthConfig(limit=0).check()
    with pytest.raises(InputError):
        SynthConfig(colours=("chartreuse",)).check()
