"""Prompt composition, exact spans, subject extraction, the offline rephraser and `refcoco-edit prompt`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refcoco_edit.cli import build_parser, run_cli
from refcoco_edit.errors import InputError
from refcoco_edit.refer.reader import RefCOCO
from refcoco_edit.text.prompts import (
    CLI_KEYS,
    TEMPLATES,
    Prompt,
    compose,
    indefinite,
    prompt_for_ref,
    ref_sentences,
    referring_phrase,
)
from refcoco_edit.text.rephrase import RuleRephraser
from refcoco_edit.text.subjects import COCO_CATEGORIES, extract_subject, head_noun, key_words, subject_for_ref

SAMPLE = "sample"
TARGETS = {"replace": "giraffe", "remove": None, "attribute": "red", "add": "apple", "other": "make it shine"}


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def sample() -> RefCOCO:
    return RefCOCO.load(SAMPLE)


def spans_exact(p: Prompt) -> None:
    """Checks written apart from Prompt.validate: each span's text, order, disjointness, trimming."""
    pieces = []
    for spans, text in ((p.referring_spans, p.referring_text), (p.edit_spans, p.edit_text)):
        assert spans, p
        got = []
        for s, e in spans:
            assert isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(p.prompt)
            piece = p.prompt[s:e]
            assert piece == piece.strip() and piece
            got.append(piece)
            pieces.append((s, e))
        assert " ".join(got) == text
    pieces.sort()
    for (_s1, e1), (s2, _e2) in zip(pieces, pieces[1:]):
        assert e1 <= s2, f"overlap in {p}"


# ------------------------------------------------------------------------------ composition


def test_examples_from_the_issue() -> None:
    p = compose("zebra on the left", "replace", "giraffe", template="<replace> {ref} <with {target_np}>")
    assert p.prompt == "replace the zebra on the left with a giraffe"
    assert p.referring_spans == [[8, 29]] and p.edit_spans == [[0, 7], [30, 44]]
    assert p.referring_text == "the zebra on the left" and p.edit_text == "replace with a giraffe"
    p = compose("man in the blue jacket", "remove", template="<remove> {ref}")
    assert p.prompt == "remove the man in the blue jacket" and p.target == "" and p.edit_text == "remove"
    p = compose("cup on the right", "attribute", "red", template="<make> {ref} <{target}>")
    assert p.prompt == "make the cup on the right red" and p.edit_spans == [[0, 4], [26, 29]]
    p = compose("dog", "add", "cat", template="<add {target_np} next to> {ref}")
    assert p.prompt == "add a cat next to the dog" and p.edit_text == "add a cat next to"


@pytest.mark.parametrize("expression, phrase", [
    ("man on the left", "the man on the left"),
    ("The man on the left.", "the man on the left"),
    ("a sandwich", "the sandwich"),
    ("an apple at the back", "the apple at the back"),
    ("the zebra", "the zebra"),
    ("his left hand", "his left hand"),
    ("two people", "two people"),
    ("right", "the right one"),
    ("far left", "the far left one"),
    ("on the left", "the one on the left"),
    ("one on the left", "the one on the left"),
    ("TV on right", "the TV on right"),
    ("  guy   in red ", "the guy in red"),
])
def test_article_handling(expression: str, phrase: str) -> None:
    assert referring_phrase(expression) == phrase
    p = compose(expression, "remove", template="<remove> {ref}")
    assert p.referring_text == phrase and p.prompt == f"remove {phrase}"


@pytest.mark.parametrize("target, np_", [("giraffe", "a giraffe"), ("apple", "an apple"), ("umbrella", "an umbrella"),
                                         ("unicorn", "a unicorn"), ("hour glass", "an hour glass"),
                                         ("red car", "a red car"), ("the cat", "the cat"), ("giraffes", "giraffes"),
                                         ("two dogs", "two dogs"), ("glass", "a glass"), ("bus", "a bus")])
