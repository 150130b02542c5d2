"""One module per `refcoco-edit` subcommand: `register(subparsers)` and `run(args) -> int`."""
