"""Where the toolkit keeps things on a user's machine, read from the environment in one place.

`$REFCOCO_EDIT_CACHE` (default `~/.cache/refcoco-edit`) holds tiny models, sample datasets and the LLM
answer cache; `$REFCOCO_EDIT_CONFIG` (default `~/.config/refcoco-edit/models.yaml`) maps model names
to weights. Only the standard library is imported: the CLIs read this at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "REFCOCO_EDIT_CONFIG"
CACHE_ENV = "REFCOCO_EDIT_CACHE"
DEFAULT_CONFIG = Path("~/.config/refcoco-edit/models.yaml")
DEFAULT_CACHE = Path("~/.cache/refcoco-edit")


def cache_dir() -> Path:
    """`$REFCOCO_EDIT_CACHE` or `~/.cache/refcoco-edit`; tiny models live in `<cache>/models/`."""
    value = os.environ.get(CACHE_ENV)
    return (Path(value) if value else DEFAULT_CACHE).expanduser().absolute()


def config_path() -> Path:
    """The models config file: `$REFCOCO_EDIT_CONFIG` or `~/.config/refcoco-edit/models.yaml`."""
    value = os.environ.get(CONFIG_ENV)
    return (Path(value) if value else DEFAULT_CONFIG).expanduser().absolute()
