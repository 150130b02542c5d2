"""`refcoco-edit` command line.

Each subcommand lives in its own module under `refcoco_edit.commands` with two functions,
`register(subparsers)` and `run(args) -> int`. Command modules import only the standard library at
top level, so `--help` answers fast; heavy libraries are imported inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from refcoco_edit.errors import RefcocoEditError

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
    """A parser with one subcommand per entry of `commands`; shared by the three console scripts."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    if not commands:
        return parser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in commands.items():
        mod = importlib.import_module(module)
        p = mod.register(sub)
        p.set_defaults(_run=mod.run)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, run, and turn toolkit errors into one-line messages (exit code 2)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "_run"):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except RefcocoEditError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
