"""`refshapes-vae`: a small `AutoencoderKL` trained from scratch on RefShapes images.

No pretrained VAE can be downloaded here, and Stable Diffusion's would be far too large for a 2-core
CPU anyway. RefShapes images are flat colours on smooth textured backgrounds, so a 4x-downsampling
autoencoder of 0.7 M parameters (blocks 16/32/64, one ResNet layer each, 4 latent channels) already
reconstructs them well: 128 x 96 pixels become a 4 x 24 x 32 latent, a size a small UNet trains on in
minutes per thousand steps.

Training is plain reconstruction: L1 + L2 on pixels and a tiny KL weight (the latent is kept near a
unit Gaussian in scale, not regularised into one; `scaling_factor` then sets its std to 1 as Stable
Diffusion's 0.18215 does). It checkpoints every few minutes to `<out>/checkpoint.pt` (weights,
optimiser, step) and resumes from there after a kill; batches are drawn from (seed, step), so a resumed
run sees the batches an unbroken run would have. The weights with the best validation PSNR are kept in
`<out>/best/` as a diffusers folder; `export` writes them as fp16 safetensors.

Run: `python -m referdiffusion.study.vae train --data ROOT --out DIR`, then `eval` and `export`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.io import atomic_path, atomic_write_json
from referdiffusion.study.data import batches, to_tensor, to_uint8
from referdiffusion.study.measure import bootstrap_ci, psnr

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)


@dataclass
class VAEConfig:
    """Architecture and training recipe of the VAE."""

    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup: int = 100
    kl_weight: float = 1e-6
    l2_weight: float = 1.0
    seed: int = 0
    checkpoint_every_s: float = 180.0
    val_every: int = 500
    val_images: int = 200
    scale_images: int = 1000

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        for name in ("steps", "batch_size", "val_every", "layers_per_block", "latent_channels"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"VAE config: {name} must be positive, got {getattr(self, name)}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise InputError(f"VAE config: block_out_channels {self.block_out_channels} must be multiples of "
                             f"norm_num_groups {self.norm_num_groups}")


def build_vae(cfg: VAEConfig, sample_size: int = 128) -> AutoencoderKL:
    """A fresh AutoencoderKL of the config's shape, weights drawn from `cfg.seed`."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=sample_size,
    )


