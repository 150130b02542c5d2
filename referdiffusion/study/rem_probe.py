"""Can the REM learn to find the referred object at all, given the study's frozen text encoder and VAE?

In the rows the REM learns its mask beside a UNet learning to edit, within one budget. This probe trains a
REM alone, on L_mask only (BCE + Dice, as `losses.mask_loss`), with everything else frozen: the text
encoder's F_P and the VAE latent of the source are computed once for every train edit and cached, so a step
costs the REM's own forward and backward only, and many more samples fit in an hour than a row sees. The
mask is scored on val through the pipeline's own path (`ReferDiffusionPipeline.generate_mask`, the working
size 64 x 48, threshold 0.5, nearest back to 128 x 96) against the benchmark's M, and on as many train
edits, so the log says whether the REM underfits or fails to generalise; at the end `final.json` splits the
val IoU by the kind of referring expression (attribute, location, size, ordinal) and says how often the mask
is closest to the referred object rather than another object of the picture (did the REM pick the right
object, and how well does it draw it when it does).

`--train-text` trains the text encoder with the REM, on the same loss, instead of reading the cached features
of the frozen one: whether features learned from RefShapes prompts let the REM pick the referred object.

It answers where the rows' REM mask IoU is lost: if a REM trained alone for long reaches the target, the
rows' budget (and what the UNet's loss does to the shared REM) is what limits it; if it does not, the REM's
inputs (the frozen random text features, the latent's detail) or its design do.

    python -m referdiffusion.study.rem_probe --root ROWS --data REFSHAPES --out DIR [--steps 6000]

`ROWS` is a rows folder (`study.rows prepare`): its starting checkpoint (`base`, whose REM is the starting
point) and its 64 px dataset. Resumes from DIR after a kill; prints one JSON line per evaluation.
`--grid PROBE_DIR ... --out masks.png` draws finished probes' masks over the first val objects instead.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.errors import InputError


@dataclass
class ProbeConfig:
    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 2e-3  # the rows' rate
    weight_decay: float = 1e-2
    warmup: int = 100
    max_grad_norm: float = 1.0
    mask_resolution: str = "image"  # image | latent, as `losses.mask_resolution`
    eval_every: int = 1000
    eval_limit: int = 600  # the first N edits of val (and of train), as rem_ceiling reads them
    seed: int = 0
    resolution: int = 64  # the rows' working size
    train_limit: int = 0  # the first N train edits only (0: all)
    rem_config: str = ""  # "key=value,...": a fresh REM with the base's config changed so (seeded by `seed`)
    train_text: bool = False  # train the text encoder with the REM (on L_mask) instead of reading cached F_P


def cache_features(rows_root: Path, out: Path, resolution: int = 64, limit: int = 0,
                   batch: int = 128) -> dict[str, Any]:
    """F_P, token masks, source latents (mode, unscaled) and M at `resolution` of every train edit, as the
    trainer's data protocol gives them (`EditingDataset`, aspect padding); cached in `out`."""
    import torch

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.train.data import DataOptions, EditingDataset, open_dataset

    path = out / f"train-{resolution}-{limit or 'all'}.pt"
    if path.is_file():
        return torch.load(path)
    pipe = ReferDiffusionPipeline.from_pretrained(rows_root / "base")
    ds = EditingDataset(open_dataset(str(rows_root / "data" / "edits-128"), "train", limit or None), pipe.tokenizer,
                        DataOptions(resolution=resolution, resize="aspect", max_token_length=32))
    parts: dict[str, list] = {"embeds": [], "token_mask": [], "latents": [], "mask": []}
    start = time.time()
    for lo in range(0, len(ds), batch):
        items = [ds[i] for i in range(lo, min(lo + batch, len(ds)))]
        ids = torch.stack([it["input_ids"] for it in items])
        with torch.no_grad():
            parts["embeds"].append(pipe.text_encoder(ids)[0].half())
            pixels = torch.stack([it["source_pixel_values"] for it in items])
            parts["latents"].append(pipe.vae.encode(pixels).latent_dist.mode())
        parts["token_mask"].append(torch.stack([it["attention_mask"] for it in items]).bool())
        parts["mask"].append(torch.stack([it["source_mask"][0] for it in items]).half())
        if lo // batch % 20 == 0:
            print(json.dumps({"cache": min(lo + batch, len(ds)), "of": len(ds), "s": round(time.time() - start)}),
                  flush=True)
    cache = {k: torch.cat(v) for k, v in parts.items()}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(cache, path)
    return cache


