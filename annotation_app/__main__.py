"""`python -m annotation_app ...` is `refcoco-edit app ...`."""

import sys

from refcoco_edit.commands.parser import make_parser, run_cli

PROG = "python -m annotation_app"


class _NamedAfterModule:
    """The subparsers action, handing `register` parsers named `python -m annotation_app` (not
    `python -m annotation_app app`), so that usage and errors show the command the user typed."""

    def __init__(self, sub) -> None:
        self._sub = sub

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("prog", PROG)
        return self._sub.add_parser(name, **kwargs)


def main(argv=None) -> int:
    from refcoco_edit.commands import app

    parser = make_parser({}, PROG, "Serve the annotation app, or manage its users and user study.")
    sub = parser.add_subparsers(dest="command")
    app.register(_NamedAfterModule(sub)).set_defaults(_run=app.run)
    return run_cli(parser, ["app", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