def reconstruct(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 images; uint8 reconstructions of the same shape."""
    import torch

    out = []
    with torch.no_grad():
        for sl in batches(len(images), batch_size):
            z = vae.encode(to_tensor(images[sl])).latent_dist.mean
            out.append(to_uint8(vae.decode(z).sample))
    return np.concatenate(out)


def reconstruction_psnr(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Per-image reconstruction PSNR (dB) of uint8 images."""
    return psnr(reconstruct(vae, images, batch_size), images)


def latent_scaling_factor(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> float:
    """1 / std of the posterior means over `images`: the factor that gives the diffusion model unit-std latents."""
    import torch

    with torch.no_grad():
        zs = [vae.encode(to_tensor(images[sl])).latent_dist.mean for sl in batches(len(images), batch_size)]
    return float(1.0 / torch.cat(zs).std())


def _lr(cfg: VAEConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + np.cos(np.pi * min(1.0, t)))


def _batch(images: np.ndarray, cfg: VAEConfig, step: int) -> torch.Tensor:
    """The step's batch: indices and horizontal flips drawn from (seed, step), so resuming is exact."""
    rng = np.random.default_rng((cfg.seed, step))
    idx = rng.integers(0, len(images), size=cfg.batch_size)
    x = images[idx]
    flip = rng.random(cfg.batch_size) < 0.5
    x[flip] = x[flip, :, ::-1]
    return to_tensor(x)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, cfg: VAEConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + l2_weight * L2 on pixels + kl_weight * KL (per latent element)."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    l1 = (rec - x).abs().mean()
    l2 = ((rec - x) ** 2).mean()
    kl = post.kl().mean() / float(np.prod(post.mean.shape[1:]))
    loss = l1 + cfg.l2_weight * l2 + cfg.kl_weight * kl
    return loss, {k: float(v.detach()) for k, v in (("loss", loss), ("l1", l1), ("l2", l2), ("kl", kl))}


def train_vae(cfg: VAEConfig, train_images: np.ndarray, val_images: np.ndarray, out_dir: Path | str,
              max_seconds: float | None = None, stop_at: int | None = None) -> AutoencoderKL:
    """Train (or resume) the VAE in `out_dir`; return the weights with the best validation PSNR.

    `max_seconds` stops early after a checkpoint, `stop_at` after step `stop_at`'s (the next call
    resumes); curves go to `log.jsonl`. A resumed run may change `steps` alone (the cosine schedule then
    ends at the new total): the change is kept in the checkpoint's `schedule` and in the log, so the run
    can be replayed exactly with `stop_at`.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_images) == 0 or len(val_images) == 0:
        raise DataError("VAE training needs train and validation images")
    vae = build_vae(cfg, sample_size=int(max(train_images.shape[1:3])))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt = out / "checkpoint.pt"
    step, best = 0, -np.inf
    schedule = [[0, cfg.steps]]  # [first step, total steps of the cosine schedule from there]
    changed = None
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        before = {**state["config"], "steps": cfg.steps}
        if before != asdict(cfg):
            raise InputError(f"{ckpt} was written with another config; use another --out or the same settings")
        step, best = int(state["step"]), float(state["best_val_psnr"])
        schedule = state.get("schedule", [[0, state["config"]["steps"]]])
        if state["config"]["steps"] != cfg.steps:
            if cfg.steps <= step:
                raise InputError(f"{ckpt} is at step {step}; --steps {cfg.steps} must be larger")
            schedule.append([step, cfg.steps])
            changed = {"step": step, "schedule_change": {"from": state["config"]["steps"], "to": cfg.steps}}
            log.warning("schedule changed at step %d: %d -> %d steps", step, state["config"]["steps"], cfg.steps)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        log.info("resumed at step %d (best val PSNR %.2f)", step, best)
    atomic_write_json(out / "config.json", asdict(cfg))

    def save_checkpoint() -> None:
        with atomic_path(ckpt) as tmp:
            torch.save({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "best_val_psnr": best, "config": asdict(cfg), "schedule": schedule}, tmp)

    def validate() -> float:
        vae.eval()
        value = float(np.mean(reconstruction_psnr(vae, val_images)))
        vae.train()
        return value

    start = last_ckpt = time.monotonic()
    vae.train()
    with open(out / "log.jsonl", "a") as logf:
        if changed is not None:
            logf.write(json.dumps(changed) + "\n")
        while step < cfg.steps and (stop_at is None or step < stop_at):
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # the posterior's noise, also drawn from (seed, step)
            loss, parts = vae_loss(vae, _batch(train_images, cfg, step), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            row: dict = {"step": step, "lr": _lr(cfg, step - 1), **parts}
            if step % cfg.val_every == 0 or step == cfg.steps:
                row["val_psnr"] = validate()
                if row["val_psnr"] > best:
                    best = row["val_psnr"]
                    _save_best(vae, out / "best")
            if step % 50 == 0 or "val_psnr" in row:
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                log.info("step %d loss %.4f%s", step, parts["loss"],
                         f" val PSNR {row['val_psnr']:.2f}" if "val_psnr" in row else "")
            now = time.monotonic()
            if now - last_ckpt >= cfg.checkpoint_every_s or step in (cfg.steps, stop_at):
                save_checkpoint()
                last_ckpt = now
                if max_seconds is not None and now - start >= max_seconds and step < cfg.steps:
                    log.info("stopping after %.0f s at step %d; run again to resume", now - start, step)
                    break
    if not (out / "best").is_dir():
        _save_best(vae, out / "best")
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(out / "best")


def _replace_dir(folder: Path, write) -> None:
    """Fill a fresh folder with `write(tmp)` and swap it in for `folder`; a reader never sees a half-written
    folder (a kill between the two renames leaves it under `.old`/`.new`, removed by the next call)."""
    import shutil

    from refcoco_edit.io import atomic_dir

    new, old = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")
    for stale in (new, old):
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(new) as tmp:
        write(tmp)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _save_best(vae: AutoencoderKL, folder: Path) -> None:
    _replace_dir(folder, lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))


def export_fp16(vae: AutoencoderKL, folder: Path | str, scaling_factor: float) -> Path:
    """Write `vae` as a diffusers folder of fp16 safetensors with `scaling_factor` in its config."""
    import copy


    half = copy.deepcopy(vae)
    half.load_state_dict({k: v.half() for k, v in vae.state_dict().items()}, assign=True)
    half.register_to_config(scaling_factor=float(scaling_factor))
    folder = Path(folder)
    def write(tmp: Path) -> None:
        half.save_pretrained(tmp, safe_serialization=True)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("_name_or_path", None)  # the folder it was loaded from: a local path, not part of the model
        atomic_write_json(tmp / "config.json", config, indent=2, sort_keys=True)
        for f in tmp.iterdir():
            f.chmod(0o644)

    _replace_dir(folder, write)
    return folder


# ---------------------------------------------------------------------------- command line
def _image_sets(data: Path, cache: Path, train_limit: int, val_limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Train (sources and edits) and val (sources) images at 128 x 96, cached as .npy next to the data."""
    from referdiffusion.study.data import RefShapesStudy

    cache.mkdir(parents=True, exist_ok=True)
    study = None
    sets = []
    for role, limit, with_edits in (("train", train_limit, True), ("val", val_limit, False)):
        path = cache / f"vae-{role}-{limit}.npy"
        if not path.is_file():
            study = study or RefShapesStudy(data)
            arr = study.images(role, limit=limit, with_edits=with_edits, seed=0)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, arr)
        sets.append(np.load(path))
    return sets[0], sets[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.vae", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train or resume the VAE")
    t.add_argument("--data", type=Path, required=True, help="RefShapes root (refcoco-edit sample --out)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--steps", type=int, default=VAEConfig.steps)
    t.add_argument("--batch-size", type=int, default=VAEConfig.batch_size)
    t.add_argument("--train-images", type=int, default=16000, help="train images (sources and edits) to sample")
    t.add_argument("--max-seconds", type=float, default=None)
    t.add_argument("--stop-at", type=int, default=None, help="stop after this step (a later call resumes)")
    e = sub.add_parser("eval", help="reconstruction PSNR with a bootstrap 95%% interval")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--vae", type=Path, required=True, help="a diffusers AutoencoderKL folder")
    e.add_argument("--role", default="test", help="study split: train, val or test")
    e.add_argument("--images", type=int, default=1000, help="sources and edits, a seeded random subset")
    e.add_argument("--json", type=Path, default=None)
    x = sub.add_parser("export", help="fp16 safetensors with the latent scaling factor")
    x.add_argument("--data", type=Path, required=True)
    x.add_argument("--vae", type=Path, required=True)
    x.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    from diffusers import AutoencoderKL

    from referdiffusion.study.data import RefShapesStudy

    if args.cmd == "train":
        cfg = VAEConfig(steps=args.steps, batch_size=args.batch_size)
        train, val = _image_sets(args.data, args.out / "images", args.train_images, cfg.val_images)
        log.info("train images %s, val images %s", train.shape, val.shape)
        train_vae(cfg, train, val, args.out, max_seconds=args.max_seconds, stop_at=args.stop_at)
        return 0
    vae = AutoencoderKL.from_pretrained(args.vae).float().eval()
    study = RefShapesStudy(args.data)
    if args.cmd == "eval":
        images = study.images(args.role, limit=args.images, with_edits=True, seed=0)
        values = reconstruction_psnr(vae, images)
        ci = bootstrap_ci(values)
        result = {"role": args.role, "images": len(images), "psnr": ci.value, "ci95": [ci.low, ci.high]}
        print(json.dumps(result))
        if args.json:
            atomic_write_json(args.json, result)
        return 0
    images = study.images("train", limit=VAEConfig.scale_images, with_edits=True, seed=1)
    scale = latent_scaling_factor(vae, images)
    export_fp16(vae, args.out, scale)
    print(json.dumps({"scaling_factor": scale, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