def train_token_ids(rows_root: Path, tokenizer: Any, limit: int = 0, max_length: int = 32) -> Any:
    """Token ids of every train edit's prompt, in the cache's order (the dataset's), read without decoding any
    image: what a text encoder trained with the REM reads instead of the cached F_P."""
    from referdiffusion.text import tokenize
    from referdiffusion.train.data import open_dataset, stage_prompt

    ds = open_dataset(str(rows_root / "data" / "edits-128"), "train", limit or None)
    rows = ds.select_columns(["sample_id", "prompt", "edit_spans"])
    prompts = [stage_prompt(r, None, str(r["sample_id"]))[0] for r in rows]
    return tokenize(tokenizer, prompts, max_length)


def _val_inputs(data: Path, role: str, limit: int, size: int,
                objects: bool = False) -> tuple[list, list[str], np.ndarray, list[str], list[np.ndarray]]:
    """The first `limit` edits of `role`: sources at the working size, prompts, the benchmark's M, the kind
    of each referring expression (attribute, location, size, ordinal: RefShapes' categories), and with
    `objects` every object of each picture drawn as M is (K x H x W, the referred one first)."""
    from PIL import Image

    from refcoco_edit.pipelines.base import working_size
    from refcoco_edit.refshapes.expressions import CATEGORY, parse_expression
    from referdiffusion.study.data import RefShapesStudy, downsample_mask_area
    from referdiffusion.study.export import binary_object_mask

    study = RefShapesStudy(data)
    records = study.edits(role)[:limit]
    images, prompts, masks, kinds, scenes = [], [], [], [], []
    for r in records:
        im = Image.fromarray(study.source(r.image_id))
        work = working_size(im.size, size)
        images.append(im.resize(work, Image.Resampling.LANCZOS) if im.size != work else im)
        prompts.append(study.prompt(r).prompt)
        masks.append(binary_object_mask(study.object_mask(r)))
        kinds.append(CATEGORY[parse_expression(study.sentence(r)).relation])
        if objects:
            others = [a["id"] for a in study.refer.image_anns(r.image_id) if a["id"] != r.ann_id]
            scenes.append(np.stack([masks[-1]] + [binary_object_mask(downsample_mask_area(
                study.refer.ann_mask(a), study.size)) for a in others]).astype(bool))
    return images, prompts, np.stack(masks).astype(bool), kinds, scenes


def predicted_masks(pipe: Any, images: list, prompts: list[str], full_hw: tuple[int, int],
                    batch: int = 64) -> np.ndarray:
    """N x H x W bool: the pipeline's REM masks (threshold 0.5), nearest to the dataset's size."""
    import torch.nn.functional as F

    out = []
    for lo in range(0, len(images), batch):
        probs = pipe.generate_mask(prompts[lo:lo + batch], images[lo:lo + batch], output_type="pt")
        pred = F.interpolate((probs > 0.5).float().unsqueeze(1), size=full_hw, mode="nearest-exact").squeeze(1)
        out.append(pred.numpy() > 0.5)
    return np.concatenate(out)


def iou(pred: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU over the last two axes (0 when both are empty)."""
    inter = (pred & masks).sum((-2, -1))
    union = (pred | masks).sum((-2, -1))
    return inter / np.maximum(union, 1)


def mask_iou(pipe: Any, images: list, prompts: list[str], masks: np.ndarray, batch: int = 64) -> np.ndarray:
    """Per-edit IoU of the pipeline's REM mask with M."""
    return iou(predicted_masks(pipe, images, prompts, masks.shape[1:], batch), masks)


def final_scores(pipe: Any, data: Path, cfg: ProbeConfig) -> dict[str, Any]:
    """The val IoU with M by kind of expression, and which object of its picture each mask is closest to."""
    from referdiffusion.study.measure import bootstrap_ci

    images, prompts, masks, kinds, scenes = _val_inputs(data, "val", cfg.eval_limit, cfg.resolution, objects=True)
    pred = predicted_masks(pipe, images, prompts, masks.shape[1:])
    ious, kinds_arr = iou(pred, masks), np.asarray(kinds)

    def interval(values: np.ndarray) -> list[float]:
        ci = bootstrap_ci(values)
        return [round(ci.value, 4), round(ci.low, 4), round(ci.high, 4)]

    # closest object: the picture's object the mask overlaps best (IoU); the referred one is index 0
    per_object = [iou(p[None], scene) for p, scene in zip(pred, scenes)]
    picks = np.array([float(o.max() > 0 and int(o.argmax()) == 0) for o in per_object])
    out: dict[str, Any] = {"val_edits": len(ious), "objects_per_picture": float(np.mean([len(s) for s in scenes])),
                           "picks_referred_object": interval(picks),
                           "iou_when_picked": interval(ious[picks == 1]) if picks.any() else None}
    for kind in ["all", *sorted(set(kinds))]:
        sel = np.ones(len(ious), bool) if kind == "all" else kinds_arr == kind
        out[kind] = {"n": int(sel.sum()), "iou": interval(ious[sel]), "picks_referred_object": interval(picks[sel])}
    return out


TINT = (255, 0, 255)  # magenta: in no RefShapes colour or background, so a mask shows on every object


def tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = TINT) -> np.ndarray:
    """`image` (H x W x 3 uint8) with the pixels of `mask` most of the way to `colour`: the mask over the picture."""
    out = image.astype(np.float32)
    out[mask] = 0.35 * out[mask] + 0.65 * np.asarray(colour, np.float32)
    return np.round(out).astype(np.uint8)


