"""The trainer on tiny models and the RefShapes sample: learning, exact resume, checkpoints, refusals, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from refcoco_edit.errors import InputError  # noqa: E402
from referdiffusion.cli import main  # noqa: E402
from referdiffusion.train.checkpoints import list_checkpoints  # noqa: E402
from referdiffusion.train.config import load_config  # noqa: E402
from referdiffusion.train.trainer import TrainingDivergedError, train  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

# Small and quick: tiny model, 64 px, few samples, no tracker.
QUICK = ["model.pretrained=tiny-ip2p", "data.resolution=64", "mixed_precision=no", "report_to=none",
         "model.ema=false", "model.gradient_checkpointing=false", "data.num_workers=0", "batch_size=2",
         "checkpointing_steps=1000"]


def _tiny(*extra: str, synth: int = 1, edit: int = 1, samples: int = 4):
    return load_config("tiny", [*QUICK, f"stages.synth.max_steps={synth}", f"stages.edit.max_steps={edit}",
                                f"stages.synth.max_samples={samples}", f"stages.edit.max_samples={samples}", *extra])


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_goes_down_on_a_tiny_overfit_set(tiny_cache, tmp_path):
    cfg = _tiny("optim.learning_rate=1e-3", "batch_size=4", synth=30, edit=1, samples=4)
    result = train(cfg, output_dir=tmp_path / "run", progress=False)
    losses = result.losses[:30]
    assert len(result.losses) == 31 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.7 * first, (first, last)
    # every term of the full method is trained and falls
    for term in ("noise", "mask", "edit", "rcl"):
        values = [t[term] for t in result.terms[:30]]
        assert np.mean(values[-5:]) < np.mean(values[:5]), term


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_cache, tmp_path):
    # two stages, gradient accumulation and EMA; the interruption falls inside stage 2
    cfg = _tiny("gradient_accumulation_steps=2", "model.ema=true", "model.ema_decay=0.9", synth=2, edit=2)
    whole = train(cfg, output_dir=tmp_path / "whole", progress=False)
    first = train(cfg, output_dir=tmp_path / "split", max_steps=3, progress=False)
    assert first.global_step == 3 and [p.name for p in first.checkpoints] == ["checkpoint-3"]
    with pytest.raises(InputError, match="pass --resume"):
        train(cfg, output_dir=tmp_path / "split", progress=False)
    rest = train(cfg, output_dir=tmp_path / "split", resume=True, progress=False)
    assert rest.resumed_from == tmp_path / "split" / "checkpoint-3" and rest.global_step == 4
    assert first.losses + rest.losses == whole.losses
    for sub in ("unet", "rem", "ema/unet", "ema/rem"):
        a, b = _weights(tmp_path / "whole" / "checkpoint-4" / sub), _weights(tmp_path / "split" / "checkpoint-4" / sub)
        assert _same(a, b), sub
    # and training did change them (the comparison is not between two untouched copies)
    init = _weights(tmp_path / "split" / "checkpoint-3" / "unet")
    assert not _same(init, _weights(tmp_path / "split" / "checkpoint-4" / "unet"))
    # final/ holds the EMA weights when EMA is on
    done = tmp_path / "whole"
    assert _same(_weights(done / "final" / "unet"), _weights(done / "checkpoint-4" / "ema" / "unet"))


def test_checkpoints_rotate_and_load_as_a_pipeline(tiny_cache, tmp_path):
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    out = tmp_path / "run"
    cfg = _tiny("checkpointing_steps=1", "checkpoints_total_limit=2", synth=2, edit=1)
    result = train(cfg, output_dir=out, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary folder left behind
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["stage"] == "edit"
    assert (out / "config.yaml").is_file() and load_config(out / "config.yaml") == cfg
    assert result.final == out / "final"
    assert _same(_weights(out / "final" / "unet"), _weights(out / "checkpoint-3" / "unet"))
    # the training manifest travels with every checkpoint and final/
    from referdiffusion.train.manifest import MANIFEST, read_manifest

    manifest = read_manifest(out)
    assert [s["rows"] for s in manifest["stages"]] == [4, 4] and manifest["pictures"]
    assert manifest["preprocess"] == {"resize": "aspect", "size": 64}
    for folder in ("checkpoint-2", "checkpoint-3", "final"):
        assert (out / folder / MANIFEST).read_bytes() == (out / MANIFEST).read_bytes(), folder

    pipe = ReferDiffusionPipeline.from_pretrained(out / "checkpoint-3")
    assert _same({k: v for k, v in pipe.unet.state_dict().items()}, _weights(out / "checkpoint-3" / "unet"))
    assert float(pipe.rem.gate.detach().abs().sum()) > 0  # the REM was trained (its gate opened)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    from PIL import Image

    res = pipe("paint a circle on the red mask", image=Image.fromarray(image), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert res.images.shape == (1, 64, 64, 3) and np.isfinite(res.images).all()
    assert res.masks.shape == (1, 64, 64)


def test_a_new_run_replaces_frozen_components_left_by_a_run_without_checkpoints(tiny_cache, tmp_path):
    out = tmp_path / "run"
    stale = out / "frozen_components"
    (stale / "vae").mkdir(parents=True)
    (stale / "model_index.json").write_text('{"_class_name": "SomethingElse"}')
    (stale / "vae" / "config.json").write_text('{"stale": true}')
    train(_tiny(synth=1, edit=1), output_dir=out, max_steps=1, progress=False)
    for folder in (stale, out / "checkpoint-1"):
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "ReferDiffusionPipeline"
        assert "stale" not in json.loads((folder / "vae" / "config.json").read_text())


def test_resume_removes_folders_left_by_a_killed_save_and_a_failed_save_leaves_none(tiny_cache, tmp_path,
                                                                                      monkeypatch):
    from referdiffusion.train import checkpoints

    out = tmp_path / "run"
    cfg = _tiny(synth=1, edit=1)
    train(cfg, output_dir=out, max_steps=1, progress=False)
    for name in (".checkpoint-2.k2j4h5.tmp", ".checkpoint-2.tmp", ".final.a8b9c0.tmp"):  # a killed save's
        (out / name / "unet").mkdir(parents=True)
    real = checkpoints._write_pipeline

    def failing(output_dir, folder, unet, rem):
        real(output_dir, folder, unet, rem)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "_write_pipeline", failing)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, output_dir=out, resume=True, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_nan_loss_stops_with_step_and_samples_and_keeps_the_last_good_checkpoint(tiny_cache, tmp_path, monkeypatch):
    import referdiffusion.losses as losses

    real = losses.compute_losses
    calls: list[list[str]] = []

    def poisoned(batch, **kwargs):
        out = real(batch, **kwargs)
        calls.append(list(batch["sample_id"]))
        if len(calls) == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(losses, "compute_losses", poisoned)
    out = tmp_path / "run"
    cfg = _tiny("checkpointing_steps=2", synth=5, edit=1)
    with pytest.raises(TrainingDivergedError) as info:
        train(cfg, output_dir=out, progress=False)
    err = info.value
    assert err.step == 3 and err.stage == "synth" and err.sample_ids == calls[2]
    message = str(err)
    assert "not finite" in message and "step 3" in message and all(s in message for s in calls[2])
    assert "checkpoint-2" in message and err.checkpoint == out / "checkpoint-2"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "final").exists()


@pytest.mark.parametrize(
    ("name", "extra", "terms"),
    [
        ("finetune", [], {"noise"}),
        ("+rem", ["mixed_precision=bf16", "model.ema=true"], {"noise", "mask", "edit"}),
        ("+rem+rcl", ["model.gradient_checkpointing=true"], {"noise", "mask", "edit", "rcl"}),
        ("full", ["stages.synth.dataset=sample:synth", "stages.synth.max_steps=1", "stages.synth.max_samples=2",
                  "checkpointing_steps=1"],
         {"noise", "mask", "edit", "rcl"}),
    ],
)
def test_ablation_configs_run(tiny_cache, tmp_path, name, extra, terms):
    cfg = load_config(name, [*QUICK, "stages.edit.dataset=sample:edits", "stages.edit.max_steps=1",
                             "stages.edit.max_samples=2", *extra])
    result = train(cfg, output_dir=tmp_path / "run", progress=False)
    assert result.global_step == len(cfg.stages)
    assert all(set(t) == terms for t in result.terms)
    rem_init = _weights(tmp_path / "run" / "checkpoint-1" / "rem") if len(cfg.stages) > 1 else None
    rem_final = _weights(tmp_path / "run" / "final" / "rem")
    if name == "finetune":  # no REM: saved as it was made, zero gate, so the checkpoint is a plain IP2P
        assert float(rem_final["gate"].abs().sum()) == 0
    else:
        assert float(rem_final["gate"].abs().sum()) > 0
    if rem_init is not None:
        assert not _same(rem_init, rem_final)


def test_cli_end_to_end(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--output", str(out), "--max-steps", "2", "--no-progress",
            "stages.synth.max_samples=4", "batch_size=2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained tiny to step 2" in printed and "checkpoint-2" in printed
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert (out / "final" / "model_index.json").is_file()
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        assert list((out / "logs").rglob("events.out.tfevents.*"))
    # resume one step further
    assert main([*argv[:6], "3", "--no-progress", "--resume", "stages.synth.max_samples=4", "batch_size=2"]) == 0
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    # a diverging run: one line, exit code 2, the good checkpoint kept
    bad = tmp_path / "bad"
    code = main(["train", "--config", "tiny", "--output", str(bad), "--no-progress", "optim.learning_rate=1e30",
                 "optim.max_grad_norm=0", "checkpointing_steps=1", "stages.synth.max_steps=4",
                 "stages.synth.max_samples=4", "batch_size=2", "report_to=none"])
    err = capsys.readouterr().err
    assert code == 2 and "not finite" in err and "batch samples: synth-" in err
    assert list_checkpoints(bad) and not (bad / "final").exists()
    # config errors
    assert main(["train", "--config", "tiny", "optim.lr=1"]) == 2
    assert "unknown config key 'optim.lr'" in capsys.readouterr().err
    assert main(["train", "--config", "+rem"]) == 2
    assert "stages.edit.dataset is not set" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "--print-config", "batch_size=3"]) == 0
    assert "batch_size: 3" in capsys.readouterr().out


def test_tensorboard_missing_means_no_tracker(monkeypatch, caplog):
    import importlib.util

    from referdiffusion.train import trainer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with caplog.at_level("WARNING"):
        assert trainer._trackers("tensorboard") == []
    assert "tensorboard is not installed" in caplog.text
    assert trainer._trackers("none") == []
    assert trainer._trackers("wandb, none") == ["wandb"]


@pytest.mark.slow
def test_two_process_ddp_resume_is_exact(tiny_cache, tmp_path):
    """Two CPU processes (torchrun, gloo): 4 steps at once == 2 steps, then --resume to 4."""
    import os
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    common = ["--no-progress", "stages.synth.max_steps=2", "stages.edit.max_steps=2", "stages.synth.max_samples=8",
              "stages.edit.max_samples=8", "report_to=none", "checkpointing_steps=2", "gradient_accumulation_steps=2",
              "batch_size=2"]

    def launch(out, *extra):
        cmd = [torchrun, "--nproc_per_node", "2", "-m", "referdiffusion.cli", "train", "--config", "tiny",
               "--output", str(out), *extra, *common]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    launch(tmp_path / "whole")
    launch(tmp_path / "split", "--max-steps", "2")
    launch(tmp_path / "split", "--resume")
    state = tmp_path / "whole" / "checkpoint-4" / "training_state"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    for sub in ("unet", "rem"):
        a, b = (_weights(tmp_path / run / "checkpoint-4" / sub) for run in ("whole", "split"))
        assert _same(a, b), sub


def test_train_help_is_light():
    code = (
        "import sys\n"
        "from referdiffusion.cli import main\n"
        "try:\n"
        "    main(['train', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "--resume" in out.stdout and "+rem+rcl" in out.stdout
    assert "HEAVY []" in out.stdout


def test_no_library_bars_without_progress(tiny_cache, tmp_path, capfd):
    """progress=False (--no-progress) silences the libraries' loading and saving bars too."""
    train(_tiny("checkpointing_steps=1", synth=1, edit=1), output_dir=tmp_path / "run", progress=False)
    err = capfd.readouterr().err
    assert "it/s]" not in err and "Loading pipeline components" not in err, err[-500:]
