"""The study's test evaluation and its report: Table 2's rows beside reference methods, curves, an image grid.

Every entry is one `rie-bench run` on the RefCOCO-Edit export of RefShapes (split `testA`, the study's test
split, the first `limit` samples), with the benchmark's metrics; nothing here reads the test split
otherwise, and no choice is made on it. The trained rows are run from their packaged folders (what a user
gets), with the same sampler for all: the checkpoint's DDIM, `steps` steps, guidance 7.5 / 1.5, the whole
referring prompt as is (the fine-tune row through the `ip2p` method, which gives a model trained here the
prompt it was trained on, without the instruction suffix). Beside them: identity, the oracle `seg_inpaint`, the
reference edit, and the reference edit through `refshapes-vae` at 64 px, the ceiling of any editor that
decodes through that VAE at that size (and at 128 px, the size the VAE was trained at).

    python -m referdiffusion.study.report evaluate --dataset EDITS --out EVAL [--limit 1200] [--steps 20]
    python -m referdiffusion.study.report table --out EVAL          # the markdown table (Table 2 layout)
    python -m referdiffusion.study.report seeds --out EVAL0 --out EVAL1 --out EVAL2   # rows across seeds
    python -m referdiffusion.study.report figures --out EVAL --rows ROWS_ROOT --docs docs/refshapes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.errors import InputError

METRICS = "l2_bg,psnr_bg,localisation,fg_agreement"
SPLIT = "testA"


@dataclass(frozen=True)
class Entry:
    key: str  # folder under the evaluation root
    label: str
    args: tuple[str, ...]  # rie-bench run arguments naming the method
    rem: str = ""  # Table 2's columns: REM, RCL, stage 1 (blank for the reference methods)
    rcl: str = ""
    stage1: str = ""
    trained: bool = False  # sampled with the study's steps

    @property
    def row(self) -> bool:
        return bool(self.rem)


ENTRIES: tuple[Entry, ...] = (
    Entry("identity", "identity (source unchanged)", ("--method", "identity")),
    Entry("seg_inpaint", "seg_inpaint (oracle mask, classical removal)",
          ("--method", "seg_inpaint", "--method-option", "segmenter=gt", "--method-option",
           "inpainter=classical_inpaint")),
    Entry("finetune", "fine-tune (refshapes-ip2p)",
          ("--method", "ip2p", "--method-model", "refshapes-ip2p"),
          rem="-", rcl="-", stage1="-", trained=True),
    Entry("rem", "+REM (refshapes-rem)", ("--method", "referdiffusion", "--method-model", "refshapes-rem"),
          rem="yes", rcl="-", stage1="-", trained=True),
    Entry("rem_rcl", "+REM +RCL (refshapes-rem-rcl)",
          ("--method", "referdiffusion", "--method-model", "refshapes-rem-rcl"),
          rem="yes", rcl="yes", stage1="-", trained=True),
    Entry("full", "full (refshapes-referdiffusion)",
          ("--method", "referdiffusion", "--method-model", "refshapes-referdiffusion"),
          rem="yes", rcl="yes", stage1="yes", trained=True),
    Entry("reference", "reference edit (ceiling)", ("--method", "reference")),
    Entry("reference_vae", "reference edit through refshapes-vae at 64 px (latent editors' ceiling)",
          ("--method", "reference", "--method-option", "vae=refshapes-vae", "--size", "64")),
    Entry("reference_vae128", "reference edit through refshapes-vae at 128 px (the VAE's own size)",
          ("--method", "reference", "--method-option", "vae=refshapes-vae", "--size", "128")),
)


def entry(key: str) -> Entry:
    for e in ENTRIES:
        if e.key == key:
            return e
    raise InputError(f"unknown entry {key!r}; entries: {', '.join(e.key for e in ENTRIES)}")


def command(e: Entry, dataset: Path | str, out: Path | str, limit: int, steps: int) -> list[str]:
    cmd = [sys.executable, "-m", "benchmark.cli", "run", *e.args, "--dataset", str(dataset), "--split", SPLIT,
           "--limit", str(limit), "--out", str(Path(out) / e.key), "--metrics", METRICS, "--label", e.label,
           "--no-progress"]
    return cmd + (["--steps", str(steps)] if e.trained else [])


def evaluate(dataset: Path | str, out: Path | str, limit: int = 1200, steps: int = 20,
             keys: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Run each entry (rie-bench resumes from its cached outputs); the keys run. `env` points the resolver's
    names elsewhere (REFCOCO_EDIT_MODEL_REFSHAPES_REM=DIR, ...) for rows not yet packaged."""
    done = []
    for e in ENTRIES if not keys else [entry(k) for k in keys]:
        print(f"[study eval] {e.key}: {e.label}", flush=True)
        subprocess.run(command(e, dataset, out, limit, steps), check=True, env=env)
        done.append(e.key)
    return done