def mask_grid(rows_root: Path, data: Path, probes: list[Path], path: Path, count: int = 8,
              resolution: int = 64) -> Path:
    """One line for each of the first `count` referred objects of val (the first edit of each): the source, M,
    then each finished probe's REM mask, drawn over the picture at the dataset's size; the prompts go to
    `path` with a .txt suffix. Shows what the IoU and the object picks count: the wrong object chosen, or the
    right one drawn roughly."""
    from PIL import Image

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import RegionEmbedder
    from referdiffusion.study.data import RefShapesStudy
    from referdiffusion.study.report import titled_grid

    study = RefShapesStudy(data)
    records, first = study.edits("val"), {}
    for i, r in enumerate(records):
        if len(first) < count:
            first.setdefault((r.image_id, r.ann_id), i)
    keep = sorted(first.values())
    images, prompts, masks, _, _ = _val_inputs(data, "val", keep[-1] + 1, resolution)
    images, prompts, masks = [images[i] for i in keep], [prompts[i] for i in keep], masks[keep]
    sources = [np.asarray(Image.fromarray(study.source(records[i].image_id)).convert("RGB")) for i in keep]
    pipe = ReferDiffusionPipeline.from_pretrained(rows_root / "base")
    pipe.set_progress_bar_config(disable=True)
    columns = [("source", sources), ("M", [tint(s, m) for s, m in zip(sources, masks)])]
    text_encoder = pipe.text_encoder
    for probe in probes:
        pipe.rem = RegionEmbedder.from_pretrained(probe / "rem").float().eval()
        trained_text = probe / "text_encoder"
        pipe.text_encoder = (type(text_encoder).from_pretrained(trained_text).float().eval()
                             if trained_text.is_dir() else text_encoder)
        pred = predicted_masks(pipe, images, prompts, masks.shape[1:])
        columns.append((probe.name, [tint(s, m) for s, m in zip(sources, pred)]))
    h, w = masks.shape[1:]
    canvas = titled_grid([(title, [Image.fromarray(c) for c in cells]) for title, cells in columns], (w, h))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    path.with_suffix(".txt").write_text("".join(f"{i}: {p}\n" for i, p in enumerate(prompts)))
    return path


def _fresh_rem(base: Any, changes: str, seed: int) -> Any:
    """A new REM of `base`'s config with `changes` ("image_conv_layers=4,coordinates=true", values as JSON)."""
    import torch

    from referdiffusion.rem import RegionEmbedder

    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    for item in changes.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in config:
            raise InputError(f"--rem-config {item!r}: not KEY=VALUE with KEY one of {', '.join(sorted(config))}")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"--rem-config {item!r}: the value is not JSON (true, 4, 16.0)") from None
    torch.manual_seed(seed)
    return RegionEmbedder(**config)


