"""`refcoco-edit generate` on the RefShapes sample with the tiny models (working size 64, 2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.cli import main
from refcoco_edit.imaging.masks import save_mask_png
from refcoco_edit.refer.reader import RefCOCO


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    """One RefShapes image, its first ref's mask and another object's mask, as files."""
    data = RefCOCO.load("sample")
    ref = data.ref(data.ref_ids()[0])
    others = [r for r in data.image_refs(ref["image_id"]) if r["ref_id"] != ref["ref_id"]]
    folder = tmp_path_factory.mktemp("sample")
    paths = {"image": folder / "image.png", "mask": folder / "mask.png", "other": folder / "other.png"}
    data.load_image(ref["image_id"]).save(paths["image"])
    save_mask_png(data.mask(ref["ref_id"]), paths["mask"])
    save_mask_png(data.ann_mask(others[0]["ann_id"]) if others else data.mask(ref["ref_id"]), paths["other"])
    return paths


def _run(sample: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["generate", "--image", str(sample["image"]), "--mask", str(sample["mask"]), "--out", str(out),
                 "--steps", "2", "--size", "64", *extra])


def _check_outputs(out: Path, sample: dict[str, Path], k: int) -> dict:
    record = json.loads((out / "candidates.json").read_text())
    src = Image.open(sample["image"])
    assert len(record["candidates"]) == k
    for row in record["candidates"]:
        im = Image.open(out / row["image"])
        mask = np.asarray(Image.open(out / row["edit_mask"]))
        assert im.size == src.size and im.mode == "RGB"
        assert mask.shape == (src.height, src.width) and set(np.unique(mask)) <= {0, 255} and mask.any()
        assert row["params"]["seed"] == row["seed"]
    return record


def test_generate_region_edit_is_reproducible(tiny_cache, sample, tmp_path) -> None:
    args = ("--pipeline", "region_edit", "--text", "a blue star", "--model", "tiny-sd15", "--num", "2", "--seed", "7")
    assert _run(sample, tmp_path / "a", *args) == 0
    record = _check_outputs(tmp_path / "a", sample, 2)
    assert record["model"] == "tiny-sd15" and [c["seed"] for c in record["candidates"]] == [7, 8]
    params = record["candidates"][0]["params"]
    assert params["prompt"] == "a blue star" and params["steps"] == 2 and params["work_size"] == [64, 48]
    assert _run(sample, tmp_path / "b", *args) == 0
    for name in ("candidate_0.png", "candidate_1.png", "candidate_0_mask.png", "candidate_1_mask.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = json.loads((tmp_path / "a" / "candidates.json").read_text())
    b = json.loads((tmp_path / "b" / "candidates.json").read_text())
    assert a == b


def test_generate_other_pipelines(tiny_cache, sample, tmp_path) -> None:
    assert _run(sample, tmp_path / "c", "--pipeline", "classical_inpaint", "--method", "ns", "--num", "2") == 0
    record = _check_outputs(tmp_path / "c", sample, 2)
    assert record["model"] == "opencv" and record["candidates"][0]["params"]["method"] == "ns"
    assert _run(sample, tmp_path / "i", "--pipeline", "inpaint", "--model", "tiny-sd-inpaint") == 0
    assert _check_outputs(tmp_path / "i", sample, 1)["candidates"][0]["params"]["method"] == "sd_inpainting"
    assert _run(sample, tmp_path / "p", "--pipeline", "composition", "--model", "tiny-paint-by-example",
                "--example", str(sample["image"]), "--example-mask", str(sample["other"])) == 0
    record = _check_outputs(tmp_path / "p", sample, 1)
    assert "cropped by" in record["example"]


def test_generate_errors_are_one_line(sample, tmp_path, capsys) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code = main(["generate", "--pipeline", "classical_inpaint", "--image", str(bad), "--mask", str(sample["mask"]),
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("refcoco-edit: error:") and "corrupt.png" in err and err.count("\n") == 1
    empty = tmp_path / "empty.png"
    save_mask_png(np.zeros((192, 256), np.uint8), empty)
    code = main(["generate", "--pipeline", "classical_inpaint", "--image", str(sample["image"]), "--mask", str(empty),
                 "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "mask is empty" in err and err.count("\n") == 1
    assert _run(sample, tmp_path / "z", "--pipeline", "region_edit") == 2
    assert "needs --text" in capsys.readouterr().err
    assert _run(sample, tmp_path / "z", "--pipeline", "composition") == 2
    assert _run(sample, tmp_path / "z", "--pipeline", "inpaint", "--model", "a", "--model", "b") == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_generate_resizes_a_mismatched_mask(sample, tmp_path, caplog) -> None:
    small = tmp_path / "small.png"
    Image.open(sample["mask"]).resize((128, 96), Image.Resampling.NEAREST).save(small)
    with caplog.at_level("WARNING", logger="refcoco_edit.commands.generate"):
        code = main(["generate", "--pipeline", "classical_inpaint", "--image", str(sample["image"]), "--mask",
                     str(small), "--out", str(tmp_path / "w")])
    assert code == 0
    assert [r.getMessage() for r in caplog.records] == [
        "mask of 128x96 resized to the image's 256x192 (nearest neighbour)"]
    _check_outputs(tmp_path / "w", sample, 1)