def _bootstrap(values: list[float]) -> tuple[float, float, float] | None:
    from referdiffusion.study.measure import bootstrap_ci

    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None
    ci = bootstrap_ci(np.asarray(finite))
    return ci.value, ci.low, ci.high


def results(out: Path | str) -> dict[str, dict[str, Any]]:
    """{key: {metric: (value, low, high)}} of the entries evaluated under `out` (REM mask IoU from the
    per-sample rows, with a bootstrap interval)."""
    table: dict[str, dict[str, Any]] = {}
    for e in ENTRIES:
        folder = Path(out) / e.key
        if not (folder / "results.json").is_file():
            continue
        r = json.loads((folder / "results.json").read_text())
        row = {name: (m["value"], *m["ci"]) for name, m in r["metrics"].items() if m.get("available")}
        row["n"] = max((m["n"] for m in r["metrics"].values()), default=0)
        row["by_edit_type"] = {t: v["value"] for t, v in r["metrics"]["fg_agreement"]["by_edit_type"].items()}
        if e.rem == "yes":
            samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line]
            row["mask_iou"] = _bootstrap([(s.get("generation") or {}).get("mask_iou") for s in samples])
        table[e.key] = row
    return table


def _fmt(cell: Any, digits: int = 3, scale: float = 1.0) -> str:
    if cell is None:
        return "n/a"
    value, low, high = (None if c is None else c * scale for c in cell)
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(res: dict[str, dict[str, Any]]) -> str:
    """Table 2's layout of `results(out)`: the rows with their REM / RCL / stage-1 columns, then the
    reference methods."""
    head = ("| method | REM | RCL | stage 1 | fg_agreement ↑ | psnr_fg ↑ (dB) | l2_bg ↓ (x1e3) | psnr_bg ↑ (dB) "
            "| loc_iou ↑ | REM mask IoU ↑ |")
    lines = [head, "|" + "---|" * 10]
    for e in ENTRIES:
        if e.key not in res:
            continue
        r = res[e.key]
        lines.append(f"| {e.label} | {e.rem} | {e.rcl} | {e.stage1} | {_fmt(r.get('fg_agreement'))} | "
                     f"{_fmt(r.get('psnr_fg'), 1)} | {_fmt(r.get('l2_bg'), 2, 1e3)} | {_fmt(r.get('psnr_bg'), 1)} | "
                     f"{_fmt(r.get('loc_iou'))} | {_fmt(r.get('mask_iou')) if e.rem == 'yes' else ''} |")
    return "\n".join(lines)


