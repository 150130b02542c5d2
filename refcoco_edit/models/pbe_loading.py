"""Loading a Paint-by-Example pipeline despite diffusers' broken `model_index.json` handling.

Why this exists (diffusers 0.42.1): `PaintByExampleImageEncoder` now lives in
`diffusers.pipelines.deprecated.paint_by_example`, which is neither a top-level diffusers class nor a
`diffusers.pipelines.<name>` attribute. So

- `save_pretrained` records the encoder as `["diffusers", "PaintByExampleImageEncoder"]`, and
  `from_pretrained` on that folder fails with
  "ValueError: `diffusers` has no class `PaintByExampleImageEncoder`";
- the Hub checkpoint (saved when the pipeline lived in `diffusers.pipelines.paint_by_example`) names it
  `["paint_by_example", "PaintByExampleImageEncoder"]`, which now fails with "paint_by_example is not one
  of the libraries Diffusers can load components from" (and `download` refuses such a repo too);
- passing `image_encoder=` to `from_pretrained` does not help: diffusers still resolves the class that
  `model_index.json` names in order to type-check the passed object, and fails the same way.

`load_paint_by_example` therefore loads the encoder itself (with its `CLIPVisionConfig`) and lets
diffusers load everything else from a throw-away view of the folder: symbolic links to the component
folders plus a copy of `model_index.json` without the encoder entry. The user's folder is never changed.
`fix_model_index` rewrites a folder *we* saved so that it names the encoder the way the Hub checkpoint
does, so the tiny model and the real one go through the same code.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from refcoco_edit.errors import ModelNotAvailableError

logger = logging.getLogger(__name__)

ENCODER = "image_encoder"
ENCODER_ENTRY = ["paint_by_example", "PaintByExampleImageEncoder"]  # as in Fantasy-Studio/Paint-by-Example
# Files worth fetching from a Hub repo (configs, tokenizer/processor files, weights).
HUB_ALLOW_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors", "*/*.bin"]
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")


def paint_by_example_encoder_class():
    """`PaintByExampleImageEncoder`, wherever this diffusers version keeps it."""
    for module in (
        "diffusers.pipelines.deprecated.paint_by_example.image_encoder",
        "diffusers.pipelines.paint_by_example.image_encoder",
        "diffusers.pipelines.deprecated.paint_by_example",
        "diffusers.pipelines.paint_by_example",
    ):
        try:
            return importlib.import_module(module).PaintByExampleImageEncoder
        except (ImportError, AttributeError):
            continue
    import diffusers

    cls = getattr(diffusers, "PaintByExampleImageEncoder", None)
    if cls is None:
        raise ModelNotAvailableError(f"diffusers {diffusers.__version__} has no PaintByExampleImageEncoder")
    return cls


def fix_model_index(folder: str | os.PathLike) -> None:
    """Make a folder written by `PaintByExamplePipeline.save_pretrained` name its encoder like the Hub
    checkpoint does (and name the feature extractor by its public class)."""
    path = Path(folder) / "model_index.json"
    index = json.loads(path.read_text(encoding="utf-8"))
    index[ENCODER] = list(ENCODER_ENTRY)
    fe = index.get("feature_extractor")
    # transformers 5 without torchvision saves its PIL fallback class; the public name loads the same.
    if isinstance(fe, list) and fe[:1] == ["transformers"] and str(fe[1]).endswith("ImageProcessorPil"):
        index["feature_extractor"] = ["transformers", str(fe[1])[: -len("Pil")]]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_image_encoder(folder: str | os.PathLike, dtype: Any = None):
    """The Paint-by-Example image encoder of a local pipeline folder.

    The encoder's config.json is a `clip_vision_model` config; reading it as such (rather than letting
    `CLIPPreTrainedModel` read it as a full `CLIPConfig`) keeps its sizes exactly as saved.
    """
    from transformers import CLIPVisionConfig

    sub = Path(folder) / ENCODER
    config = CLIPVisionConfig.from_pretrained(sub)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return paint_by_example_encoder_class().from_pretrained(sub, config=config, **kwargs)


def load_paint_by_example(path_or_id: str | os.PathLike, **kwargs: Any):
    """`PaintByExamplePipeline.from_pretrained` that works for our saved folders and Hub-style ones.

    `path_or_id` is a local pipeline folder or a Hub repo id (fetched with `snapshot_download`;
    `local_files_only`, `cache_dir`, `revision`, `token` are honoured). Other keyword arguments go to
    `from_pretrained` (`torch_dtype`, `safety_checker=None`, ...). Missing files raise OSError, as
    `from_pretrained` does.
    """
    from diffusers import PaintByExamplePipeline

    folder = _local_folder(path_or_id, kwargs)
    for key in _HUB_KWARGS:
        kwargs.pop(key, None)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise OSError(f"{folder} has no model_index.json: not a diffusers pipeline folder")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if ENCODER not in kwargs:
        kwargs[ENCODER] = load_image_encoder(folder, dtype=kwargs.get("torch_dtype"))
    index.pop(ENCODER, None)
    with tempfile.TemporaryDirectory(prefix="pbe-view-") as tmp:
        view = Path(tmp)
        for child in folder.iterdir():
            if child.name != "model_index.json" and child.name != ENCODER:
                os.symlink(child.resolve(), view / child.name, target_is_directory=child.is_dir())
        (view / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
        pipe = PaintByExamplePipeline.from_pretrained(view, **kwargs)
    # Keep the origin visible, as from_pretrained would have recorded it.
    pipe.register_to_config(_name_or_path=str(path_or_id))
    return pipe


def _local_folder(path_or_id: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if os.path.isabs(str(path_or_id)) or str(path_or_id).startswith((".", "~")) or str(path_or_id).count("/") != 1:
        raise OSError(f"Paint-by-Example folder {path_or_id} does not exist")
    from huggingface_hub import snapshot_download

    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    # The safety checker is a 1.2 GB CLIP model: skip it when the caller turns it off.
    ignore = ["safety_checker/*"] if "safety_checker" in kwargs and kwargs["safety_checker"] is None else None
    folder = snapshot_download(
        str(path_or_id), allow_patterns=HUB_ALLOW_PATTERNS, ignore_patterns=ignore, **hub_kwargs
    )
    return Path(folder)