def test_indefinite_article(target: str, np_: str) -> None:
    assert indefinite(target) == np_


def test_missing_parts_are_clear_errors() -> None:
    for edit in ("replace", "attribute", "add", "other"):
        with pytest.raises(InputError, match=f"edit type {edit} needs a target"):
            compose("man on the left", edit)
        with pytest.raises(InputError, match="needs a target"):
            compose("man on the left", edit, "   ")
    with pytest.raises(InputError, match="referring part"):
        compose("  . ", "remove")
    with pytest.raises(InputError, match="unknown edit type"):
        compose("man", "explode")
    assert compose("man", "remove", "ignored").target == ""
    assert compose("man", "add-next-to", "cat").edit_type == "add"
    assert compose("man", "free", "make it glow").edit_type == "other"


def test_free_text_with_placeholder() -> None:
    p = compose("man in blue", "other", "make {ref} wear a hat")
    assert p.prompt == "make the man in blue wear a hat"
    assert p.edit_text == "make wear a hat" and p.referring_text == "the man in blue"
    spans_exact(p)
    with pytest.raises(InputError):
        compose("man", "other", "{ref} and {ref}")
    with pytest.raises(InputError, match="no words besides"):
        compose("man", "other", "{ref}")
    odd = compose("man", "other", "make {ref} say {hi}")  # braces in free text are text, not slots
    assert odd.prompt == "make the man say {hi}" and odd.edit_text == "make say {hi}"
    assert compose("man", "other", "say {hi} please", seed=2).edit_text == "say {hi} please"


def test_seed_picks_varied_templates_deterministically() -> None:
    for edit, target in TARGETS.items():
        prompts = {compose("cup on the right", edit, target, seed=s).prompt for s in range(60)}
        assert len(prompts) >= min(3, len(TEMPLATES[edit])), edit
        assert compose("cup on the right", edit, target, seed=5) == compose("cup on the right", edit, target, seed=5)


def test_colour_attributes_get_painting_phrasings() -> None:
    colour = {compose("cup", "attribute", "blue", seed=s).prompt.split()[0] for s in range(80)}
    other = {compose("cup", "attribute", "wooden", seed=s).prompt.split()[0] for s in range(80)}
    assert "paint" in colour and "paint" not in other


def test_validate_catches_bad_spans() -> None:
    good = compose("zebra", "remove", template="<remove> {ref}")
    assert good.problems() == []
    bad = [
        Prompt(good.prompt, "the zebra", "remove", [[7, 16]], [[0, 7]], "remove"),  # trailing space
        Prompt(good.prompt, "the zebra", "remove", [[7, 16]], [[0, 8]], "remove"),  # overlap + space
        Prompt(good.prompt, "the zebra", "remove", [[7, 17]], [[0, 6]], "remove"),  # out of range
        Prompt(good.prompt, "zebra", "remove", [[7, 16]], [[0, 6]], "remove"),  # text differs
        Prompt(good.prompt, "the zebra", "", [[7, 16]], [], "remove"),  # no edit part
        Prompt(good.prompt, "the zebra", "remove", [[7, 16]], [[0, 6]], "replace"),  # no target
        Prompt(good.prompt, "the zebra", "remove", [[7, 16]], [[0, 6]], "remove", source="magic"),
    ]
    for p in bad:
        assert p.problems(), p
        with pytest.raises(InputError, match="bad prompt"):
            p.validate()
    round_trip = Prompt.from_dict(json.loads(json.dumps(good.to_dict())))
    assert round_trip == good
    assert list(good.to_dict(cli=True)) == list(CLI_KEYS) == [
        "prompt", "referring_text", "edit_text", "referring_spans", "edit_spans", "edit_type", "target"]


