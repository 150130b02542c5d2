"""Scoring edits of the study's samples, and the two reference points every row is read against.

- `identity`: the source returned unchanged, the floor a real editor must clear on the foreground;
- `vae-ceiling`: the reference edit passed through the VAE (encode, decode), the best a latent editor
  can reach with this VAE, since every row's output is a decoded latent.

Run: `python -m referdiffusion.study.evaluate identity --data ROOT --role val`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from refcoco_edit.errors import InputError
from referdiffusion.study.data import EditRecord, RefShapesStudy
from referdiffusion.study.measure import bg_psnr, bootstrap_ci, fg_agreement, fg_psnr

METRICS = ("fg_agreement", "fg_psnr", "bg_psnr")


def score(study: RefShapesStudy, records: Sequence[EditRecord],
          edit: Callable[[np.ndarray, EditRecord], np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample metrics of `edit(source, record) -> output` (uint8 H x W x 3 at the study's size)."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in records:
        src, ref, me = study.source(r.image_id), study.edited(r), study.edit_mask(r)
        got = edit(src, r)
        if got.shape != src.shape or got.dtype != np.uint8:
            raise InputError(f"edit {r.edit_id}: output {got.dtype} {got.shape}, expected uint8 {src.shape}")
        out["fg_agreement"].append(float(fg_agreement(got, ref, me)[0]))
        out["fg_psnr"].append(float(fg_psnr(got, ref, me)[0]))
        out["bg_psnr"].append(float(bg_psnr(got, src, me)[0]))
    return {k: np.array(v) for k, v in out.items()}


def summary(values: dict[str, np.ndarray]) -> dict[str, dict]:
    """Mean and bootstrap 95% interval of each metric."""
    out = {}
    for k, v in values.items():
        ci = bootstrap_ci(v)
        out[k] = {"mean": ci.value, "ci95": [ci.low, ci.high], "n": ci.n}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("method", choices=["identity", "vae-ceiling"])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--role", default="val")
    p.add_argument("--vae", type=Path, default=None, help="AutoencoderKL folder (vae-ceiling)")
    p.add_argument("--limit", type=int, default=None, help="score a seeded subset of this many edits")
    args = p.parse_args(argv)
    study = RefShapesStudy(args.data)
    records = study.edits(args.role)
    if args.limit is not None and args.limit < len(records):
        keep = np.random.default_rng(0).choice(len(records), size=args.limit, replace=False)
        records = [records[k] for k in sorted(keep)]
    if args.method == "identity":
        def edit(src: np.ndarray, r: EditRecord) -> np.ndarray:
            return src
    else:
        if args.vae is None:
            raise SystemExit("vae-ceiling needs --vae")
        import torch
        from diffusers import AutoencoderKL

        from referdiffusion.study.vae import reconstruct

        torch.set_num_threads(1)
        vae = AutoencoderKL.from_pretrained(args.vae).float().eval()

        def edit(src: np.ndarray, r: EditRecord) -> np.ndarray:
            return reconstruct(vae, study.edited(r)[None])[0]
    result = {"method": args.method, "role": args.role, "edits": len(records),
              **summary(score(study, records, edit))}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
