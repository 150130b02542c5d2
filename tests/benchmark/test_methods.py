"""Benchmark methods: the registry and options, InstructDiffusion's guidance against an independent
computation with a stub UNet, the RefShapes segmenter against the ground truth, and every method run
end to end with the tiny models (3 samples, 2 steps, 64 px)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.methods import INSTRUCTION_SUFFIX, METHODS, Method, create_method, get_method_class, register_method
from refcoco_edit.errors import InputError

ALL = ("identity", "reference", "blended", "ip2p", "magicbrush", "instructdiffusion", "seg_inpaint", "referdiffusion")


@pytest.fixture
def no_model_config(monkeypatch, tmp_path):
    """No user model settings: a missing config file and no REFCOCO_EDIT_MODEL_* variables."""
    import os

    monkeypatch.setenv("REFCOCO_EDIT_CONFIG", str(tmp_path / "absent.yaml"))
    for var in [v for v in os.environ if v.startswith("REFCOCO_EDIT_MODEL_")]:
        monkeypatch.delenv(var)


# ---------------------------------------------------------------------------------------------
# registry and options


def test_every_method_is_registered_and_creates_without_loading(no_model_config):
    import sys

    assert tuple(METHODS) == ALL
    for name in ALL:
        method = create_method(name)
        assert method.name == name and isinstance(method, Method)
        assert not method._ready
    # creating them loaded no weights (instructdiffusion and referdiffusion have none configured)
    assert "instructdiffusion" in (create_method("instructdiffusion").availability() or "")
    assert "REFCOCO_EDIT_MODEL_INSTRUCTDIFFUSION" in create_method("instructdiffusion").availability()
    assert "--method-model" in create_method("referdiffusion").availability()
    assert create_method("identity").availability() is None
    assert "benchmark.methods.instruct" in sys.modules  # imported on demand


def test_referdiffusion_checkpoint_comes_from_the_resolver(no_model_config, tmp_path, monkeypatch):
    folder = tmp_path / "rd"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    # --model referdiffusion=DIR (resolver override) and the environment variable both reach the method
    assert create_method("referdiffusion", overrides={"referdiffusion": str(folder)}).availability() is None
    monkeypatch.setenv("REFCOCO_EDIT_MODEL_REFERDIFFUSION", str(folder))
    assert create_method("referdiffusion").checkpoint == str(folder)
    monkeypatch.setenv("REFCOCO_EDIT_MODEL_REFERDIFFUSION", str(tmp_path / "missing"))
    assert "REFCOCO_EDIT_MODEL_REFERDIFFUSION does not exist" in create_method("referdiffusion").availability()


def test_unknown_method_and_bad_classes_are_refused():
    with pytest.raises(InputError, match="unknown method 'nope'"):
        get_method_class("nope")
    with pytest.raises(InputError, match="cannot import"):
        get_method_class("tests.benchmark.stub_methods:Missing")
    with pytest.raises(InputError, match="not a benchmark Method"):
        get_method_class("tests.benchmark.stub_methods:EmptySegmenter")
    with pytest.raises(InputError, match="not a benchmark Method"):
        register_method("bad", dict)  # type: ignore[arg-type]


def test_a_user_method_is_one_class_registered_by_name_or_path():
    from tests.benchmark.stub_methods import StampMethod

    register_method("stamp-test", StampMethod)
    try:
        assert get_method_class("stamp-test") is StampMethod
        assert get_method_class("tests.benchmark.stub_methods:StampMethod") is StampMethod
    finally:
        METHODS.pop("stamp-test")


def test_options_are_converted_to_their_defaults_type_and_unknown_ones_refused():
    m = create_method("ip2p", guidance_scale="5", image_guidance_scale="2.5")
    assert m.options["guidance_scale"] == 5.0 and isinstance(m.options["guidance_scale"], float)
    assert m.options["suffix"] == INSTRUCTION_SUFFIX == " and do not change any pixel else"
    b = create_method("blended", restore="false", feather="3")
    assert b.options["restore"] is False and b.options["feather"] == 3
    with pytest.raises(InputError, match="has no option 'guidance'"):
        create_method("ip2p", guidance="5")
    with pytest.raises(InputError, match="takes a number"):
        create_method("ip2p", guidance_scale="high")
    with pytest.raises(InputError, match="uses no model"):
        create_method("identity", model="tiny-ip2p")
    with pytest.raises(InputError, match="steps must be at least 1"):
        create_method("ip2p", steps=0)


def test_method_model_is_a_resolver_name_or_a_source_for_the_default_name(tmp_path):
    named = create_method("ip2p", model="tiny-ip2p")
    assert named.model_name == "tiny-ip2p" and named.overrides == {} and named.label() == "ip2p (tiny-ip2p)"
    folder = tmp_path / "my-magicbrush"
    folder.mkdir()
    by_path = create_method("magicbrush", model=str(folder))
    assert by_path.model_name == "magicbrush" and by_path.overrides == {"magicbrush": str(folder)}
    assert by_path.label() == "magicbrush (my-magicbrush)"
    assert by_path.availability() is None
    assert by_path.config()["model_source"] == str(folder)
    assert create_method("ip2p").label() == "ip2p"


# ---------------------------------------------------------------------------------------------
# InstructDiffusion's guidance


class _StubUNet:
    """eps = 0.5 * noisy + 0.25 * source latent + mean(text) + t / 1000: each branch's inputs show."""

    def __call__(self, x, t, encoder_hidden_states, return_dict=False):
        noisy, image = x[:, :4], x[:, 4:]
        text = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return (0.5 * noisy + 0.25 * image + text + float(t) / 1000.0,)


