"""The Table 2 rows of the RefShapes study, trained by the project's own trainer (`referdiffusion train`).

Each row is a shipped config, `refshapes-<row>`, with one budget (3,500 steps, batch 16, seed 0, 64 px
under the evaluation's `aspect` protocol): fine-tune (InstructPix2Pix UNet, no REM), +REM, +REM +RCL,
and full (+ stage 1). The configs name their inputs relative to the working folder, under `runs/refshapes`:

    runs/refshapes/base            the starting checkpoint (`checkpoint`: study VAE, frozen random CLIP,
                                   small UNet, REM), the same for every row
    runs/refshapes/data/edits-128  RefShapes at 128 x 96 in the RefCOCO-Edit format (`export`; splits
                                   train, val, testA)
    runs/refshapes/data/synth      stage-1 data, `refcoco-edit synth` on RefShapes' train split (the
                                   paper's mask prompts)
    runs/refshapes/rows/<row>      each row's run (checkpoints, TensorBoard curves, final/)

`prepare` makes the three inputs (or links folders made before: `--edits`, `--synth`, `--base`); `run ROW`
trains a row, resuming from its last checkpoint after a kill, on one torch thread; `status` prints where
each row is and its loss curve (from the run's TensorBoard log).

    python -m referdiffusion.study.rows prepare --data /work/study-data/refshapes
    python -m referdiffusion.study.rows run finetune   # = referdiffusion train --config refshapes-finetune --resume
    python -m referdiffusion.study.rows status
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from refcoco_edit.commands.parser import parse_intermixed
from refcoco_edit.errors import InputError

log = logging.getLogger(__name__)

ROWS: dict[str, str] = {"finetune": "refshapes-finetune", "rem": "refshapes-rem", "rem_rcl": "refshapes-rem_rcl",
                        "full": "refshapes-full"}
ROOT = Path("runs/refshapes")
BASE, EDITS, SYNTH = "base", "data/edits-128", "data/synth"


def config_name(row: str) -> str:
    if row not in ROWS:
        raise InputError(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
    return ROWS[row]


def row_overrides(row: str, root: Path | str = ROOT) -> list[str]:
    """Overrides that point a row's config at another root than `runs/refshapes` (none for the default)."""
    root = Path(root)
    if root == ROOT:
        return []
    out = [f"model.pretrained={root / BASE}", f"output_dir={root / 'rows' / row}",
           f"stages.edit.dataset={root / EDITS}"]
    if row == "full":
        out.append(f"stages.synth.dataset={root / SYNTH}")
    return out


def link_folder(target: Path, link: Path) -> None:
    """Make `link` a symlink to the folder `target`; a link already pointing there is kept, anything else
    in its place refused (an input is never replaced behind a run's back)."""
    target = target.expanduser().absolute()
    if not target.is_dir():
        raise InputError(f"{target} is not a folder")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        raise InputError(f"{link} already exists (and is not {target}); remove it first")
    link.symlink_to(target, target_is_directory=True)


def prepare(root: Path | str = ROOT, data: Path | str | None = None, *, vae: Path | str | None = None,
            edits: Path | str | None = None, synth: Path | str | None = None, base: Path | str | None = None,
            rescale_vae: bool = False, seed: int = 0) -> dict[str, str]:
    """Make (or link) the rows' three inputs under `root`; what each is. Folders already there are kept.
    `seed` draws the starting checkpoint's UNet and REM (another training seed of the same rows)."""
    root = Path(root)
    made: dict[str, str] = {}
    for name, given, rel in (("edits", edits, EDITS), ("synth", synth, SYNTH), ("base", base, BASE)):
        dest = root / rel
        if given is not None:
            link_folder(Path(given), dest)
            made[name] = f"linked {given}"
        elif dest.exists():
            made[name] = "kept"
        elif data is None:
            raise InputError(f"{dest} is missing: give --data (the RefShapes folder) to make it, or --{name} DIR")
        elif name == "edits":
            from referdiffusion.study.export import export_study

            summary = export_study(data, dest, progress=True)
            made[name] = f"exported {summary.rows} rows {summary.splits}"
        elif name == "synth":
            from refcoco_edit.dataset.synth import SynthConfig, synth_dataset
            from refcoco_edit.refer.reader import RefCOCO
            from referdiffusion.study.data import DATASET, SPLIT_BY

            synth_dataset(RefCOCO.load(data, DATASET, SPLIT_BY), dest, SynthConfig(), progress=True)
            made[name] = "synthesised (train split, mask prompts, seed 0)"
        else:
            from referdiffusion.study.checkpoint import write_checkpoint
            from referdiffusion.study.data import RefShapesStudy, to_tensor

            images = to_tensor(RefShapesStudy(data).images("train", limit=256, seed=0))
            note = write_checkpoint(dest, vae, seed, scaling_images=images, rescale_vae=rescale_vae)
            made[name] = f"written (VAE: {note['vae']}, seed {seed})"
    return made


