"""`referdiffusion` subcommands: one module each with `register(subparsers)` and `run(args) -> int`;
only the standard library at module level, so `referdiffusion --help` stays light."""

from __future__ import annotations

import argparse


def parse_intermixed(parser: argparse.ArgumentParser) -> None:
    """Let a subcommand's overrides and options come in any order (`train a=1 --config tiny b=2`).

    The parent parser hands a subcommand its words through `parse_known_args`, where a `nargs="*"`
    positional takes only one run of words: overrides after an option would be "unrecognized". Intermixed
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