class _RecordingScheduler:
    init_noise_sigma = 2.0

    def __init__(self):
        self.seen = []

    def set_timesteps(self, n, device=None):
        import torch

        self.timesteps = torch.arange(n, 0, -1) * 100

    def scale_model_input(self, x, t):
        return x / 3.0

    def step(self, eps, t, sample, return_dict=False):
        self.seen.append(eps.clone())
        return (sample - 0.1 * eps,)


def test_instructdiffusion_guidance_equals_an_independent_computation():
    import torch

    from benchmark.methods.instructdiffusion import denoise

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 3, 5, generator=g)
    image = torch.randn(1, 4, 3, 5, generator=g)
    text = torch.randn(1, 7, 6, generator=g)
    null = torch.randn(1, 7, 6, generator=g)
    s_t, s_i = 5.0, 1.25
    scheduler = _RecordingScheduler()
    out = denoise(_StubUNet(), scheduler, latents=noise, image_latents=image, text_embeds=text, null_embeds=null,
                  steps=3, text_scale=s_t, image_scale=s_i)

    # by hand: one unbatched UNet call per branch, InstructDiffusion's formula written out
    def eps(z, img, txt, t):
        return 0.5 * z + 0.25 * img + txt.mean() + float(t) / 1000.0

    z = noise * 2.0
    for k, t in enumerate([300, 200, 100]):
        zin = z / 3.0
        e_full = eps(zin, image, text, t)  # text and image
        e_img = eps(zin, image, null, t)  # image, null text
        e_txt = eps(zin, torch.zeros_like(image), text, t)  # text, no image
        expected = 0.5 * (e_img + e_txt) + s_t * (e_full - e_img) + s_i * (e_full - e_txt)
        torch.testing.assert_close(scheduler.seen[k], expected, rtol=1e-5, atol=1e-5)
        # not InstructPix2Pix's combination (whose last branch drops both conditions)
        e_none = eps(zin, torch.zeros_like(image), null, t)
        ip2p = e_none + s_t * (e_full - e_img) + s_i * (e_img - e_none)
        assert not torch.allclose(expected, ip2p, atol=1e-3)
        z = z - 0.1 * expected
    torch.testing.assert_close(out, z, rtol=1e-5, atol=1e-5)


def test_instructdiffusion_uses_its_own_defaults():
    from benchmark.methods.instructdiffusion import instructdiffusion_guidance

    m = create_method("instructdiffusion")
    assert m.options["text_guidance_scale"] == 5.0 and m.options["image_guidance_scale"] == 1.25
    assert m.steps == 100 and m.size == 512 and m.options["scheduler"] == "euler_ancestral"
    # with s_T = s_I = 1/2 the guidance gives back the fully conditioned prediction
    full, img, txt = np.array([1.0, -2.0]), np.array([0.3, 0.1]), np.array([-0.7, 4.0])
    np.testing.assert_allclose(instructdiffusion_guidance(full, img, txt, 0.5, 0.5), full)


# ---------------------------------------------------------------------------------------------
# segmenters


def test_refshapes_segmenter_finds_exactly_the_referred_object(bench_dataset):
    from benchmark.methods.segmenters import create_segmenter
    from benchmark.run.dataset import open_selection

    selection = open_selection(str(bench_dataset))
    seg = create_segmenter("refshapes")
    seg.setup()
    for i in range(len(selection)):
        sample = selection.sample(i)
        np.testing.assert_array_equal(seg.segment(sample), sample.source_mask)
    sample.referring_text = "the dog on the left"
    with pytest.raises(InputError):
        seg.segment(sample)


