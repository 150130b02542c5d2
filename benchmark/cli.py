"""`rie-bench`: score referring-image-editing methods on RefCOCO-Edit.

Subcommands follow refcoco_edit.commands.parser's contract (one module each, light imports at top level).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from refcoco_edit.commands.parser import make_parser, run_cli

COMMANDS: dict[str, str] = {
    "run": "benchmark.commands.run",
    "score": "benchmark.commands.score",
    "leaderboard": "benchmark.commands.leaderboard",
    "list": "benchmark.commands.list",
    "convert": "benchmark.commands.convert",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(COMMANDS, prog="rie-bench",
                          description="Run and score referring-image-editing methods; build the leaderboard.")
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
