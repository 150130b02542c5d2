"""Subcommands of `rie-bench`: one module each with `register(subparsers)` and `run(args) -> int`.

Modules import only the standard library at top level, so `rie-bench --help` does not load torch.
"""
