"""RefShapes at 128 x 96 for the study: resizing rules, edit records, prompts and the latent cache."""

from __future__ import annotations

import numpy as np
import pytest

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.refshapes import generate
from referdiffusion.study import data as sd
from tests.referdiffusion import one_torch_thread

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> sd.RefShapesStudy:
    root = tmp_path_factory.mktemp("refshapes")
    generate(root, num_images=10, seed=0)
    return sd.RefShapesStudy(root)


def test_downsample_image_is_pillows_box_reduce():
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, size=(192, 256, 3), dtype=np.uint8)
    ours = sd.downsample_image(img)
    ref = np.asarray(Image.fromarray(img).reduce(2))
    assert ours.shape == (96, 128, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_mask_rules():
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = 1
    m[2:4, 2:4] = 1
    np.testing.assert_array_equal(sd.downsample_mask_area(m, (2, 2)), [[0.25, 0], [0, 1]])
    np.testing.assert_array_equal(sd.downsample_mask_any(m, (2, 2)), [[True, False], [False, True]])
    with pytest.raises(InputError, match="must divide"):
        sd.downsample_image(np.zeros((5, 4, 3), np.uint8), (2, 2))


def test_records_cover_the_generated_edits(study):
    counts = study.counts()
    assert sum(c["edits"] for c in counts.values()) == len(study.records) > 0
    assert {r.edit_type for r in study.records} == {"replace", "remove", "attribute"}
    r = study.records[0]
    assert study.edit(r.edit_id) is r and r.sentences
    with pytest.raises(InputError, match="no edit"):
        study.edit(10**9)
    with pytest.raises(InputError, match="unknown study split"):
        study.edits("dev")


def test_edit_leaves_pixels_outside_the_edit_mask_alone_at_study_size(study):
    """The point of the "any" rule: at 128 x 96 the reference edit still equals the source outside M_e."""
    for r in study.records[:12]:
        src, out, me = study.source(r.image_id), study.edited(r), study.edit_mask(r)
        assert src.shape == out.shape == (96, 128, 3) and me.shape == (96, 128)
        np.testing.assert_array_equal(src[~me], out[~me])
        assert (np.abs(src.astype(int) - out.astype(int)).max(axis=2)[me] > 0).any()
        m = study.object_mask(r)
        assert m.dtype == np.float32 and 0 < m.sum() and m.max() <= 1
        if r.edit_type != "replace":  # remove and recolour change exactly the object
            assert ((m > 0) == me).all()


def test_prompts_are_valid_and_seeded(study):
    r = study.records[0]
    p = study.prompt(r, seed=0)
    assert p.prompt == study.prompt(r, seed=0).prompt and p.edit_type == r.edit_type
    assert p.referring_text and p.edit_text
    from refcoco_edit.refshapes.expressions import parse_expression

    for r in study.records[:20]:  # the prompt refers as the sentence `sentence` names does
        sentence = study.sentence(r, seed=1)
        assert sentence in r.sentences
        assert parse_expression(study.prompt(r, seed=1).referring_text) == parse_expression(sentence)


def test_images_subset_is_seeded(study):
    a = study.images("train", limit=5, with_edits=True, seed=3)
    b = study.images("train", limit=5, with_edits=True, seed=3)
    assert a.shape == (5, 96, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_latent_cache_round_trip_and_vae_check(study, tmp_path):
    pytest.importorskip("diffusers")
    from referdiffusion.study.vae import VAEConfig, build_vae

    vae = build_vae(VAEConfig(block_out_channels=(16, 16), steps=1)).eval()
    path = sd.build_latent_cache(study, vae, "train", tmp_path, batch_size=8)
    cache = sd.load_latent_cache(path, vae)
    recs = study.edits("train")
    assert cache.edited.shape == (len(recs), 4, 48, 64) and cache.edited.dtype == np.float16
    r = recs[-1]
    want = sd.encode_images(vae, study.edited(r)[None])[0]
    np.testing.assert_allclose(cache.edited_of(r.edit_id), want, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(cache.source_of(r.image_id), sd.encode_images(vae, study.source(r.image_id)[None])[0],
                               atol=2e-3, rtol=2e-3)
    mtime = path.stat().st_mtime_ns
    assert sd.build_latent_cache(study, vae, "train", tmp_path) == path and path.stat().st_mtime_ns == mtime
    other = build_vae(VAEConfig(block_out_channels=(16, 16), steps=1, seed=1))
    with pytest.raises(DataError, match="another VAE"):
        sd.load_latent_cache(path, other)


def test_counts_command(capsys):
    import json

    from refcoco_edit.refshapes import sample_root

    assert sd.main(["counts", "--data", str(sample_root())]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert set(counts) == {"train", "val", "test", "reserve"}
    assert counts["test"] == {"images": 8, "edits": 45}  # the committed 40-image sample: test is testA
