"""The whole RefShapes study in one resumable command: data, VAE, inputs, four rows, packaging, test
evaluation, report.

    python -m referdiffusion.study.run --root DIR            # runs every stage not done yet, in order
    python -m referdiffusion.study.run --root DIR status     # where it is
    python -m referdiffusion.study.run --root DIR --until rows --jobs 2

Each stage leaves a finished result under `--root` and is skipped once it is there; a stage cut off
(a kill, the end of a session) resumes: the VAE and the rows from their last checkpoints, `rie-bench run`
from its cached outputs. Stages:

- data: `refcoco-edit sample --images 6000 --seed 1` -> `refshapes/`;
- vae: `study.vae train`, replaying the shipped run's schedule (a 4,000-step cosine cut at step 1,014,
  then 2,500), then `export` -> `models/refshapes-vae/`;
- inputs: `study.rows prepare`, the 128 x 96 export, stage-1 data and the starting checkpoint on this
  VAE -> `rows/base`, `rows/data/`;
- rows: `study.rows run` for fine-tune, +REM, +REM +RCL and full (`--jobs` at a time, one thread each)
  -> `rows/rows/<row>/final/`;
- package: `study.package`, each row as its fp16 folder -> `models/refshapes-*/`;
- evaluate: `study.report evaluate` on the test split, the rows read from `models/` -> `eval/<entry>/`;
- report: the table, the image grid and the loss curves -> `report/`.

`--vae DIR` skips training and uses that VAE (the packaged `refshapes-vae` reproduces the shipped rows).
`--seed N` trains the rows from a starting checkpoint drawn with seed N, with training seed N (data order,
noise): another training seed of the same study; such a root evaluates its rows only (the reference methods
do not depend on the seed). `--reuse ROOT` links the data, the VAE and the rows' datasets of another root
instead of making them again (they do not depend on the seed either):

    python -m referdiffusion.study.run --root DIR-seed1 --seed 1 --reuse DIR

On this machine's two cores: data about 4 minutes, the VAE about an hour, the export 25 minutes, the four
rows about an hour with two jobs, the evaluation about 20 minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from refcoco_edit.errors import InputError
from referdiffusion.study import package, report, rows

STAGES = ("data", "vae", "inputs", "rows", "package", "evaluate", "report")
SAMPLE_ARGS = ("--images", "6000", "--seed", "1")
VAE_RUNS = (("--steps", "4000", "--stop-at", "1014"), ("--steps", "2500"))  # the shipped run's schedule


class Paths:
    def __init__(self, root: Path | str, seed: int = 0) -> None:
        self.root = Path(root)
        self.seed = seed
        self.data = self.root / "refshapes"
        self.vae_run = self.root / "vae"
        self.models = self.root / "models"
        self.vae = self.models / package.VAE
        self.rows = self.root / "rows"
        self.eval = self.root / "eval"
        self.report = self.root / "report"

    def final(self, row: str) -> Path:
        return self.rows / "rows" / row / "final"

    def entries(self) -> list[str]:
        """What the evaluation runs: every entry for seed 0, the trained rows only for another seed."""
        return [e.key for e in report.ENTRIES if e.trained or not self.seed]


def done(p: Paths, stage: str) -> bool:
    if stage == "data":
        return (p.data / "refshapes" / "instances.json").is_file()
    if stage == "vae":
        return (p.vae / "config.json").is_file()
    if stage == "inputs":
        return all((p.rows / rel).exists() for rel in (rows.BASE, rows.EDITS, rows.SYNTH))
    if stage == "rows":
        return all((p.final(r) / "model_index.json").is_file() for r in rows.ROWS)
    if stage == "package":
        return all((p.models / name / "model_index.json").is_file() for name in package.PACKAGED.values())
    if stage == "evaluate":
        return all((p.eval / key / "results.json").is_file() for key in p.entries())
    if stage == "report":  # written after the last evaluation (an entry added later redoes it)
        md = p.report / "results.md"
        return md.is_file() and all(md.stat().st_mtime >= r.stat().st_mtime for r in p.eval.glob("*/results.json"))
    raise InputError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def _python(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, *args], check=True, env=env)


def _check_seed(p: Paths) -> None:
    if (p.rows / rows.BASE).exists() and rows.base_seed(p.rows) != p.seed:
        raise InputError(f"{p.rows / rows.BASE} was drawn with seed {rows.base_seed(p.rows)}, not {p.seed}: "
                         "use another --root for another seed")


def run_stage(p: Paths, stage: str, jobs: int = 2, vae: Path | None = None, limit: int = 1200, steps: int = 20,
              reuse: Paths | None = None) -> None:
    if stage == "data" and reuse is not None:
        rows.link_folder(reuse.data, p.data)
    elif stage == "data":
        _python("-m", "refcoco_edit.cli", "sample", *SAMPLE_ARGS, "--out", str(p.data))
    elif stage == "vae" and vae is None and reuse is not None:
        shutil.copytree(reuse.vae, p.vae)
    elif stage == "vae":
        if vae is not None:
            shutil.copytree(vae, p.vae)
            return
        for extra in VAE_RUNS:
            _python("-m", "referdiffusion.study.vae", "train", "--data", str(p.data), "--out", str(p.vae_run), *extra)
        _python("-m", "referdiffusion.study.vae", "export", "--data", str(p.data), "--vae", str(p.vae_run / "best"),
                "--out", str(p.vae))
    elif stage == "inputs":
        _check_seed(p)
        linked = {} if reuse is None else {"edits": reuse.rows / rows.EDITS, "synth": reuse.rows / rows.SYNTH}
        rows.prepare(p.rows, p.data, vae=p.vae, seed=p.seed, **linked)
    elif stage == "rows":
        _check_seed(p)
        todo = [r for r in rows.ROWS if not (p.final(r) / "model_index.json").is_file()]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for start in range(0, len(todo), max(1, jobs)):
            procs = [subprocess.Popen([sys.executable, "-m", "referdiffusion.study.rows", "--root", str(p.rows), "run",
                                       row, "--no-progress"], env=env) for row in todo[start:start + max(1, jobs)]]
            if any(proc.wait() != 0 for proc in procs):
                raise InputError("a row stopped with an error (rerun to resume it); see its log above")
    elif stage == "package":
        for row in rows.ROWS:
            print(package.package_row(row, p.final(row), p.models), flush=True)
    elif stage == "evaluate":
        from refcoco_edit.models.resolver import env_var

        names = (*package.PACKAGED.values(), package.VAE)  # what the study made, not what the package ships
        env = {**os.environ, **{env_var(name): str(p.models / name) for name in names}}
        report.evaluate(p.rows / rows.EDITS, p.eval, limit, steps, keys=p.entries(), env=env)
    elif stage == "report":
        p.report.mkdir(parents=True, exist_ok=True)
        if (p.eval / "reference" / "results.json").is_file():  # the grid's first columns
            report.grid(p.eval, p.report / "refshapes-grid.png")
        report.curves_plot(report.row_curves(p.rows), p.report / "refshapes-curves.png")
        (p.report / "results.md").write_text(report.report_text(p.eval) + "\n")
    else:
        raise InputError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m referdiffusion.study.run", description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, type=Path, help="the study's working folder")
    ap.add_argument("--until", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    ap.add_argument("--jobs", type=int, default=2, help="rows trained at a time (one thread each)")
    ap.add_argument("--vae", type=Path, default=None, help="use this VAE folder instead of training one")
    ap.add_argument("--seed", type=int, default=None,
                    help="the rows' seed: initial weights, data order, noise (default: the root's, else 0)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="another study root whose data, VAE and datasets to link instead of making them")
    ap.add_argument("--limit", type=int, default=1200, help="test samples evaluated")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps of the trained rows")
    ap.add_argument("action", nargs="?", choices=["run", "status"], default="run")
    args = ap.parse_args(argv)
    # a root already started keeps its seed (base_seed: 0 where no starting checkpoint is written yet)
    p = Paths(args.root, rows.base_seed(args.root / "rows") if args.seed is None else args.seed)
    reuse = None if args.reuse is None else Paths(args.reuse)
    if reuse is not None and not done(reuse, "inputs"):
        raise InputError(f"{args.reuse} has no finished data, VAE and inputs to reuse")
    if args.action == "status":
        for i, stage in enumerate(STAGES, 1):
            print(f"[study] {i}/{len(STAGES)} {stage}: {'done' if done(p, stage) else 'to do'}")
        for entry in rows.status(p.rows) if (p.rows / rows.BASE).exists() else []:
            print(f"[study]   row {entry['row']}: step {entry['checkpoint_step']} of {entry['total_steps']}"
                  f"{', final' if entry['final'] else ''}")
        return 0
    for i, stage in enumerate(STAGES[: STAGES.index(args.until) + 1], 1):
        if done(p, stage):
            print(f"[study] {i}/{len(STAGES)} {stage}: done", flush=True)
            continue
        print(f"[study] {i}/{len(STAGES)} {stage}: running", flush=True)
        run_stage(p, stage, jobs=args.jobs, vae=args.vae, limit=args.limit, steps=args.steps, reuse=reuse)
        print(f"[study] {i}/{len(STAGES)} {stage}: finished", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
