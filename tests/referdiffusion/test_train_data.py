"""Training data: rows -> tensors, edit-token masks, refusals of bad data, the step-based sampler."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from refcoco_edit.errors import DataError  # noqa: E402
from referdiffusion.train.data import (  # noqa: E402
    REQUIRED_COLUMNS,
    DataOptions,
    EditingDataset,
    StepSampler,
    collate,
    image_to_tensor,
    mask_to_tensor,
    open_dataset,
)
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

PROMPT = "replace the left circle with a red square"
EDIT = "a red square"


@pytest.fixture(scope="module")
def tokenizer(tiny_cache):
    from transformers import CLIPTokenizer

    from refcoco_edit.models.resolver import resolve

    return CLIPTokenizer.from_pretrained(resolve("tiny-ip2p").source, subfolder="tokenizer")


def _rows(n=2, size=(40, 24), mask_size=None, edit_mask_size=None):
    rng = np.random.default_rng(0)
    w, h = size
    rows = []
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        m[4:12, 6:20] = 1
        src = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        edi = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mw, mh = mask_size or size
        ew, eh = edit_mask_size or size
        start = PROMPT.index(EDIT)
        rows.append({
            "sample_id": f"s{i}",
            "source_image": src,
            "edited_image": edi,
            "source_mask": Image.fromarray(np.resize(m * 255, (mh, mw)).astype(np.uint8), mode="L"),
            "edit_mask": Image.fromarray(np.resize(m * 255, (eh, ew)).astype(np.uint8), mode="L"),
            "prompt": PROMPT,
            "edit_spans": [[start, start + len(EDIT)]],
        })
    return rows


def _dataset(rows):
    features = datasets.Features({
        "sample_id": datasets.Value("string"),
        "source_image": datasets.Image(),
        "edited_image": datasets.Image(),
        "source_mask": datasets.Image(),
        "edit_mask": datasets.Image(),
        "prompt": datasets.Value("string"),
        "edit_spans": datasets.List(datasets.List(datasets.Value("int32"))),
    })
    return datasets.Dataset.from_list(rows, features=features)


def test_sample_tensors(tokenizer):
    rows = _rows()
    ds = EditingDataset(_dataset(rows), tokenizer, DataOptions(resolution=32, resize="stretch"))
    item = ds[0]
    assert item["sample_id"] == "s0"
    for key in ("source_pixel_values", "edited_pixel_values"):
        t = item[key]
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32
        assert -1 <= float(t.min()) and float(t.max()) <= 1
    # against an independent resize of the source
    ref = np.asarray(rows[0]["source_image"].resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1
    np.testing.assert_allclose(item["source_pixel_values"].numpy().transpose(1, 2, 0), ref, atol=1e-6)
    assert item["source_mask"].shape == (1, 32, 32) and item["edit_mask"].shape == (1, 32, 32)
    # edit mask: any rule, binary; source mask: area rule, soft
    assert set(np.unique(item["edit_mask"].numpy())) <= {0.0, 1.0}
    assert item["source_mask"].max() <= 1 and item["source_mask"].min() >= 0

    # tokens: the ones marked as P_e are exactly the edit text's own tokens
    ids, marks = item["input_ids"], item["edit_token_mask"]
    assert ids.shape == (tokenizer.model_max_length,) and marks.shape == ids.shape
    own = tokenizer(EDIT).input_ids[1:-1]  # without BOS/EOS
    assert ids[marks > 0].tolist() == own
    assert item["attention_mask"].sum() == len(tokenizer(PROMPT).input_ids)

    batch = collate([ds[0], ds[1]])
    assert batch["sample_id"] == ["s0", "s1"] and batch["source_pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == (2, tokenizer.model_max_length)


def test_mask_resizing_rules():
    m = np.zeros((64, 48), np.uint8)
    m[:, 5] = 1  # a line one pixel wide
    area = mask_to_tensor(m, 16, "stretch", rule="area")[0].numpy()  # stretch 48x64 -> 16x16
    # box filter from 48 to 16 columns (3:1) and 64 to 16 rows (4:1): the line is 1/3 of its column
    assert area.shape == (16, 16)
    np.testing.assert_allclose(area[:, 1], 1 / 3, atol=1e-6)
    assert np.count_nonzero(area) == 16
    anym = mask_to_tensor(m, 16, "stretch", rule="any")[0].numpy()
    np.testing.assert_array_equal(anym, (area > 0).astype(np.float32))
    # crop mode keeps the aspect and the centre
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    assert image_to_tensor(img, 16, "crop").shape == (3, 16, 16)
    c = mask_to_tensor(np.ones((32, 64), np.uint8), 16, "crop")
    assert c.shape == (1, 16, 16) and float(c.min()) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask_size": (40, 20)}, "sample s0: source_mask is 40x20 but source_image is 40x24"),
        ({"edit_mask_size": (20, 24)}, "sample s0: edit_mask is 20x24 but source_image is 40x24"),
    ],
)
def test_bad_masks_are_refused_with_the_sample_id(tokenizer, kwargs, message):
    ds = EditingDataset(_dataset(_rows(**kwargs)), tokenizer, DataOptions(resolution=32))
    with pytest.raises(DataError) as info:
        ds[0]
    assert message in str(info.value)


def test_bad_rows_and_missing_columns(tokenizer, tmp_path):
    rows = _rows()
    rows[1]["edit_spans"] = [[0, 999]]
    ds = EditingDataset(_dataset(rows), tokenizer, DataOptions(resolution=32))
    with pytest.raises(DataError, match="sample s1: span"):
        ds[1]
    rows = _rows()
    rows[0]["edited_image"] = rows[0]["edited_image"].resize((20, 12))
    with pytest.raises(DataError, match="sample s0: edited_image is 20x12 but source_image is 40x24"):
        EditingDataset(_dataset(rows), tokenizer, DataOptions(resolution=32))[0]

    full = _dataset(_rows())
    folder = tmp_path / "no_edit_mask"
    full.remove_columns(["edit_mask", "edit_spans"]).save_to_disk(str(folder))
    with pytest.raises(DataError) as info:
        open_dataset(str(folder), split=None)
    assert "lacks column(s) edit_mask, edit_spans" in str(info.value)
    with pytest.raises(DataError, match="lacks column"):
        EditingDataset(full.remove_columns(["prompt"]), tokenizer)
    good = tmp_path / "good"
    full.save_to_disk(str(good))
    assert len(open_dataset(str(good), split=None, max_samples=1)) == 1
    with pytest.raises(DataError, match="no dataset"):
        open_dataset(str(tmp_path / "nothing" / "here"), split=None)


def test_images_are_decoded_within_the_pixel_limit_naming_the_sample(tokenizer, tmp_path):
    """The trainer decodes rows itself, under the project's one pixel limit, instead of letting
    `datasets` decode any size (or follow a path a cell names)."""
    from tests.images import bomb_png

    bomb = bomb_png(20000, 20000)  # a few hundred bytes claiming 20000 x 20000: refused before any decoding
    rows = _rows(n=1)
    big = _dataset(rows).cast_column("source_image", datasets.Image(decode=False)).map(
        lambda r: {"source_image": {"bytes": bomb, "path": None}})
    ds = EditingDataset(big.cast_column("source_image", datasets.Image()), tokenizer, DataOptions(resolution=32))
    with pytest.raises(DataError, match=r"sample s0: .*(over|limit)"):
        ds[0]
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    rows = _rows(n=1)
    ds = EditingDataset(_dataset(rows).cast_column("source_image", datasets.Image(decode=False)).map(
        lambda r: {"source_image": {"bytes": None, "path": str(outside)}}), tokenizer, DataOptions(resolution=32))
    with pytest.raises(DataError, match="sample s0"):
        ds[0]


def test_sample_datasets_have_both_stages(tiny_cache):
    synth = open_dataset("sample:synth", split="train")
    edits = open_dataset("sample:edits", split="train")
    assert synth.column_names == [*REQUIRED_COLUMNS, "image_id", "generation"] == edits.column_names
    assert len(synth) > 50 and len(edits) > 50
    assert synth[0]["sample_id"].startswith("synth-")
    assert open_dataset("sample:synth", split=None).num_rows == synth.num_rows  # only train refs were used


# ---------------------------------------------------------------------------------------------
# one protocol for training and evaluation


@pytest.mark.parametrize("size", [(640, 480), (333, 500), (64, 64), (1000, 123), (17, 29)])
def test_training_and_evaluation_preprocess_an_image_the_same_way(size):
    from benchmark.methods._common import working_image
    from benchmark.methods.referdiffusion import ReferDiffusionMethod
    from referdiffusion.train.config import TrainConfig, load_config
    from referdiffusion.train.data import pixel_mask

    # the defaults agree: training's data protocol is rie-bench's for ReferDiffusion
    cfg = TrainConfig()
    assert (cfg.data.resize, cfg.data.resolution) == ("aspect", ReferDiffusionMethod.default_size) == ("aspect", 512)
    shipped = load_config("full", ["stages.synth.dataset=/x", "stages.edit.dataset=/y"])
    assert (shipped.data.resize, shipped.data.resolution) == ("aspect", 512)

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for res in (512, 64):
        evaluated = np.asarray(working_image(image, res), np.float32) / 127.5 - 1  # what rie-bench feeds the model
        h, w = evaluated.shape[:2]
        assert max(h, w) == res and w % 8 == 0 and h % 8 == 0
        scale = res / max(size)  # aspect kept: each side within the rounding to 8 of the scaled side
        assert abs(w - size[0] * scale) <= 4 and abs(h - max(8, size[1] * scale)) <= 4
        trained = image_to_tensor(image, res).numpy().transpose(1, 2, 0)
        assert trained.shape == (res, res, 3)
        np.testing.assert_array_equal(trained[:h, :w], evaluated)
        assert not trained[h:].any() and not trained[:, w:].any()  # the padding
        valid = pixel_mask(image.size, res)[0].numpy()
        assert valid[:h, :w].all() and valid.sum() == h * w
        # masks follow the same geometry: a full mask covers the picture, not the padding
        full = mask_to_tensor(np.ones((size[1], size[0]), np.uint8), res, rule="any")[0].numpy()
        np.testing.assert_array_equal(full, valid)


def test_referdiffusion_method_gets_the_same_pixels_as_training(tmp_path):
    from types import SimpleNamespace

    from benchmark.methods.referdiffusion import ReferDiffusionMethod

    seen = {}

    def fake_pipe(prompt, image, **kw):
        seen["image"] = image
        return SimpleNamespace(images=[image], masks=[Image.new("L", image.size)])

    method = ReferDiffusionMethod(model=str(tmp_path))
    method.pipe = fake_pipe
    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    method.edit(SimpleNamespace(source_image=source, prompt="paint a cat on the red mask", source_mask=None), seed=0)
    fed = np.asarray(seen["image"], np.float32) / 127.5 - 1
    trained = image_to_tensor(source, method.size).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(trained[:fed.shape[0], :fed.shape[1]], fed)


# ---------------------------------------------------------------------------------------------
# prompt styles and splits


def _styled(rows):
    import json

    for row in rows:
        mask_prompt = "paint a square on the red mask"
        row["generation"] = json.dumps({"stage": 1, "prompt_style": "expression", "prompts": {
            "expression": {"prompt": row["prompt"], "referring_spans": [[8, 23]], "edit_spans": row["edit_spans"]},
            "mask": {"prompt": mask_prompt, "referring_spans": [[18, 30]], "edit_spans": [[0, 14]]}}})
    features = _dataset(_rows(1)).features.copy()
    features["generation"] = datasets.Value("string")
    return datasets.Dataset.from_list(rows, features=features)


def test_prompt_style_picks_the_recorded_stage1_prompt(tokenizer):
    ds = _styled(_rows())
    own = EditingDataset(ds, tokenizer, DataOptions(resolution=32))[0]
    expression = EditingDataset(ds, tokenizer, DataOptions(resolution=32, prompt_style="expression"))[0]
    mask = EditingDataset(ds, tokenizer, DataOptions(resolution=32, prompt_style="mask"))[0]
    assert own["input_ids"].tolist() == expression["input_ids"].tolist()
    want = tokenizer("paint a square on the red mask", padding="max_length",
                     max_length=tokenizer.model_max_length).input_ids
    assert mask["input_ids"].tolist() == want
    assert mask["input_ids"][mask["edit_token_mask"] > 0].tolist() == tokenizer("paint a square").input_ids[1:-1]
    with pytest.raises(DataError, match="generation"):
        EditingDataset(_dataset(_rows()), tokenizer, DataOptions(resolution=32, prompt_style="mask"))


def test_evaluation_splits_are_refused_unless_allowed(tmp_path, caplog):
    from refcoco_edit.errors import InputError

    whole = datasets.DatasetDict({"train": _dataset(_rows(2)), "testA": _dataset(_rows(1))})
    whole.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(InputError, match="testA are evaluation splits"):
        open_dataset(str(tmp_path / "d"), split=None)
    with pytest.raises(InputError, match="allow_eval_splits"):
        open_dataset(str(tmp_path / "d"), split="testA")
    assert open_dataset(str(tmp_path / "d"), split="train").num_rows == 2
    with caplog.at_level("WARNING"):
        assert open_dataset(str(tmp_path / "d"), split=None, allow_eval_splits=True).num_rows == 3
    assert "evaluation split(s) testA" in caplog.text


def test_step_sampler_order_is_a_function_of_the_step():
    n, b = 10, 3
    s = StepSampler(n, b, seed=5)
    stream = [s.batch_indices(m) for m in range(10)]
    flat = [i for batch in stream for i in batch]
    # each epoch is a permutation of range(n)
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n:2 * n]) == list(range(n))
    assert flat[:n] != flat[n:2 * n]
    # the DataLoader's view, and a resumed one, read the same stream
    it = iter(StepSampler(n, b, seed=5))
    assert [next(it) for _ in range(12)] == flat[:12]
    it = iter(StepSampler(n, b, seed=5, start_batch=4))
    assert [next(it) for _ in range(6)] == flat[12:18]
    other = StepSampler(n, b, seed=6)
    assert [other.batch_indices(m) for m in range(3)] != stream[:3]
    # two processes: each step's batches are disjoint pieces of one global stream
    r0, r1 = StepSampler(n, 2, seed=1, rank=0, world=2), StepSampler(n, 2, seed=1, rank=1, world=2)
    single = StepSampler(n, 4, seed=1)
    for m in range(5):
        assert r0.batch_indices(m) + r1.batch_indices(m) == single.batch_indices(m)
    with pytest.raises(ValueError):
        StepSampler(0, 2)
    loader = torch.utils.data.DataLoader(list(range(n)), batch_size=b, sampler=StepSampler(n, b, seed=5))
    got = [next(iter_) for iter_ in [iter(loader)] for _ in range(3)]
    assert [g.tolist() for g in got] == stream[:3]
