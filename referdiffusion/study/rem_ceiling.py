"""How well can a REM's mask match the referred object at all, at the rows' working size?

The REM predicts mask logits at latent resolution (the rows: 16 x 12 cells for a 64 x 48 picture); the
pipeline upsamples them bilinearly to the picture, thresholds at probability 0.5, and the benchmark resizes
that mask (nearest) to the dataset's size and takes its IoU with the object mask M. Two references, per
object, through exactly that path:

- `coverage`: logits = logit(share of each cell inside M), the minimiser of L_mask at latent resolution
  (BCE + Dice against the area-averaged M). Cells less than half covered fall under the threshold, so
  small objects lose most of their mask;
- `best`: logits fitted per object to the IoU (gradient ascent on a soft IoU through the same upsampling,
  the hard IoU kept at its best): what a 16 x 12 logit field can draw. A lower bound on the true best,
  not a proof of it.

    python -m referdiffusion.study.rem_ceiling --data REFSHAPES [--role val] [--limit 600] [--size 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

LATENT_FACTOR = 4  # refshapes-vae: three blocks, two downsamplings


def _work_and_latent(full_hw: tuple[int, int], size: int, factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    from refcoco_edit.pipelines.base import working_size

    w, h = working_size((full_hw[1], full_hw[0]), size)
    return (h, w), (h // factor, w // factor)


def _pipeline_masks(logits: Any, work_hw: tuple[int, int], full_hw: tuple[int, int]) -> Any:
    """N x h x w logits -> N x H x W booleans: bilinear to the working size, > 0 (probability 0.5), then
    nearest to the dataset's size, as the pipeline and the benchmark draw the mask."""
    import torch.nn.functional as F

    from referdiffusion.rem import upsample_mask_logits

    work = (upsample_mask_logits(logits, work_hw) > 0).float()
    return F.interpolate(work.unsqueeze(1), size=full_hw, mode="nearest-exact").squeeze(1) > 0.5


def _iou(pred: Any, masks: Any) -> Any:
    inter = (pred & masks).sum((1, 2)).float()
    union = (pred | masks).sum((1, 2)).float()
    return inter / union.clamp_min(1)


def ceilings(masks: np.ndarray, size: int = 64, factor: int = LATENT_FACTOR, steps: int = 600) -> dict[str, np.ndarray]:
    """Per-object IoU of the `coverage` and `best` references (module docstring); masks N x H x W bool."""
    import torch
    import torch.nn.functional as F

    from referdiffusion.losses import soft_downsample
    from referdiffusion.rem import upsample_mask_logits

    m = torch.as_tensor(np.asarray(masks, bool))
    full_hw = tuple(m.shape[-2:])
    work_hw, latent_hw = _work_and_latent(full_hw, size, factor)
    work = F.interpolate(m.float().unsqueeze(1), size=work_hw, mode="area")
    cover = soft_downsample(work, latent_hw)  # L_mask's latent-resolution target
    start = torch.logit(cover.clamp(1e-3, 1 - 1e-3))
    coverage = _iou(_pipeline_masks(start, work_hw, full_hw), m)

    logits = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    target = m.float()
    best = coverage.clone()
    for step in range(steps):
        sharp = 1 + step / 50  # the soft mask hardens as the fit goes on
        soft = torch.sigmoid(sharp * upsample_mask_logits(logits, work_hw)).unsqueeze(1)
        soft = F.interpolate(soft, size=full_hw, mode="nearest-exact").squeeze(1)
        inter = (soft * target).sum((1, 2))
        loss = -(inter / (soft.sum((1, 2)) + target.sum((1, 2)) - inter).clamp_min(1e-6)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            best = torch.maximum(best, _iou(_pipeline_masks(logits, work_hw, full_hw), m))
    return {"coverage": coverage.numpy(), "best": best.detach().numpy()}


def measure(data: Path | str, role: str = "val", limit: int | None = 600, size: int = 64) -> dict[str, Any]:
    """Both references on the first `limit` edits of `role`, each as a mean with its bootstrap 95% CI."""
    from referdiffusion.study.data import RefShapesStudy
    from referdiffusion.study.export import binary_object_mask
    from referdiffusion.study.measure import bootstrap_ci

    study = RefShapesStudy(data)
    records = study.edits(role)[:limit]
    masks = np.stack([binary_object_mask(study.object_mask(r)) for r in records]).astype(bool)  # the benchmark's M
    out: dict[str, Any] = {"role": role, "objects": len(records), "size": size,
                           "object_share": float(masks.mean())}
    for name, values in ceilings(masks, size).items():
        ci = bootstrap_ci(values)
        out[name] = {"mean": ci.value, "ci95": [ci.low, ci.high], "share_at_least_0.6": float((values >= 0.6).mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.rem_ceiling", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="the RefShapes folder")
    p.add_argument("--role", default="val")
    p.add_argument("--limit", type=int, default=600, help="the first N edits of the role")
    p.add_argument("--size", type=int, default=64, help="the working size (the rows' 64)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.data, args.role, args.limit, args.size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
