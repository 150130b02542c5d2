"""Files other people wrote: a path they name stays inside its folder (`inside`), and every image a
dataset holds is decoded within the one pixel limit (`open_image`), never by `datasets` itself."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.errors import DataError
from refcoco_edit.imaging.files import MAX_PIXELS, OutsideFolderError, inside
from tests.refcoco_edit.store_worker import make_sample

HUGE = (12000, 9000)


def huge_png(size: tuple[int, int] = HUGE) -> bytes:
    """A real PNG of `size` (1-bit, all black): a few kilobytes that decode to a gigabyte of RGB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", size).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 400_000 and size[0] * size[1] > MAX_PIXELS
    return data


# ---------------------------------------------------------------------------- inside
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "a.png").write_bytes(b"a")
    (tmp_path / "secret.png").write_bytes(b"secret")
    return root


def test_paths_inside_the_folder_are_kept(folder: Path) -> None:
    real = (folder / "outputs" / "a.png").resolve()
    assert inside(folder, "outputs/a.png") == real
    assert inside(folder, Path("outputs") / ".." / "outputs" / "a.png") == real  # '..' that stays inside
    assert inside(folder, str(real)) == real  # an absolute path inside
    assert inside(folder, "outputs/not-yet.png") == (folder / "outputs" / "not-yet.png").resolve()
    os.symlink(folder / "outputs" / "a.png", folder / "outputs" / "link.png")  # a link inside to inside
    assert inside(folder, "outputs/link.png") == real


@pytest.mark.parametrize("relative", ["../secret.png", "outputs/../../secret.png", "../../../../../../etc/passwd",
                                      "/etc/passwd"])
def test_paths_leading_out_are_refused(folder: Path, relative: str) -> None:
    with pytest.raises(OutsideFolderError, match=r"run 1, sample x: path .* leads outside .*refused"):
        inside(folder, relative, what="run 1, sample x")


def test_links_leading_out_are_refused(folder: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret.png", folder / "outputs" / "b.png")
    os.symlink(tmp_path, folder / "outputs" / "up")
    os.symlink("/nonexistent/elsewhere.png", folder / "outputs" / "dangling.png")
    for relative in ("outputs/b.png", "outputs/up/secret.png", "outputs/dangling.png"):
        with pytest.raises(OutsideFolderError):
            inside(folder, relative)


@pytest.mark.parametrize("relative", [None, 3, "", "a\x00b"])
def test_values_that_are_not_paths_are_refused(folder: Path, relative) -> None:
    with pytest.raises(DataError):
        inside(folder, relative)


def test_a_link_loop_is_a_clear_error(folder: Path) -> None:
    os.symlink(folder / "loop", folder / "loop")
    with pytest.raises(DataError):
        inside(folder, "loop")


# ---------------------------------------------------------------------------- dataset cells
def _dataset(rows: list[dict]):
    import datasets

    from refcoco_edit.schema import features

    return datasets.Dataset.from_list([features().encode_example(r) for r in rows], features=features())


def _rows(n: int = 2) -> list[dict]:
    from refcoco_edit.dataset.io import sample_to_row

    rows = []
    for i in range(n):
        sample = make_sample(i, size=12)
        sample.sample_id = f"s{i}"
        rows.append(sample_to_row(sample))
    return rows


def test_a_huge_image_in_a_dataset_is_refused_from_its_header() -> None:
    from refcoco_edit.dataset.io import SampleView, decode_image, decode_mask, iter_samples, row_to_sample

    rows = _rows()
    rows[1]["source_image"] = {"bytes": huge_png(), "path": None}
    ds = _dataset(rows)
    view = SampleView(ds)
    assert view[0].source_image.size == (12, 12)
    with pytest.raises(DataError, match=r"sample s1: source_image: image .*over the (pixel )?limit"):
        view[1]
    with pytest.raises(DataError, match="sample s1: source_image: image .*over the (pixel )?limit"):
        list(iter_samples(ds))
    with pytest.raises(DataError, match="over the (pixel )?limit"):
        row_to_sample(rows[1])
    with pytest.raises(DataError, match="sample s0: edit_mask: image .*over the (pixel )?limit"):
        row_to_sample({**rows[0], "edit_mask": {"bytes": huge_png(), "path": None}})
    with pytest.raises(DataError, match="mask cell: image .*over the (pixel )?limit"):
        decode_mask(huge_png())
    with pytest.raises(DataError, match="image cell: image .*over the (pixel )?limit"):
        decode_image(huge_png())


def test_a_decoded_huge_image_is_refused_too() -> None:
    """A row that `datasets` already decoded (trainers) still meets the limit before any use."""
    from PIL import Image

    from refcoco_edit.dataset.io import decode_image

    with pytest.raises(DataError, match="over the limit"):
        decode_image(Image.new("1", HUGE))


def test_cells_naming_files_are_read_only_inside_the_dataset_folder(tmp_path: Path) -> None:
    from PIL import Image

    from refcoco_edit.dataset.io import SampleView, decode_image, row_to_sample

    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (12, 12), (1, 2, 3)).save(root / "images" / "a.png")
    Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "outside.png")
    (root / "images" / "huge.png").write_bytes(huge_png())
    rows = _rows(1)
    assert np.asarray(decode_image({"bytes": None, "path": "images/a.png"}, root=root))[0, 0].tolist() == [1, 2, 3]
    for path in ("../outside.png", str(tmp_path / "outside.png"), "/etc/passwd"):
        cell = {"bytes": None, "path": path}
        with pytest.raises(OutsideFolderError, match="sample s0: source_image: path .* leads outside"):
            row_to_sample({**rows[0], "source_image": cell}, root=root)
        with pytest.raises(DataError, match="names a file .* read only from a dataset folder"):
            row_to_sample({**rows[0], "source_image": cell})  # no folder known: no file is read
    os.symlink(tmp_path / "outside.png", root / "images" / "link.png")
    with pytest.raises(OutsideFolderError):
        decode_image({"bytes": None, "path": "images/link.png"}, root=root)
    with pytest.raises(DataError, match="over the (pixel )?limit"):
        decode_image({"bytes": None, "path": "images/huge.png"}, root=root)
    # a whole dataset whose cell names a file outside: datasets never opens it, SampleView refuses it
    ds = _dataset([{**rows[0], "source_image": {"bytes": None, "path": str(tmp_path / "outside.png")}}])
    with pytest.raises(OutsideFolderError):
        SampleView(ds, root=root)[0]
