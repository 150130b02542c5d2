"""`python -m annotation_app ...` is `refcoco-edit app ...`."""

import sys

from refcoco_edit.cli import build_parser, run_cli

if __name__ == "__main__":
    sys.exit(run_cli(build_parser({"app": "refcoco_edit.commands.app"}, prog="python -m annotation_app"),
                     ["app", *sys.argv[1:]]))
