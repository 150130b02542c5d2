"""`referdiffusion`: initialise, train and run the ReferDiffusion model.

Subcommands follow refcoco_edit.commands.parser's contract (one module each, light imports at top level).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from refcoco_edit.commands.parser import make_parser, run_cli

COMMANDS: dict[str, str] = {
    "init": "referdiffusion.commands.init",
    "edit": "referdiffusion.commands.edit",
    "train": "referdiffusion.commands.train",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        COMMANDS, prog="referdiffusion",
        description="ReferDiffusion: InstructPix2Pix + Region-Embedder Module for referring image editing.")
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