def test_spans_exact_over_all_sample_refs_types_and_seeds(sample: RefCOCO) -> None:
    count = 0
    for ref_id in sample.ref_ids():
        sentences = ref_sentences(sample.ref(ref_id))
        for edit, target in TARGETS.items():
            for seed in range(6):
                p = prompt_for_ref(sample, ref_id, edit, target, seed=seed)
                spans_exact(p)
                assert p.validate() is p and p.edit_type == edit and p.reviewed and p.source == "template"
                # the referring part is the ref's own expression (an article may be added or adjusted)
                words = p.referring_text.lower().split()
                sent = sentences[p.meta["sent_index"]].lower().split()
                assert words[-len(sent):] == sent or words[1:len(sent) + 1] == sent or words[1:] == sent[1:]
                if target:
                    assert target in p.edit_text
                count += 1
    assert count >= 5 * 6 * 50


def test_sentence_chosen_by_seed(sample: RefCOCO) -> None:
    multi = next(r for r in sample.ref_ids() if len(ref_sentences(sample.ref(r))) >= 3)
    used = {prompt_for_ref(sample, multi, "remove", seed=s).meta["sent_index"] for s in range(40)}
    assert len(used) >= 2
    p = prompt_for_ref(sample, multi, "remove", sent_index=1)
    assert p.meta["sentence"] == ref_sentences(sample.ref(multi))[1]
    with pytest.raises(InputError, match="no index 99"):
        prompt_for_ref(sample, multi, "remove", sent_index=99)


# ------------------------------------------------------------------------------ subjects


@pytest.mark.parametrize("expression, noun", [
    ("a sandwich on the right", "sandwich"),
    ("man on the left", "man"),
    ("left man in blue", "man"),
    ("blue shirt guy", "guy"),
    ("baby elephant", "elephant"),
    ("two zebras on the left", "zebra"),
    ("the orange on the left", "orange"),
    ("orange cup next to the plate", "cup"),
    ("hot dog on the plate", "hot dog"),
    ("teddy bear in the middle", "teddy bear"),
    ("women in white", "woman"),
    ("guy holding a cup", "guy"),
    ("on the left , a dog", "dog"),
    ("white shirt", "shirt"),
])
def test_head_noun(expression: str, noun: str) -> None:
    assert head_noun(expression) == noun


def test_subject_categories_and_fallbacks() -> None:
    assert extract_subject("guy in red").category == "person"
    assert extract_subject("the mug").category == "cup"
    assert extract_subject("right", category="person") .noun == "person"
    assert extract_subject("right").noun is None
    assert extract_subject("the red circle on the left", extra_nouns=["circle"]).noun == "circle"
    assert len(COCO_CATEGORIES) == 80 and all(head_noun(c) == c for c in COCO_CATEGORIES)
    words = key_words("the second red circle from the left", extra_nouns=["circle"])
    assert words == ["second", "red", "left", "circle"]


def test_subjects_match_refshapes_kinds(sample: RefCOCO) -> None:
    """Every RefShapes sentence's subject is the referred shape's kind (generic nouns fall back to it)."""
    kinds = [c["name"] for c in sample.categories]
    checked = 0
    for ref_id in sample.ref_ids():
        kind = sample.category(sample.ref(ref_id)["category_id"])["name"]
        for sent in ref_sentences(sample.ref(ref_id)):
            assert extract_subject(sent, kind, kinds).noun == kind, sent
            checked += 1
        assert subject_for_ref(sample, ref_id).noun == kind
    assert checked > 100


def test_subject_for_ref_on_coco_like_data(mini_root: Path) -> None:
    data = RefCOCO.load(mini_root)
    assert subject_for_ref(data, 0, 0) == extract_subject("man on the left", "person")
    assert subject_for_ref(data, 0, 1).noun == "guy" and subject_for_ref(data, 0, 1).category == "person"
    assert subject_for_ref(data, 2, 2).noun == "person"  # "middle one": the category stands in


# ------------------------------------------------------------------------------ offline rephraser


