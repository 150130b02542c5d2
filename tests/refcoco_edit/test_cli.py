"""`refcoco-edit` data commands, run in-process and, for start-up cost, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from refcoco_edit.cli import main
from refcoco_edit.refer.reader import RefCOCO


def test_stats_json(mini_root: Path, capsys) -> None:
    assert main(["stats", "--refcoco", str(mini_root), "--dataset", "refcoco", "--split-by", "unc", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"dataset": "refcoco", "split_by": "unc", "images": 2, "annotations": 4, "categories": 2,
                   "refs": 3, "sentences": 6, "splits": {"testA": 1, "train": 1, "val": 1}}


def test_refs_lists_sentences(mini_root: Path, capsys) -> None:
    assert main(["refs", "--refcoco", str(mini_root), "--split", "val", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"ref_id": 2, "ann_id": 12, "image_id": 2, "category": "person", "split": "val",
                     "sentences": ["person", "caf\u00e9 person", "middle one"]}]
    assert main(["refs", "--refcoco", str(mini_root), "--image-id", "1"]) == 0
    text = capsys.readouterr().out
    assert "man on the left | the left guy" in text and "cup at top right" in text


def test_mask_png(mini_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "m" / "mask.png"
    assert main(["mask", "--refcoco", str(mini_root), "--ref-id", "1", "--out", str(out)]) == 0
    im = Image.open(out)
    assert im.mode == "L" and im.size == (60, 40)
    arr = np.asarray(im)
    assert set(np.unique(arr)) == {0, 255}
    np.testing.assert_array_equal(arr == 255, RefCOCO.load(mini_root).mask(1) == 1)


def test_errors_are_one_line(mini_root: Path, capsys) -> None:
    assert main(["stats", "--refcoco", str(mini_root), "--split-by", "google"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refcoco-edit: error: refs file not found")
    assert main(["refs", "--refcoco", str(mini_root), "--split", "nope"]) == 2
    assert "has no split 'nope'" in capsys.readouterr().err
    assert main(["mask", "--refcoco", str(mini_root), "--ref-id", "9", "--out", "x.png"]) == 2
    assert "no ref with id 9" in capsys.readouterr().err


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from refcoco_edit.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'datasets', 'gradio', 'PIL', 'cv2', 'openai')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    res = subprocess.run([sys.executable, "-m", "refcoco_edit", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "stats" in res.stdout and "mask" in res.stdout