def train(rows_root: Path, data: Path, out: Path, cfg: ProbeConfig, stop_at: int | None = None) -> list[dict[str, Any]]:
    """Train the REM on L_mask alone (module docstring); resumes from `out/state.pt`. Returns the log.
    `stop_at` stops after that step's evaluation, as a kill would (the schedule stays `cfg.steps`')."""
    import torch

    from referdiffusion.losses import mask_loss
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline
    from referdiffusion.rem import upsample_mask_logits
    from referdiffusion.study.measure import bootstrap_ci

    if cfg.mask_resolution not in ("image", "latent"):
        raise InputError(f"mask_resolution must be image or latent, got {cfg.mask_resolution!r}")
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_features(rows_root, out, cfg.resolution, cfg.train_limit)
    n = cache["embeds"].shape[0]
    pipe = ReferDiffusionPipeline.from_pretrained(rows_root / "base")
    pipe.set_progress_bar_config(disable=True)
    if cfg.rem_config:
        pipe.rem = _fresh_rem(pipe.rem, cfg.rem_config, cfg.seed)
    rem = pipe.rem.float().train()
    trained = {"rem": rem}  # what the optimiser moves, saved under these names
    text = None
    if cfg.train_text:
        tokens = train_token_ids(rows_root, pipe.tokenizer, cfg.train_limit)
        if not torch.equal(tokens["attention_mask"].bool(), cache["token_mask"]):
            raise InputError(f"{rows_root}: the train prompts do not match the cached features; remove the cache")
        text = trained["text_encoder"] = pipe.text_encoder.float().train()
    params = [p for module in trained.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    state_path, log_path = out / "state.pt", out / "log.jsonl"
    step, log = 0, []
    if state_path.is_file():
        state = torch.load(state_path)
        if {**asdict(ProbeConfig()), **state["config"]} != asdict(cfg):  # settings added later: their defaults
            raise InputError(f"{out} was trained with another configuration: {state['config']}")
        for name, module in trained.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, log = state["step"], state["log"]
    val = _val_inputs(data, "val", cfg.eval_limit, cfg.resolution)
    train_check = _val_inputs(data, "train", cfg.eval_limit, cfg.resolution)

    def evaluate(loss: float) -> dict[str, Any]:
        for module in trained.values():
            module.eval()
        entry: dict[str, Any] = {"step": step, "loss": None if math.isnan(loss) else round(loss, 4)}
        for name, (images, prompts, masks, _, _) in (("val", val), ("train", train_check)):
            ci = bootstrap_ci(mask_iou(pipe, images, prompts, masks))
            entry[f"{name}_iou"] = [round(ci.value, 4), round(ci.low, 4), round(ci.high, 4)]
        for module in trained.values():
            module.train()
        return entry

    if step == 0 and not log:
        log.append(evaluate(float("nan")))
        print(json.dumps(log[-1]), flush=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(step):  # the same batches after a resume
        torch.randint(0, n, (cfg.batch_size,), generator=gen)
    losses: list[float] = []
    start = time.time()
    while step < min(cfg.steps, stop_at or cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        latents = cache["latents"][idx]
        embeds = text(tokens["input_ids"][idx])[0] if text is not None else cache["embeds"][idx].float()
        res = rem(embeds, latents, cache["token_mask"][idx].long())
        target = cache["mask"][idx].float()
        logits = res.mask_logits
        if cfg.mask_resolution == "image":
            logits = upsample_mask_logits(logits, tuple(target.shape[-2:]))
        else:
            target = torch.nn.functional.adaptive_avg_pool2d(target.unsqueeze(1), logits.shape[-2:]).squeeze(1)
        loss = mask_loss(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            per_step = round((time.time() - start) / len(losses), 4)
            log.append({**evaluate(float(np.mean(losses))), "s_per_step": per_step})
            losses, start = [], time.time()
            print(json.dumps(log[-1]), flush=True)
            torch.save({"config": asdict(cfg), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                        "log": log, **{name: module.state_dict() for name, module in trained.items()}}, state_path)
            log_path.write_text("".join(json.dumps(e) + "\n" for e in log))
    if step == cfg.steps:
        for name, module in trained.items():
            module.save_pretrained(out / name)
            module.eval()
        final = {"step": step, **final_scores(pipe, data, cfg)}
        (out / "final.json").write_text(json.dumps(final, indent=1) + "\n")
        print(json.dumps(final), flush=True)
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.rem_probe", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, type=Path, help="a rows folder (study.rows prepare)")
    p.add_argument("--data", required=True, type=Path, help="the RefShapes folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stop-at", type=int, help="stop after this step's evaluation (resume later)")
    p.add_argument("--grid", action="append", type=Path, metavar="PROBE",
                   help="draw these finished probes' masks over the first val objects into OUT (a .png) instead of "
                        "training (repeatable)")
    defaults = ProbeConfig()
    for name, value in asdict(defaults).items():
        if isinstance(value, bool):
            p.add_argument(f"--{name.replace('_', '-')}", action="store_true")
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args(argv)
    cfg = ProbeConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    if args.grid:
        missing = [str(d) for d in args.grid if not (d / "rem" / "config.json").is_file()]
        if missing:
            raise InputError(f"--grid: no finished probe (its rem/ folder) in {', '.join(missing)}")
        print(mask_grid(args.root, args.data, args.grid, args.out, resolution=cfg.resolution))
        return 0
    train(args.root, args.data, args.out, cfg, args.stop_at)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