def test_seg_inpaint_returns_the_source_when_the_segmenter_finds_nothing(bench_dataset):
    from benchmark.run.dataset import open_selection

    sample = open_selection(str(bench_dataset)).sample(0)
    method = create_method("seg_inpaint", segmenter="tests.benchmark.stub_methods:EmptySegmenter",
                           inpainter="classical_inpaint")
    method.ensure_ready()
    result = method.edit(sample, seed=0)
    assert result.info["skipped"] == "empty segmentation" and result.info["mask_iou"] == 0.0
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(sample.source_image.convert("RGB")))
    assert method.label() == "seg_inpaint[seg=tests.benchmark.stub_methods:EmptySegmenter, classical_inpaint]"
    with pytest.raises(InputError, match="unknown segmenter"):
        create_method("seg_inpaint", segmenter="psychic")


def test_seg_inpaint_reads_the_inpainters_declared_capabilities(bench_dataset, monkeypatch):
    """Any registered removal pipeline works; whether it loads weights and what it is passed come from
    its class's declarations, not from its name."""
    from benchmark.run.dataset import open_selection
    from refcoco_edit.pipelines import PIPELINES
    from refcoco_edit.pipelines.base import Candidate
    from refcoco_edit.pipelines.capabilities import EditPipeline

    calls = []

    class Grey(EditPipeline):
        name = "grey_fill"
        edit_types = ("remove",)
        needs_weights = False

        def __init__(self, *args, **kwargs):
            self.model = "none"

        def generate(self, image, mask, **kwargs):
            calls.append(kwargs)
            arr = np.asarray(image.convert("RGB")).copy()
            arr[np.asarray(mask) > 0] = 128
            from PIL import Image

            return [Candidate(Image.fromarray(arr), kwargs["seed"], {}, "none", np.asarray(mask))]

    monkeypatch.setitem(PIPELINES, "grey_fill", Grey)
    sample = open_selection(str(bench_dataset)).sample(0)
    method = create_method("seg_inpaint", inpainter="grey_fill")
    assert method.model_name is None and method.steps is None and method.availability() is None
    method.ensure_ready()
    result = method.edit(sample, seed=7)
    assert calls == [{"num": 1, "seed": 7}]  # EditPipeline's own mapping: no text, no sampling options
    assert "text" not in result.info
    assert (np.asarray(result.image)[np.asarray(sample.source_mask) > 0] == 128).all()
    with pytest.raises(InputError, match="does not remove objects"):
        create_method("seg_inpaint", inpainter="region_edit")
    with pytest.raises(InputError, match="inpainter must be a pipeline"):
        create_method("seg_inpaint", inpainter="photoshop")
    with pytest.raises(InputError, match="uses no model"):
        create_method("seg_inpaint", inpainter="grey_fill", model="tiny-sd-inpaint")


# ---------------------------------------------------------------------------------------------
# every method end to end, tiny models


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory, bench_dataset, tiny_cache):
    """Every method (and seg_inpaint's variants) run on 3 samples with 2 steps at 64 px."""
    from benchmark.runner import RunConfig, run_benchmark
    from referdiffusion.init import init_checkpoint
    from tests.torch_threads import single_thread

    root = tmp_path_factory.mktemp("method-runs")
    checkpoint = root / "referdiffusion-tiny"
    init_checkpoint("tiny-ip2p", checkpoint)
    cases = {
        "identity": ("identity", None, {}),
        "reference": ("reference", None, {}),
        "blended": ("blended", "tiny-sd15", {}),
        "ip2p": ("ip2p", "tiny-ip2p", {}),
        "magicbrush": ("magicbrush", "tiny-ip2p", {}),
        "instructdiffusion": ("instructdiffusion", "tiny-ip2p", {}),
        "seg_inpaint": ("seg_inpaint", "tiny-sd-inpaint", {"segmenter": "refshapes"}),
        "seg_inpaint_classical": ("seg_inpaint", None, {"inpainter": "classical_inpaint"}),
        "referdiffusion": ("referdiffusion", str(checkpoint), {}),
    }
    runs = {}
    with single_thread():
        for key, (method, model, options) in cases.items():
            config = RunConfig(method=method, dataset=str(bench_dataset), out=root / key, limit=3, method_model=model,
                               method_options=options, steps=2, size=64, metrics="l2_bg,localisation", progress=False)
            runs[key] = run_benchmark(config)
    return runs


def _rows(summary) -> list[dict]:
    return [json.loads(line) for line in (summary.out / "samples.jsonl").read_text().splitlines()]


def test_every_method_runs_on_refshapes_with_tiny_models(method_runs, bench_dataset):
    from PIL import Image

    from benchmark.run.dataset import open_selection

    selection = open_selection(str(bench_dataset), limit=3)
    sizes = selection.source_sizes()
    assert set(method_runs) >= set(ALL)
    for key, summary in method_runs.items():
        results = summary.results
        assert summary.generated == 3 and summary.cached == 0, key
        assert results["dataset"]["samples"] == 3
        assert results["metrics"]["l2_bg"]["n"] == 3 and results["metrics"]["loc_iou"]["available"], key
        for row in _rows(summary):
            with Image.open(row["output"]) as im:
                assert im.mode == "RGB" and im.size == sizes[row["sample_id"]], key
        assert set(results["tables"]["by_edit_type"]) == {"replace", "remove", "attribute"}


