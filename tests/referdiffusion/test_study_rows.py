"""The RefShapes rows: the 128 x 96 dataset in the RefCOCO-Edit format, the starting checkpoint, the row
configs (one budget) and a row trained, killed and resumed through `rows`."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from refcoco_edit.dataset.io import decode_image, decode_mask, undecoded  # noqa: E402
from refcoco_edit.errors import InputError  # noqa: E402
from refcoco_edit.refshapes import generate  # noqa: E402
from referdiffusion.study import data as sd  # noqa: E402
from referdiffusion.study.export import binary_object_mask, export_study  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def refshapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("refshapes")
    generate(root, num_images=40, seed=0)
    return root


@pytest.fixture(scope="module")
def exported(refshapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "edits-128"
    summary = export_study(refshapes, out, limit=6)
    return out, summary


def test_binary_object_mask_keeps_half_covered_pixels_and_never_empties_a_thin_object():
    half = np.array([[0.5, 0.49], [1.0, 0.0]], np.float32)
    thin = np.array([[0.25, 0.0], [0.0, 0.1]], np.float32)
    np.testing.assert_array_equal(binary_object_mask(half), [[1, 0], [1, 0]])
    np.testing.assert_array_equal(binary_object_mask(thin), [[1, 0], [0, 1]])


def test_exported_rows_are_the_study_data_at_128x96(refshapes, exported):
    from refcoco_edit.dataset.io import load_refcoco_edit
    from referdiffusion.train.data import open_dataset

    out, summary = exported
    study = sd.RefShapesStudy(refshapes)
    assert set(summary.splits) == {sd.SPLITS[r] for r in ("train", "val", "test") if study.edits(r)}
    assert "testB" not in summary.splits and {"train", "testA"} <= set(summary.splits)  # testB: reserve
    assert len(open_dataset(str(out), "train")) == min(6, len(study.edits("train")))  # as the trainer reads it
    ds = undecoded(load_refcoco_edit(str(out), split="train"))
    for row, rec in zip(ds, study.edits("train")):
        assert row["sample_id"] == f"refshapes-{rec.edit_id}" and row["target"] == rec.target
        src, dst = decode_image(row["source_image"]), decode_image(row["edited_image"])
        assert src.size == (sd.WIDTH, sd.HEIGHT)
        np.testing.assert_array_equal(np.asarray(src), study.source(rec.image_id))
        np.testing.assert_array_equal(np.asarray(dst), study.edited(rec))
        edit_mask = decode_mask(row["edit_mask"])
        np.testing.assert_array_equal(edit_mask, study.edit_mask(rec))
        np.testing.assert_array_equal(decode_mask(row["source_mask"]), binary_object_mask(study.object_mask(rec)))
        # the background invariant at the study's size, checked independently of the export's own check
        np.testing.assert_array_equal(np.asarray(src)[edit_mask == 0], np.asarray(dst)[edit_mask == 0])
        prompt = study.prompt(rec)
        assert row["prompt"] == prompt.prompt and row["edit_spans"] == [list(s) for s in prompt.edit_spans]


def test_exported_test_split_is_read_by_the_benchmark(exported):
    from benchmark.run.dataset import open_selection

    out, _ = exported
    sel = open_selection(str(out), "testA")
    assert len(sel) == 6 and set(sel.splits) == {"testA"}
    first = sel.sample(0)
    assert first.source_image.size == (sd.WIDTH, sd.HEIGHT) and first.edit_mask.shape == (sd.HEIGHT, sd.WIDTH)


def test_export_refuses_unknown_roles(refshapes, tmp_path):
    with pytest.raises(InputError, match="unknown study role"):
        export_study(refshapes, tmp_path / "x", roles=("train", "holdout"))


def test_starting_checkpoint_loads_and_its_parts_fit_together(tmp_path):
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.study.checkpoint import NOISE_SCHEDULE, write_checkpoint
    from referdiffusion.study.text_encoder import HIDDEN, MAX_TOKENS
    from referdiffusion.study.unet import UNET_CONFIG

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 96, 128, generator=g) * 2 - 1
    note = write_checkpoint(tmp_path / "base", vae="random", scaling_images=images)
    pipe = ReferDiffusionPipeline.from_pretrained(tmp_path / "base")
    assert pipe.unet.config.in_channels == 2 * pipe.vae.config.latent_channels == UNET_CONFIG["in_channels"]
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == HIDDEN
    assert pipe.rem.config.text_dim == HIDDEN and pipe.tokenizer.model_max_length == MAX_TOKENS
    assert pipe.scheduler.config.beta_schedule == NOISE_SCHEDULE["beta_schedule"]
    # a random VAE's scaling factor makes the latents unit-variance on the images given
    with torch.no_grad():
        z = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    assert float(z.std()) == pytest.approx(1.0, rel=1e-3)
    assert note["scaling_factor"] == pytest.approx(pipe.vae.config.scaling_factor)
    with pytest.raises(InputError, match="not empty"):
        write_checkpoint(tmp_path / "base")


def test_starting_checkpoint_takes_the_shipped_vae_when_there_is_one(tmp_path):
    from referdiffusion.study.checkpoint import SHIPPED_VAE, load_vae

    if not (SHIPPED_VAE / "config.json").is_file():
        pytest.skip("refshapes-vae is not shipped in this checkout")
    vae, where = load_vae(None)
    assert where == str(SHIPPED_VAE) and vae.dtype == torch.float32
    assert vae.config.scaling_factor != 0.18215  # its own measured factor, not Stable Diffusion's
    assert load_vae("random")[1].startswith("random")


def test_rows_share_one_budget_and_differ_in_model_and_losses():
    from referdiffusion.study.rows import ROWS, row_overrides
    from referdiffusion.train import load_config

    cfgs = {row: load_config(name) for row, name in ROWS.items()}
    budget = {row: (c.total_steps, c.batch_size, c.seed, c.stages[-1].dataset, c.optim.learning_rate,
                    c.optim.lr_scheduler, c.data.resolution, c.data.resize, c.model.pretrained)
              for row, c in cfgs.items()}
    assert len(set(budget.values())) == 1, budget
    assert budget["finetune"][1] == 16 and budget["finetune"][6:8] == (64, "aspect")
    terms = {row: (c.model.use_rem, [c.stage_loss_config(c.stages[-1]).enabled(t)
                                     for t in ("noise", "mask", "edit", "rcl")]) for row, c in cfgs.items()}
    assert terms == {"finetune": (False, [True, False, False, False]), "rem": (True, [True, True, True, False]),
                     "rem_rcl": (True, [True, True, True, True]), "full": (True, [True, True, True, True])}
    assert [s.name for s in cfgs["full"].stages] == ["synth", "edit"]
    assert cfgs["full"].stages[0].prompt_style == "mask" and cfgs["full"].stages[0].split == "train"
    # another root moves every input and the output
    moved = load_config(ROWS["full"], row_overrides("full", "/x/study"))
    assert moved.model.pretrained == "/x/study/base" and moved.output_dir == "/x/study/rows/full"
    assert [s.dataset for s in moved.stages] == ["/x/study/data/synth", "/x/study/data/edits-128"]


def test_a_row_trains_is_stopped_and_resumes_with_its_curve(refshapes, exported, tmp_path):
    from referdiffusion.study import rows

    out, _ = exported
    made = rows.prepare(tmp_path, refshapes, edits=out, synth=out)
    assert made["edits"].startswith("linked") and made["base"].startswith("written")
    quick = ["batch_size=2", "log_every=1", "checkpointing_steps=1", "stages.edit.max_steps=3"]
    first = rows.run_row("finetune", tmp_path, max_steps=2, extra=quick, progress=False)
    assert first.global_step == 2
    rest = rows.run_row("finetune", tmp_path, extra=quick, progress=False)  # as after a kill: resumes
    assert rest.resumed_from is not None and rest.resumed_from.name == "checkpoint-2" and rest.global_step == 3
    state = {e["row"]: e for e in rows.status(tmp_path)}
    assert state["finetune"]["checkpoint_step"] == 3 and state["finetune"]["final"]
    assert [s for s, _ in state["finetune"]["loss"]] == [1, 2, 3]
    assert state["rem"]["checkpoint_step"] == 0 and not state["rem"]["final"]
    # a checkpoint's edits of val scored with the study's metrics; the test split is refused
    scores = rows.evaluate_checkpoint(rest.final, refshapes, role="train", limit=2, steps=2, batch_size=2)
    assert scores["edits"] == 2 and set(scores) >= {"fg_agreement", "fg_psnr", "bg_psnr"}
    assert 0 <= scores["fg_agreement"]["mean"] <= 1 and scores["bg_psnr"]["n"] == 2
    assert 0 <= scores["rem_mask_iou"]["mean"] <= 1 and scores["rem_mask_iou"]["n"] == 2
    with pytest.raises(InputError, match="test split"):
        rows.evaluate_checkpoint(rest.final, refshapes, role="test")


def test_rows_run_takes_overrides_before_between_and_after_its_options(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from referdiffusion.study import rows

    seen = {}

    def run_row(row, root, max_steps, extra, progress):
        seen.update(row=row, max_steps=max_steps, extra=list(extra), progress=progress)
        return SimpleNamespace(global_step=3, final=tmp_path / "final")

    monkeypatch.setattr(rows, "run_row", run_row)
    argv = ["--root", str(tmp_path), "run", "rem", "a.b=1", "--no-progress", "c=2", "--max-steps", "3", "d=4"]
    assert rows.main(argv) == 0
    assert seen == {"row": "rem", "max_steps": 3, "extra": ["a.b=1", "c=2", "d=4"], "progress": False}
    assert '"global_step": 3' in capsys.readouterr().out


def test_rem_probe_learns_the_mask_alone_and_resumes_bit_for_bit(refshapes, exported, tmp_path):
    from referdiffusion.study import rows
    from referdiffusion.study.rem_probe import ProbeConfig, train

    out, _ = exported
    rows.prepare(tmp_path / "rows", refshapes, edits=out, synth=out)
    cfg = ProbeConfig(steps=40, batch_size=6, eval_every=20, eval_limit=4, learning_rate=5e-3)
    straight = train(tmp_path / "rows", refshapes, tmp_path / "a", cfg)
    assert [e["step"] for e in straight] == [0, 20, 40]
    assert straight[2]["loss"] < straight[1]["loss"]  # L_mask falls on the six train edits
    assert straight[2]["train_iou"][0] > straight[0]["train_iou"][0] + 0.2  # and the REM finds their objects
    for e in straight:
        assert all(0 <= v <= 1 for v in e["val_iou"] + e["train_iou"])
    # killed after step 20, started again: the same batches, the same weights
    assert [e["step"] for e in train(tmp_path / "rows", refshapes, tmp_path / "b", cfg, stop_at=20)] == [0, 20]
    assert not (tmp_path / "b" / "rem").exists()
    resumed = train(tmp_path / "rows", refshapes, tmp_path / "b", cfg)

    def scores(log):
        return [{k: v for k, v in e.items() if k != "s_per_step"} for e in log]

    assert scores(resumed) == scores(straight) and (tmp_path / "b" / "rem" / "config.json").is_file()
    final = json.loads((tmp_path / "b" / "final.json").read_text())
    kinds = [k for k in ("attribute", "location", "ordinal", "size") if k in final]
    assert final["all"]["iou"][0] == straight[-1]["val_iou"][0] and final["all"]["n"] == final["val_edits"]
    assert kinds and sum(final[k]["n"] for k in kinds) == final["val_edits"]
    assert 0 <= final["picks_referred_object"][0] <= 1 and final["objects_per_picture"] >= 1
    a = torch.load(tmp_path / "a" / "state.pt")["rem"]
    b = torch.load(tmp_path / "b" / "state.pt")["rem"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="another configuration"):
        train(tmp_path / "rows", refshapes, tmp_path / "a", ProbeConfig(steps=40, batch_size=4))

    # the picture of the masks: source, M, then each probe's mask, one line per referred object
    from PIL import Image

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder
    from referdiffusion.study.data import RefShapesStudy
    from referdiffusion.study.rem_probe import _val_inputs, mask_grid, predicted_masks

    png = mask_grid(tmp_path / "rows", refshapes, [tmp_path / "a", tmp_path / "b"], tmp_path / "m.png", count=4)
    records = RefShapesStudy(refshapes).edits("val")
    keep = [i for i, r in enumerate(records) if (r.image_id, r.ann_id) not in
            {(q.image_id, q.ann_id) for q in records[:i]}][:4]
    images, prompts, masks, _, _ = _val_inputs(refshapes, "val", len(records), 64)
    images, prompts, masks = [images[i] for i in keep], [prompts[i] for i in keep], masks[keep]
    n, h, w = masks.shape
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert grid.shape == (14 + n * (h + 4) + 4, 4 * (w + 4) + 4, 3)

    def cell(i, j):
        return grid[18 + i * (h + 4):18 + i * (h + 4) + h, 4 + j * (w + 4):4 + j * (w + 4) + w].astype(int)

    drawn = {j: np.stack([np.abs(cell(i, j) - cell(i, 0)).sum(-1) > 0 for i in range(n)]) for j in (1, 2, 3)}
    np.testing.assert_array_equal(drawn[1], masks)  # M
    pipe = ReferDiffusionPipeline.from_pretrained(tmp_path / "rows" / "base")
    pipe.rem = RegionEmbedder.from_pretrained(tmp_path / "b" / "rem")
    np.testing.assert_array_equal(drawn[3], predicted_masks(pipe, images, prompts, (h, w)))  # the scored mask
    np.testing.assert_array_equal(drawn[2], drawn[3])  # the same weights draw the same mask
    assert drawn[3].any()
    assert (tmp_path / "m.txt").read_text().splitlines() == [f"{i}: {p}" for i, p in enumerate(prompts)]


def test_rem_probe_trains_the_text_encoder_with_the_rem_and_resumes(refshapes, exported, tmp_path):
    from transformers import CLIPTextModel

    from referdiffusion.study import rows
    from referdiffusion.study.rem_probe import ProbeConfig, cache_features, train, train_token_ids

    out, _ = exported
    rows.prepare(tmp_path / "rows", refshapes, edits=out, synth=out)
    base = CLIPTextModel.from_pretrained(tmp_path / "rows" / "base" / "text_encoder")
    # the prompts' tokens line up with the cached features: frozen, they give the cached F_P
    cache = cache_features(tmp_path / "rows", tmp_path / "a")
    tokens = train_token_ids(tmp_path / "rows", _tokenizer(tmp_path / "rows" / "base"))
    torch.testing.assert_close(base(tokens["input_ids"])[0].half(), cache["embeds"])
    cfg = ProbeConfig(steps=20, batch_size=6, eval_every=10, eval_limit=4, learning_rate=5e-3, train_text=True)
    straight = train(tmp_path / "rows", refshapes, tmp_path / "a", cfg)
    train(tmp_path / "rows", refshapes, tmp_path / "b", cfg, stop_at=10)
    resumed = train(tmp_path / "rows", refshapes, tmp_path / "b", cfg)
    assert [e["val_iou"] for e in resumed] == [e["val_iou"] for e in straight]
    trained = CLIPTextModel.from_pretrained(tmp_path / "b" / "text_encoder")
    again = CLIPTextModel.from_pretrained(tmp_path / "a" / "text_encoder")
    for (name, w), w1 in zip(trained.state_dict().items(), again.state_dict().values()):
        assert torch.equal(w, w1), name  # stopped and resumed: the straight run's weights
    assert any(not torch.equal(w, w0) for w, w0 in zip(trained.parameters(), base.parameters()))


def _tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder / "tokenizer")


def test_rem_probe_iou_and_object_picks_against_a_direct_count():
    from referdiffusion.study.rem_probe import iou

    rng = np.random.default_rng(0)
    pred = rng.random((5, 6, 7)) > 0.5
    masks = rng.random((5, 6, 7)) > 0.6
    expected = [np.logical_and(p, m).sum() / max(np.logical_or(p, m).sum(), 1) for p, m in zip(pred, masks)]
    np.testing.assert_allclose(iou(pred, masks), expected)
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0
    # one mask against a picture's objects (K x H x W): the best-overlapping object's index
    scene = np.zeros((3, 4, 4), bool)
    scene[0, :2, :2], scene[1, 2:, 2:], scene[2, :2, 2:] = True, True, True
    guess = np.zeros((4, 4), bool)
    guess[2:, 1:] = True
    assert int(iou(guess[None], scene).argmax()) == 1
