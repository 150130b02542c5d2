"""`refcoco-edit` command line.

Each subcommand lives in its own module under `refcoco_edit.commands` with two functions,
`register(subparsers)` and `run(args) -> int`. Command modules import only the standard library at
top level, so `--help` answers fast; heavy libraries are imported inside `run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from refcoco_edit.commands.parser import make_parser, run_cli

__all__ = ["COMMANDS", "build_parser", "main", "run_cli"]

# Subcommand name -> module. The order here is the order `--help` lists them.
COMMANDS: dict[str, str] = {
    # the data
    "stats": "refcoco_edit.commands.stats",
    "refs": "refcoco_edit.commands.refs",
    "mask": "refcoco_edit.commands.mask",
    "sample": "refcoco_edit.commands.sample",
    # sources, prompts, models and edits
    "candidates": "refcoco_edit.commands.candidates",
    "prompt": "refcoco_edit.commands.prompt",
    "models": "refcoco_edit.commands.models",
    "generate": "refcoco_edit.commands.generate",
    # the dataset
    "build": "refcoco_edit.commands.build",
    "store": "refcoco_edit.commands.store",
    "export": "refcoco_edit.commands.export",
    "synth": "refcoco_edit.commands.synth",
    "app": "refcoco_edit.commands.app",
    "demo": "refcoco_edit.commands.demo",
}


def build_parser(
    commands: dict[str, str] = COMMANDS,
    prog: str = "refcoco-edit",
    description: str = "Build RefCOCO-Edit: read RefCOCO, compose prompts, make reference edits, export.",
) -> argparse.ArgumentParser:
    """The `refcoco-edit` parser (or one for another table of `commands`)."""
    return make_parser(commands, prog, description)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