def test_identity_changes_nothing_and_reference_localises_best(method_runs):
    metrics = {k: s.results["metrics"] for k, s in method_runs.items()}
    assert metrics["identity"]["l2_bg"]["value"] == 0.0
    assert metrics["identity"]["loc_recall"]["value"] == 0.0
    best = metrics["reference"]["loc_iou"]["value"]
    assert best > metrics["identity"]["loc_iou"]["value"]
    for key, m in metrics.items():
        assert m["loc_iou"]["value"] <= best, key


def test_instruction_methods_get_the_suffix_and_referring_ones_the_prompt(method_runs, bench_dataset):
    from benchmark.run.dataset import open_selection

    selection = open_selection(str(bench_dataset), limit=3)
    edit_text = {selection.ids[i]: selection.sample(i).edit_text for i in range(len(selection))}
    for key in ("ip2p", "magicbrush", "instructdiffusion"):
        for row in _rows(method_runs[key]):
            assert row["generation"]["prompt_sent"] == row["prompt"] + " and do not change any pixel else", key
    for row in _rows(method_runs["seg_inpaint"]):  # the RefShapes parser finds the object exactly
        assert row["generation"]["mask_iou"] == 1.0
        expected = None if row["edit_type"] == "remove" else edit_text[row["sample_id"]]
        assert row["generation"]["text"] == expected
    for row in _rows(method_runs["referdiffusion"]):
        assert 0.0 <= row["generation"]["mask_iou"] <= 1.0
    labels = {k: s.results["method"]["label"] for k, s in method_runs.items()}
    assert labels["seg_inpaint"] == "seg_inpaint (tiny-sd-inpaint)[seg=refshapes]"
    assert labels["blended"] == "blended (tiny-sd15)"


def test_blended_edits_inside_the_ground_truth_mask_with_p_e(method_runs, bench_dataset):
    from PIL import Image

    from benchmark.run.dataset import open_selection

    selection = open_selection(str(bench_dataset), limit=3)
    by_id = {selection.ids[i]: selection.sample(i) for i in range(len(selection))}
    for row in _rows(method_runs["blended"]):
        sample = by_id[row["sample_id"]]
        assert row["generation"]["text"] == sample.edit_text
        with Image.open(row["output"]) as im:
            out = np.asarray(im.convert("RGB")).astype(int)
        src = np.asarray(sample.source_image.convert("RGB")).astype(int)
        # the background far from the mask is the source's (restored); the feather is 8 px
        from refcoco_edit.pipelines.base import dilate

        far = dilate(np.asarray(sample.source_mask), 12) == 0
        assert np.abs(out - src)[far].max() == 0


def test_a_model_trained_here_runs_at_its_training_size_without_size(tiny_cache, tmp_path):
    """A folder with the training manifest `referdiffusion train` writes sets the method's working
    size; --size still wins; models without one keep the method's default."""
    import shutil

    from benchmark.methods import create_method
    from refcoco_edit.models.resolver import resolve
    from referdiffusion.train.manifest import MANIFEST_SCHEMA, write_manifest

    folder = tmp_path / "trained"
    shutil.copytree(resolve("tiny-ip2p").source, folder)
    write_manifest(folder / "training_manifest.json", {"schema": MANIFEST_SCHEMA, "preprocess": {"size": 128}})
    assert create_method("ip2p", model=str(folder)).size == 128
    assert create_method("ip2p", model=str(folder)).config()["size"] == 128
    assert create_method("ip2p", model=str(folder), size=64).size == 64
    assert create_method("ip2p", model="tiny-ip2p").size == 512


def test_referdiffusion_reads_its_size_and_takes_resolver_names(no_model_config, tmp_path, monkeypatch):
    """The ReferDiffusion checkpoint's manifest sets its working size too, and a resolver name (the
    packaged `refshapes-*` rows, or one pointed elsewhere) stands for its folder."""
    from benchmark.methods import create_method
    from referdiffusion.train.manifest import MANIFEST_SCHEMA, write_manifest

    folder = tmp_path / "rd"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    assert create_method("referdiffusion", model=str(folder)).size == 512  # no manifest
    write_manifest(folder / "training_manifest.json", {"schema": MANIFEST_SCHEMA, "preprocess": {"size": 64}})
    assert create_method("referdiffusion", model=str(folder)).size == 64
    assert create_method("referdiffusion", model=str(folder), size=96).size == 96
    monkeypatch.setenv("REFCOCO_EDIT_MODEL_REFSHAPES_REM", str(folder))
    named = create_method("referdiffusion", model="refshapes-rem")
    assert named.checkpoint == str(folder) and named.size == 64 and named.availability() is None
