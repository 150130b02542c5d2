"""What the three console scripts (`refcoco-edit`, `rie-bench`, `referdiffusion`) share.

Each subcommand is a module with `register(subparsers)` and `run(args) -> int`; a table maps names to
modules. Errors the toolkit raises on purpose become one-line messages with exit code 2, so a user
sees what is wrong without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from refcoco_edit.errors import RefcocoEditError


def make_parser(commands: dict[str, str], prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with one subcommand per entry of `commands`; shared by the three console scripts."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    if not commands:
        return parser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for _name, module in commands.items():
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


def parse_intermixed(parser: argparse.ArgumentParser) -> None:
    """Let a subcommand's positional words and its options come in any order (`train a=1 --config tiny b=2`,
    `leaderboard RUN1 --format json RUN2`).

    The parent parser hands a subcommand its words through `parse_known_args`, where a `nargs="*"`
    positional takes only one run of words: words after an option would be "unrecognized". Intermixed
    parsing collects them all; it calls `parse_known_args` itself, so the inner calls go to the original.
    """
    plain = parser.parse_known_args
    busy = False

    def parse_known_args(args=None, namespace=None):
        nonlocal busy
        if busy:
            return plain(args, namespace)
        busy = True
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            busy = False

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
