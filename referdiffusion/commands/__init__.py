"""`referdiffusion` subcommands: one module each with `register(subparsers)` and `run(args) -> int`;
only the standard library at module level, so `referdiffusion --help` stays light."""

from __future__ import annotations
