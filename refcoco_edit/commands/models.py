"""`refcoco-edit models`: where each model name resolves to, and from which setting."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    from refcoco_edit.models.resolver import CONFIG_ENV, ENV_PREFIX, add_model_argument

    p = sub.add_parser(
        "models",
        help="list model names and the folder or Hub id each resolves to",
        description=(
            "Resolution order: --model NAME=PATH_OR_HUB_ID, then the environment variable "
            f"{ENV_PREFIX}<NAME> (upper case, '-' -> '_'), then the YAML file ${CONFIG_ENV} "
            "(default ~/.config/refcoco-edit/models.yaml), then the built-in Hub id. "
            "tiny-* names are random-weight stand-ins built in the cache folder."
        ),
    )
    add_model_argument(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object name -> folder or Hub id (builds the tiny models on the way)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.errors import ModelNotAvailableError
    from refcoco_edit.models.resolver import list_models, model_names, parse_model_overrides, resolve

    overrides = parse_model_overrides(args.model_overrides)
    if args.json:
        from refcoco_edit.commands._common import print_json

        print_json(list_models(overrides))
        return 0
    rows = []
    for name in model_names():
        try:
            # Listing stays light: tiny models are shown where they will be built, not built.
            resolved = resolve(name, overrides, build=False)
            source = resolved.source
            if resolved.origin == "tiny" and not _exists(source):
                source += "  (built on first use)"
            rows.append((name, resolved.origin, source))
        except ModelNotAvailableError as exc:
            rows.append((name, "unavailable", str(exc)))
    width_name = max(len(r[0]) for r in rows)
    width_origin = min(40, max(len(r[1]) for r in rows))
    print(f"{'name':{width_name}s}  {'origin':{width_origin}s}  source")
    for name, origin, source in rows:
        print(f"{name:{width_name}s}  {origin:{width_origin}s}  {source}")
    return 0


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()