def run_row(row: str, root: Path | str = ROOT, max_steps: int | None = None, extra: list[str] | tuple = (),
            progress: bool = True) -> Any:
    """Train `row` on one torch thread, from its last checkpoint when there is one, with the training seed
    its starting checkpoint was drawn with (`prepare --seed`)."""
    import torch

    from referdiffusion.train import load_config, train

    torch.set_num_threads(1)
    seed = base_seed(root)
    seeded = [f"seed={seed}"] if seed else []  # a root started from another seed's checkpoint trains with it
    cfg = load_config(config_name(row), [*row_overrides(row, root), *seeded, *extra])
    return train(cfg, max_steps=max_steps, resume=True, progress=progress)


def base_seed(root: Path | str = ROOT) -> int:
    """The seed the starting checkpoint under `root` was drawn with (0 for one written before seeds were kept)."""
    note = Path(root) / BASE / "study_base.json"
    return int(json.loads(note.read_text()).get("seed", 0)) if note.is_file() else 0


def curve(run_dir: Path | str, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of a scalar the trainer logged to TensorBoard in `run_dir/logs`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(Path(run_dir, "logs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            points.update({e.step: e.value for e in acc.Scalars(tag)})
    return sorted(points.items())


def status(root: Path | str = ROOT) -> list[dict[str, Any]]:
    """Each row: steps done (last checkpoint) of its total, whether final/ exists, its loss curve."""
    from referdiffusion.train import load_config
    from referdiffusion.train.checkpoints import list_checkpoints

    out = []
    for row in ROWS:
        cfg = load_config(config_name(row), row_overrides(row, root))
        run_dir = Path(cfg.output_dir)
        ckpts = list_checkpoints(run_dir) if run_dir.is_dir() else []
        entry: dict[str, Any] = {"row": row, "config": config_name(row), "output": str(run_dir),
                                 "total_steps": cfg.total_steps,
                                 "checkpoint_step": int(ckpts[-1].name.split("-")[-1]) if ckpts else 0,
                                 "final": (run_dir / "final" / "model_index.json").is_file()}
        if run_dir.is_dir():
            entry["loss"] = [[s, round(v, 4)] for s, v in curve(run_dir)]
        out.append(entry)
    return out


def evaluate_checkpoint(checkpoint: Path | str, data: Path | str, role: str = "val", limit: int | None = 64,
                        steps: int = 20, guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
                        batch_size: int = 16, seed: int = 0, prompt: bool = True) -> dict[str, Any]:
    """The study's foreground and background scores (`evaluate.score`) of a checkpoint's edits of `role`
    (a seeded subset of `limit` edits, as `evaluate` draws it). The pipeline works at the size the checkpoint
    was trained at (its manifest; the study's 128 x 96 without one) and its output is resized back, as the
    benchmark does. `prompt=False` sends empty prompts: whether the model follows its text at all.

    For watching a row (on val); the study's final numbers come from `rie-bench run` on the test split."""
    import numpy as np
    import torch
    from PIL import Image

    from refcoco_edit.imaging.masks import mask_iou
    from refcoco_edit.pipelines.base import working_size
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.study.data import RefShapesStudy, batches
    from referdiffusion.study.evaluate import score, summary
    from referdiffusion.study.export import binary_object_mask
    from referdiffusion.train.manifest import trained_size

    if role == "test":
        raise InputError("rows eval reads val (selection); the test split is for the final evaluation only")
    torch.set_num_threads(1)
    study = RefShapesStudy(data)
    records = study.edits(role)
    if limit is not None and limit < len(records):
        keep = np.random.default_rng(0).choice(len(records), size=limit, replace=False)
        records = [records[k] for k in sorted(keep)]
    pipe = ReferDiffusionPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    size = trained_size(checkpoint, default=None)
    outputs: dict[int, np.ndarray] = {}
    mask_ious: list[float] = []
    generator = torch.Generator().manual_seed(seed)
    for sl in batches(len(records), batch_size):
        chunk = records[sl]
        images = [Image.fromarray(study.source(r.image_id)) for r in chunk]
        full = images[0].size
        work = working_size(full, size)
        images = [im.resize(work, Image.Resampling.LANCZOS) if im.size != work else im for im in images]
        prompts = [study.prompt(r).prompt if prompt else "" for r in chunk]
        with torch.no_grad():
            result = pipe(prompt=prompts, image=images, num_inference_steps=steps, guidance_scale=guidance_scale,
                          image_guidance_scale=image_guidance_scale, generator=generator)
        for r, im in zip(chunk, result.images):
            outputs[r.edit_id] = np.asarray(im.convert("RGB").resize(full, Image.Resampling.LANCZOS))
        # the REM's mask against the referred object's M as the export gives it to the benchmark (a row
        # without the REM trained has its initial REM, so the value means something for the REM rows only)
        for r, m in zip(chunk, result.masks):
            iou = mask_iou(np.asarray(m.resize(full, Image.Resampling.NEAREST)) > 127,
                           binary_object_mask(study.object_mask(r)))
            mask_ious.append(0.0 if iou is None else iou)
    scores = summary({**score(study, records, lambda src, r: outputs[r.edit_id]),
                      "rem_mask_iou": np.asarray(mask_ious)})
    return {"checkpoint": str(checkpoint), "role": role, "edits": len(records), "steps": steps, "prompt": prompt,
            "guidance": [guidance_scale, image_guidance_scale], **scores}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.rows", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help=f"the rows' folder (default {ROOT})")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="make or link the starting checkpoint and the datasets")
    pp.add_argument("--data", type=Path, help="the RefShapes folder (`refcoco-edit sample --out`)")
    pp.add_argument("--vae", help="a trained VAE folder or 'random' (default: refshapes-vae when shipped, else random)")
    pp.add_argument("--rescale-vae", action="store_true", help="measure --vae's scaling factor on 256 train images")
    pp.add_argument("--seed", type=int, default=0, help="seed of the starting UNet and REM (0: the shipped rows)")
    for name in ("edits", "synth", "base"):
        pp.add_argument(f"--{name}", type=Path, help=f"link this existing folder as the {name} input")
    pr = sub.add_parser("run", help="train a row (resumes after a kill)")
    pr.add_argument("row", choices=list(ROWS))
    pr.add_argument("--max-steps", type=int, default=None, help="stop at this global step")
    pr.add_argument("--no-progress", action="store_true")
    pr.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parse_intermixed(pr)  # overrides before or after the options
    sub.add_parser("status", help="where each row is, and its loss curve")
    pe = sub.add_parser("eval", help="score a checkpoint's edits of val (fg_agreement, fg_psnr, bg_psnr)")
    pe.add_argument("checkpoint", type=Path)
    pe.add_argument("--data", type=Path, required=True, help="the RefShapes folder")
    pe.add_argument("--limit", type=int, default=64)
    pe.add_argument("--steps", type=int, default=20)
    pe.add_argument("--no-prompt", action="store_true", help="empty prompts (does the model follow its text?)")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.root, args.data, vae=args.vae, edits=args.edits, synth=args.synth,
                                 base=args.base, rescale_vae=args.rescale_vae, seed=args.seed)))
    elif args.cmd == "run":
        result = run_row(args.row, args.root, args.max_steps, args.overrides, progress=not args.no_progress)
        print(json.dumps({"row": args.row, "global_step": result.global_step, "final": str(result.final)}))
    elif args.cmd == "eval":
        print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data, limit=args.limit, steps=args.steps,
                                             prompt=not args.no_prompt)))
    else:
        for entry in status(args.root):
            loss = entry.pop("loss", [])
            tail = ", ".join(f"{s}: {v}" for s, v in loss[-8:])
            print(json.dumps(entry) + (f"\n  loss (last points): {tail}" if tail else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
