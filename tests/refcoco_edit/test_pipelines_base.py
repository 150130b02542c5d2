"""Pipeline plumbing without models: input checks, sizes, background restore, edit masks, OpenCV
removal and the registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.errors import InputError
from refcoco_edit.pipelines import base, get_pipeline, pipeline_names
from refcoco_edit.pipelines.classical_inpaint import variants


def _image(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _mask(w: int = 64, h: int = 48, box=(10, 30, 20, 44)) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 1
    return m


# --------------------------------------------------------------------------------------------
# inputs


def test_as_rgb_converts_modes() -> None:
    alpha = np.array([[0, 255, 255, 255, 128]] * 4, np.uint8)
    rgba = Image.fromarray(np.dstack([np.full((4, 5, 3), 200, np.uint8), alpha]))
    out = base.as_rgb(rgba)
    assert out.mode == "RGB" and out.size == (5, 4)
    arr = np.asarray(out)
    assert (arr[:, 0] == 0).all() and (arr[:, 1] == 200).all()  # transparent -> black, opaque kept
    assert arr[0, 4, 0] == 100  # half transparent: half of 200 over black
    grey = base.as_rgb(Image.fromarray(np.full((3, 3), 7, np.uint8), mode="L"))
    assert grey.mode == "RGB" and np.asarray(grey).tolist() == [[[7, 7, 7]] * 3] * 3
    deep = base.as_rgb(Image.fromarray(np.full((2, 2), 65535, np.uint16)))
    assert np.asarray(deep).max() == 255 and np.asarray(deep).min() == 255
    assert base.as_rgb(np.zeros((2, 3), np.uint8)).size == (3, 2)
    with pytest.raises(InputError):
        base.as_rgb(np.zeros((2, 3), np.float32))
    with pytest.raises(InputError):
        base.as_rgb("not an image")


def test_as_mask_forms() -> None:
    assert base.as_mask(np.array([[0, 255], [3, 0]])).tolist() == [[0, 1], [1, 0]]
    assert base.as_mask(np.array([[True, False]])).dtype == np.uint8
    assert base.as_mask(Image.fromarray(np.array([[0, 127, 128]], np.uint8))).tolist() == [[0, 0, 1]]
    with pytest.raises(InputError):
        base.as_mask(np.zeros((2, 2, 2)))


def test_working_size_rounds_to_multiples_of_8() -> None:
    assert base.working_size((64, 48)) == (64, 48)
    assert base.working_size((61, 45)) == (64, 48)
    assert base.working_size((3, 3)) == (8, 8)
    assert base.working_size((640, 427), 512) == (512, 344)  # 427 * 0.8 = 341.6 -> 344
    assert base.working_size((256, 192), 64) == (64, 48)
    with pytest.raises(InputError):
        base.working_size((64, 64), 4)


def test_prepare_refuses_empty_and_full_masks() -> None:
    img = _image()
    with pytest.raises(InputError, match="empty"):
        base.prepare_inputs(img, np.zeros((48, 64), np.uint8))
    with pytest.raises(InputError, match="whole image"):
        base.prepare_inputs(img, np.ones((48, 64), np.uint8))


def test_prepare_resizes_a_mismatched_mask_with_a_warning() -> None:
    img = _image(64, 48)
    small = np.zeros((12, 16), np.uint8)
    small[3:6, 4:8] = 1
    with pytest.warns(base.MaskResizedWarning, match="16x12 resized to the image's 64x48"):
        prep = base.prepare_inputs(img, small)
    expected = np.kron(small, np.ones((4, 4), np.uint8))  # nearest at an integer factor: 4x4 blocks
    np.testing.assert_array_equal(prep.mask, expected)


def test_prepare_odd_size_and_target_size() -> None:
    img = _image(61, 45)
    prep = base.prepare_inputs(img.convert("L"), _mask(61, 45))
    assert prep.image.mode == "RGB" and prep.size == (61, 45)
    assert prep.work_size == (64, 48) and prep.work_mask.shape == (48, 64)
    prep = base.prepare_inputs(_image(256, 192), _mask(256, 192, (100, 101, 50, 51)), size=64)
    assert prep.work_size == (64, 48)
    assert prep.work_mask.sum() >= 1  # a 1-pixel object survives the 4x shrink (area > 0 rule)


def test_seeds_and_devices() -> None:
    import torch

    assert base.seeds_for(5, 3) == [5, 6, 7]
    with pytest.raises(InputError):
        base.seeds_for(0, 0)
    with pytest.raises(InputError):
        base.seeds_for(-1, 1)
    assert base.resolve_dtype("cpu") == torch.float32
    assert base.resolve_dtype("cuda") == torch.float16
    assert base.resolve_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(InputError):
        base.resolve_dtype("cpu", "float8")
    if not torch.cuda.is_available():
        assert base.resolve_device(None).type == "cpu"
        with pytest.raises(InputError):
            base.resolve_device("cuda")


# --------------------------------------------------------------------------------------------
# restore and edit masks


def test_restore_background_keeps_far_pixels_exact() -> None:
    src, res = _image(seed=1), _image(seed=2)
    mask = _mask()
    out = np.asarray(base.restore_background(src, res, mask, feather=4))
    dist_far = base.dilate(mask, 5) == 0  # beyond the 4-pixel feather (plus a pixel of rounding room)
    np.testing.assert_array_equal(out[dist_far], np.asarray(src)[dist_far])
    np.testing.assert_array_equal(out[mask == 1], np.asarray(res)[mask == 1])
    # the ramp: one pixel left of the box is 3/4 result, 1/4 source
    y, x = 20, 19
    want = np.round(0.75 * np.asarray(res, float)[y, x] + 0.25 * np.asarray(src, float)[y, x])
    np.testing.assert_allclose(out[y, x], want, atol=1)


def test_feathered_alpha_profile() -> None:
    mask = np.zeros((1, 20), np.uint8)
    mask[0, :5] = 1
    alpha = base.feathered_alpha(mask, 4)[0]
    np.testing.assert_allclose(alpha[:10], [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0], atol=1e-6)


def test_edit_mask_refines_and_is_never_empty() -> None:
    src = np.full((40, 40, 3), 100, np.uint8)
    requested = _mask(40, 40, (5, 30, 5, 30))
    res = src.copy()
    res[10:20, 10:20] = 200  # the edit changed only a part of the requested region
    res[35:38, 35:38] = 0  # a change far from the region (outside the margin)
    res[12:14, 12:14] = 100  # a hole inside the changed area: filled
    got = base.edit_mask(Image.fromarray(src), Image.fromarray(res), requested, margin=2)
    expected = np.zeros((40, 40), np.uint8)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(got, expected)
    # below the documented threshold: no change counted -> the requested region itself
    faint = src.copy()
    faint[10:20, 10:20] += base.CHANGE_THRESHOLD
    got = base.edit_mask(Image.fromarray(src), Image.fromarray(faint), requested, margin=2)
    np.testing.assert_array_equal(got, requested)
    faint[10, 10] += 1
    got = base.edit_mask(Image.fromarray(src), Image.fromarray(faint), requested, margin=2, close_radius=0)
    assert got.sum() == 1 and got[10, 10] == 1


def test_fill_holes() -> None:
    ring = np.zeros((9, 9), np.uint8)
    ring[2:7, 2:7] = 1
    ring[4, 4] = 0
    edge = np.zeros((9, 9), np.uint8)
    edge[0:3, 0:3] = 1
    edge[0, 1] = 0  # touches the border: not a hole
    assert base.fill_holes(ring)[4, 4] == 1
    assert base.fill_holes(edge)[0, 1] == 0


# --------------------------------------------------------------------------------------------
# classical inpainting


def test_classical_inpaint_keeps_outside_pixels_and_matches_opencv() -> None:
    import cv2

    img, mask = _image(), _mask()
    pipe = get_pipeline("classical_inpaint")
    cands = pipe.generate(img, mask, num=3, seed=4, method="ns", radius=3, dilate_px=2)
    assert [c.params["method"] for c in cands] == ["ns", "telea", "ns"]
    assert [c.params["radius"] for c in cands] == [3, 3, 6]
    assert [c.seed for c in cands] == [4, 5, 6]
    hole = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    src = np.asarray(img)
    for cand, (meth, rad) in zip(cands, variants("ns", 3, 3)):
        out = np.asarray(cand.image)
        assert cand.image.size == img.size and cand.model == "opencv"
        np.testing.assert_array_equal(out[hole == 0], src[hole == 0])
        flag = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}[meth]
        ref = cv2.inpaint(src, hole, float(rad), flag)
        np.testing.assert_array_equal(out[hole == 1], ref[hole == 1])
        assert cand.edit_mask.any() and not cand.edit_mask[hole == 0].any()
    again = pipe.generate(img, mask, num=3, seed=4, method="ns", radius=3, dilate_px=2)
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(cands, again))


def test_classical_inpaint_bad_inputs() -> None:
    pipe = get_pipeline("classical_inpaint")
    with pytest.raises(InputError):
        pipe.generate(_image(), _mask(), method="fft")
    with pytest.raises(InputError):
        pipe.generate(_image(), np.zeros((48, 64), np.uint8))
    big = np.ones((48, 64), np.uint8)
    big[0, 0] = 0
    with pytest.raises(InputError, match="dilated"):
        pipe.generate(_image(), big, dilate_px=3)
    with pytest.raises(InputError):
        get_pipeline("classical_inpaint", model="tiny-sd15")


# --------------------------------------------------------------------------------------------
# registry


def test_registry() -> None:
    assert pipeline_names() == ["composition", "region_edit", "inpaint", "classical_inpaint"]
    with pytest.raises(InputError, match="unknown pipeline"):
        get_pipeline("nope")


def test_registry_import_is_light() -> None:
    code = ("import sys; import refcoco_edit.pipelines, refcoco_edit.commands.generate; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_finish_candidates_equals_whole_image_functions() -> None:
    """The boxed, shared computation gives what restore_background and edit_mask give on the whole image."""
    rng = np.random.default_rng(5)
    src = _image(80, 60, seed=3)
    mask = np.zeros((60, 80), np.uint8)
    mask[2:20, 50:78] = 1  # near two borders: the box is clipped there
    prep = base.prepare_inputs(src, mask)
    results = []
    for k in range(3):
        arr = np.asarray(src).copy()
        arr[0:30, 40:80] = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # changes inside and beyond
        arr[40:45, 5:10] = 0 if k else arr[40:45, 5:10]  # a change far away
        results.append(Image.fromarray(arr))
    for restore in (True, False):
        cands = base.finish_candidates(prep, results, [1, 2, 3], {"x": 1}, "m", restore=restore, feather=6)
        margin = 6 + 8
        for cand, res in zip(cands, results):
            want = base.restore_background(src, res, mask, 6) if restore else res
            assert cand.image.tobytes() == want.tobytes()
            np.testing.assert_array_equal(cand.edit_mask, base.edit_mask(src, want, mask, margin=margin))
            assert cand.params == {"x": 1, "seed": cand.seed, "batch_index": cand.seed - 1}


# --------------------------------------------------------------------------------------------
# capabilities


def test_every_pipeline_declares_its_capabilities() -> None:
    from refcoco_edit.pipelines import pipeline_class
    from refcoco_edit.pipelines.capabilities import EditPipeline
    from refcoco_edit.schema import EDIT_TYPES

    for name in pipeline_names():
        cls = pipeline_class(name)
        assert issubclass(cls, EditPipeline) and cls.name == name
        assert cls.label and cls.default_model
        assert cls.edit_types and set(cls.edit_types) <= set(EDIT_TYPES)
        assert not cls.needs_text or cls.takes_text
    assert [n for n in pipeline_names() if not pipeline_class(n).needs_weights] == ["classical_inpaint"]
    assert [n for n in pipeline_names() if pipeline_class(n).needs_example] == ["composition"]
    assert [n for n in pipeline_names() if pipeline_class(n).needs_text] == ["region_edit"]


def test_requests_become_each_pipelines_keywords() -> None:
    from refcoco_edit.pipelines import pipeline_class
    from refcoco_edit.pipelines.capabilities import EditRequest

    example = _image(8, 8)
    req = EditRequest(num=2, seed=5, text="a red star", example=example, example_source="ann 3", steps=4,
                      rank_by="tiny-clip", method="ns", radius=3, dilate_px=2)
    assert pipeline_class("region_edit").generate_kwargs(req) == {
        "num": 2, "seed": 5, "steps": 4, "text": "a red star", "rank_by": "tiny-clip"}
    assert pipeline_class("inpaint").generate_kwargs(req) == {
        "num": 2, "seed": 5, "steps": 4, "text": "a red star", "rank_by": "tiny-clip"}
    assert pipeline_class("composition").generate_kwargs(req) == {
        "num": 2, "seed": 5, "steps": 4, "example": example, "example_source": "ann 3"}
    assert pipeline_class("classical_inpaint").generate_kwargs(req) == {
        "num": 2, "seed": 5, "method": "ns", "radius": 3, "dilate_px": 2}
    assert pipeline_class("inpaint").prompt_sent(EditRequest()) == "background"
    assert pipeline_class("region_edit").prompt_sent(req) == "a red star"
    assert pipeline_class("composition").prompt_sent(req) is None


def test_capabilities_are_read_without_heavy_libraries() -> None:
    code = ("import sys; from refcoco_edit.pipelines import pipeline_class, pipeline_names; "
            "[pipeline_class(n).edit_types for n in pipeline_names()]; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pipelines_import_no_higher_layer() -> None:
    """Counting imports inside functions: pipelines stand below curation, the store, the dataset and the CLI."""
    import ast
    from pathlib import Path

    import refcoco_edit.pipelines as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "refcoco_edit" and len(parts) > 1
                            and parts[1] in ("curation", "store", "dataset", "commands")), f"{path.name} imports {name}"