def by_type_table(res: dict[str, dict[str, Any]]) -> str:
    """fg_agreement of `results(out)` by edit type."""
    types = ("replace", "remove", "attribute")
    lines = ["| method | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 1)]
    for e in ENTRIES:
        if e.key in res:
            bt = res[e.key]["by_edit_type"]
            lines.append(f"| {e.label} | " + " | ".join(f"{bt.get(t, float('nan')):.3f}" for t in types) + " |")
    return "\n".join(lines)


def report_text(out: Path | str) -> str:
    """Both tables of the entries evaluated under `out` (their result files read once)."""
    res = results(out)
    return markdown_table(res) + "\n\nfg_agreement by edit type:\n\n" + by_type_table(res)


SEED_METRICS = (("fg_agreement", "fg_agreement", 3), ("psnr_fg", "psnr_fg", 1), ("psnr_bg", "psnr_bg", 1),
                ("loc_iou", "loc_iou", 3), ("mask_iou", "REM mask IoU", 3))  # key in `results`, title, digits


def seeds_table(outs: list[Path | str]) -> str:
    """The trained rows across training seeds, one evaluation root per seed (`study.run --seed N`): for each
    metric the mean over the seeds, their standard deviation, and each seed's value in the order given.

    The bootstrap intervals of the main table measure the test sample; this one measures the training run."""
    per_seed = [results(out) for out in outs]
    head = "| method | seeds | " + " | ".join(f"{title} ↑" for _, title, _ in SEED_METRICS) + " |"
    lines = [head, "|" + "---|" * (len(SEED_METRICS) + 2)]
    for e in ENTRIES:
        runs = [res[e.key] for res in per_seed if e.key in res]
        if not e.trained or not runs:
            continue
        cells = []
        for name, _, digits in SEED_METRICS:
            values = [r[name][0] for r in runs if r.get(name) is not None]
            if not values or (name == "mask_iou" and e.rem != "yes"):
                cells.append("")
                continue
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            each = ", ".join(f"{v:.{digits}f}" for v in values)
            cells.append(f"{np.mean(values):.{digits}f} ± {sd:.{digits}f} ({each})")
        lines.append(f"| {e.label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def titled_grid(columns: list[tuple[str, list[Any]]], size: tuple[int, int]) -> Any:
    """Columns of pictures (PIL images, each resized to `size`) under their titles, one line per sample: the
    layout of the study's figures."""
    from PIL import Image, ImageDraw

    (w, h), pad, top = size, 4, 14
    rows = max(len(cells) for _, cells in columns)
    canvas = Image.new("RGB", (len(columns) * (w + pad) + pad, top + rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (title, cells) in enumerate(columns):
        draw.text((pad + j * (w + pad), 1), title, fill="black")
        for i, img in enumerate(cells):
            canvas.paste(img.convert("RGB").resize((w, h)), (pad + j * (w + pad), top + pad + i * (h + pad)))
    return canvas


def grid(out: Path | str, path: Path | str, count: int = 8) -> Path:
    """One line per test sample (the first `count` of the reference run): source, reference edit, the reference
    edit through the VAE, then each trained row's output, at the dataset's size."""
    from PIL import Image

    ref = Path(out) / "reference"
    samples = [json.loads(line) for line in (ref / "samples.jsonl").read_text().splitlines() if line][:count]
    columns = [("source", "identity"), ("reference", "reference"), ("through VAE", "reference_vae")] + [
        (e.key, e.key) for e in ENTRIES if e.trained]
    columns = [c for c in columns if (Path(out) / c[1] / "outputs").is_dir()]
    size = Image.open(ref / "outputs" / f"{samples[0]['sample_id']}.png").size
    canvas = titled_grid([(title, [Image.open(Path(out) / key / "outputs" / f"{s['sample_id']}.png")
                                   for s in samples]) for title, key in columns], size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    (path.with_suffix(".txt")).write_text("".join(f"{s['sample_id']}: {s['prompt']}\n" for s in samples))
    return path


CURVE_TAG = "train/loss_noise"  # the one loss every row optimises, so the rows' curves compare


def row_curves(rows_root: Path | str) -> dict[str, list[tuple[int, float]]]:
    """Each row's L_noise against step, from its TensorBoard log."""
    from referdiffusion.study.rows import ROWS, config_name, curve, row_overrides
    from referdiffusion.train import load_config

    return {row: curve(load_config(config_name(row), row_overrides(row, rows_root)).output_dir, CURVE_TAG)
            for row in ROWS}


def curves_plot(curves: dict[str, list[tuple[int, float]]], path: Path | str, size: tuple[int, int] = (640, 360),
                smooth: int = 5, title: str = "L_noise (running mean of 5 logged points)") -> Path:
    """Loss against step, one line per row (a running mean over `smooth` logged points), log y."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    w, h = size
    left, right, top, bottom = 56, 150, 16, 32
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    series = {}
    for name, pts in curves.items():
        if pts:
            steps = np.array([p[0] for p in pts], float)
            vals = np.convolve(np.array([p[1] for p in pts], float), np.ones(smooth) / smooth, mode="valid")
            series[name] = (steps[smooth - 1:] if len(vals) < len(steps) else steps, vals)
    if not series:
        raise InputError("no loss curve to plot")
    xmax = max(s[0].max() for s in series.values())
    ys = np.concatenate([np.log10(np.maximum(s[1], 1e-6)) for s in series.values()])
    ylo, yhi = float(np.floor(ys.min() * 4) / 4), float(np.ceil(ys.max() * 4) / 4)
    yhi = max(yhi, ylo + 0.25)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (w - left - right) * step / xmax
        y = top + (h - top - bottom) * (yhi - np.log10(max(value, 1e-6))) / (yhi - ylo)
        return x, y

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in np.arange(ylo, yhi + 1e-9, 0.25):
        y = xy(0, 10 ** k)[1]
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{10 ** k:.3g}", fill="black")
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + (w - left - right) * frac
        draw.line([x, h - bottom, x, h - bottom + 4], fill="black")
        draw.text((x - 12, h - bottom + 6), f"{int(xmax * frac)}", fill="black")
    draw.text(((w - right) // 2, h - 12), "step", fill="black")
    draw.text((left + 4, top + 2), title, fill="black")
    for i, (name, (steps, vals)) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        draw.line([xy(s, v) for s, v in zip(steps, vals)], fill=colour, width=2)
        draw.line([w - right + 10, top + 14 * i + 7, w - right + 30, top + 14 * i + 7], fill=colour, width=2)
        draw.text((w - right + 34, top + 14 * i), name, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.report", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pe = sub.add_parser("evaluate", help="rie-bench run for every entry on the test split")
    pe.add_argument("--dataset", required=True, type=Path, help="the study's RefCOCO-Edit export (edits-128)")
    pe.add_argument("--out", required=True, type=Path)
    pe.add_argument("--limit", type=int, default=1200)
    pe.add_argument("--steps", type=int, default=20)
    pe.add_argument("--only", action="append", help="run this entry only (repeatable)")
    pt = sub.add_parser("table", help="print the results table (markdown)")
    pt.add_argument("--out", required=True, type=Path)
    ps = sub.add_parser("seeds", help="print the rows across training seeds (markdown)")
    ps.add_argument("--out", required=True, type=Path, action="append",
                    help="one seed's evaluation root (repeat: seed 0 first)")
    pf = sub.add_parser("figures", help="write the image grid and the loss curves")
    pf.add_argument("--out", required=True, type=Path)
    pf.add_argument("--rows", required=True, type=Path, help="the rows' root (python -m referdiffusion.study.rows)")
    pf.add_argument("--docs", required=True, type=Path, help="folder for refshapes-grid.png and refshapes-curves.png")
    args = p.parse_args(argv)
    if args.cmd == "evaluate":
        evaluate(args.dataset, args.out, args.limit, args.steps, args.only)
    elif args.cmd == "table":
        print(report_text(args.out))
    elif args.cmd == "seeds":
        print(seeds_table(args.out))
    else:
        print(grid(args.out, args.docs / "refshapes-grid.png"))
        print(curves_plot(row_curves(args.rows), args.docs / "refshapes-curves.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
