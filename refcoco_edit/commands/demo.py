"""`refcoco-edit demo`: the main job, end to end, on the bundled RefShapes sample.

It runs every stage the toolkit has on the sample and writes what it made under `--out`, with a
picture to look at. It is what `make demo` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run the main job on the bundled RefShapes sample")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--refs", type=int, default=6, help="refs to show in the overview picture")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from refcoco_edit.commands.demo_run import run_demo

    summary = run_demo(args.out, n_refs=args.refs)
    print(json.dumps(summary, indent=2))
    return 0