def test_offline_rephraser_gives_valid_variety(sample: RefCOCO) -> None:
    for ref_id in sample.ref_ids()[:20]:
        for edit, target in TARGETS.items():
            p = prompt_for_ref(sample, ref_id, edit, target, seed=1)
            out = RuleRephraser(seed=0).rephrase(p, 4)
            assert len(out.rephrasings) == 4 and out.error is None
            texts = [r.prompt.lower() for r in out.rephrasings]
            assert len(set(texts)) == 4 and p.prompt.lower() not in texts
            for r in out.rephrasings:
                spans_exact(r)
                assert r.source == "rephrase" and r.reviewed is False
                assert r.referring_text == p.referring_text and r.edit_type == edit
    p = compose("cup on the right", "attribute", "red")
    assert RuleRephraser(0).rephrase(p, 3) == RuleRephraser(0).rephrase(p, 3)
    assert RuleRephraser(0).rephrase(p, 3).rephrasings != RuleRephraser(1).rephrase(p, 3).rephrasings


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli():
    parser = build_parser({"prompt": "refcoco_edit.commands.prompt"})
    return lambda argv: run_cli(parser, argv)


def test_cli_prompt_json(cli, mini_root: Path, capsys) -> None:
    assert cli(["prompt", "--refcoco", str(mini_root), "--ref-id", "0", "--edit", "replace", "--target", "giraffe",
                "--seed", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == list(CLI_KEYS)
    assert out["edit_type"] == "replace" and out["target"] == "giraffe"
    assert out["referring_text"] in ("the man on the left", "the left guy")
    spans_exact(Prompt(**out))
    assert cli(["prompt", "--refcoco", str(mini_root), "--ref-id", "1", "--edit", "remove", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "" and out["referring_text"] == "the cup at top right"


def test_cli_prompt_errors(cli, mini_root: Path, capsys) -> None:
    assert cli(["prompt", "--refcoco", str(mini_root), "--ref-id", "0", "--edit", "replace"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "edit type replace needs a target" in err
    assert cli(["prompt", "--refcoco", str(mini_root), "--ref-id", "7", "--edit", "remove"]) == 2
    assert "no ref with id 7" in capsys.readouterr().err


def test_cli_prompt_enrich_offline(cli, mini_root: Path, capsys) -> None:
    assert cli(["prompt", "--refcoco", str(mini_root), "--ref-id", "0", "--edit", "attribute", "--target", "red",
                "--enrich", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rephrasings"]) == 3 and out["cached"] is False
    for r in out["rephrasings"]:
        assert r["source"] == "rephrase" and r["reviewed"] is False
        spans_exact(Prompt.from_dict(r))
    assert cli(["prompt", "--refcoco", str(mini_root), "--ref-id", "0", "--edit", "remove", "--enrich", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("[rephrase, unreviewed]") == 2


def test_cli_prompt_enrich_through_llm(cli, mini_root: Path, tmp_path: Path, capsys) -> None:
    from tests.refcoco_edit import llm_server as srv

    server = srv.ScriptedServer().start()
    try:
        server.default = srv.dynamic(lambda req, user: {"rephrasings": [
            {"prompt": f"please {user['instruction']}", "referring": user["referring_part"]},
            {"prompt": "remove the man", "referring": "the man"}]})
        argv = ["prompt", "--refcoco", str(mini_root), "--ref-id", "0", "--edit", "remove", "--enrich", "2", "--json",
                "--llm-base-url", server.base_url, "--llm-model", "m", "--llm-cache", str(tmp_path / "c")]
        assert cli(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert [r["source"] for r in out["rephrasings"]] == ["llm"] and out["rephrasings"][0]["reviewed"] is False
        assert out["rejected"][0]["reason"] == "referring part lost 'left'" and out["cached"] is False
        assert cli(argv) == 0 and json.loads(capsys.readouterr().out)["cached"] is True
        assert len(server.requests) == 1
        server.default = srv.status(401, message="bad key")
        assert cli(argv[:-2] + ["--no-llm-cache"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "HTTP 401" in err
    finally:
        server.stop()
