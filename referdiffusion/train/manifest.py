"""The training manifest: which pictures a run trained on, so an evaluation can tell whether it saw them.

A run writes `training_manifest.json` into its output folder before the first step and copies it into
every checkpoint and `final/`, beside `model_index.json`. `rie-bench run` reads it from the checkpoint it
evaluates (`contamination`) and records in results.json which evaluation pictures the model was trained
on; the leaderboard marks such runs.

What counts as "seen": every row of every stage's dataset as the stage selects it (split, `max_samples`),
whether or not the sampler reached it before the run stopped. An evaluation picture in that set is a
leak even when few steps ran, so the manifest errs on the side of reporting.

Pictures are identified two ways:

- `image_id`: the dataset's picture id (COCO's for RefCOCO), from the `image_id` column;
- a content hash: `refcoco_edit.dataset.synth.picture_hash`, sha256 of the *decoded* RGB pixels (size,
  then bytes), so the same picture stored as JPEG, PNG or in parquet hashes the same. Stage-1 rows carry
  the hash of their untouched picture in `generation["image_sha256"]` (their stored images are covered,
  cropped and flipped), so no image is decoded for them; for other rows the source image of the first
  row of each picture is decoded once (RefCOCO-Edit's source image is the untouched picture).

A hash match catches a picture under another id (another dataset's copy); an id match catches a
picture whose hash is unknown on one side. Both are reported. An id match whose hashes are known on both
sides and differ is a different picture under the same number (two datasets that number their pictures
alike, as two RefShapes worlds made with different seeds do): it is listed under `same_id_other_pixels`
and not counted. A lossily re-encoded copy of a training picture lands in that list too, so look at it
when the evaluation data is a re-encoded copy of the training data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refcoco_edit.errors import DataError
from refcoco_edit.io import atomic_write_text, dumps

if TYPE_CHECKING:
    import datasets

    from referdiffusion.train.config import TrainConfig

log = logging.getLogger(__name__)

MANIFEST = "training_manifest.json"
MANIFEST_SCHEMA = "referdiffusion/training-manifest/v1"
HASH_RULE = ("sha256 of the decoded RGB pixels: '<width>x<height>:' then the bytes, row-major "
             "(refcoco_edit.dataset.synth.picture_hash)")


def picture_hashes(ds: datasets.Dataset) -> tuple[dict[int, str | None], int]:
    """({image_id: content hash or None}, rows without an image id) of a dataset's pictures.

    Stage-1 rows give the hash they recorded; other rows the hash of their decoded source image, one
    decode per picture. A stage-1 row without a recorded hash gives None (its stored source is not the
    picture)."""
    from refcoco_edit.dataset.io import decode_image
    from refcoco_edit.dataset.synth import picture_hash

    if "image_id" not in ds.column_names:
        return {}, len(ds)
    has_gen = "generation" in ds.column_names
    meta = ds.select_columns(["image_id"] + (["generation"] if has_gen else []))
    out: dict[int, str | None] = {}
    first_row: dict[int, int] = {}
    no_id = 0
    for index, row in enumerate(meta):
        image_id = row["image_id"]
        if image_id is None:
            no_id += 1
            continue
        image_id = int(image_id)
        if out.get(image_id) is not None:
            continue
        gen = _generation(row.get("generation")) if has_gen else {}
        if gen.get("stage") == 1:
            out[image_id] = gen.get("image_sha256") or out.get(image_id)
        else:
            out.setdefault(image_id, None)
            first_row.setdefault(image_id, index)
    sources = ds.select_columns(["source_image"])
    for image_id, index in first_row.items():
        if out.get(image_id) is None:
            image = decode_image(sources[index]["source_image"])
            out[image_id] = picture_hash(_rgb(image))
    return out, no_id


def _generation(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rgb(image: Any) -> Any:
    import numpy as np

    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def build_manifest(config: TrainConfig) -> dict[str, Any]:
    """The manifest of a run's stages (their datasets opened as the stages open them)."""
    from referdiffusion.train.data import open_dataset

    stages = []
    ids: dict[int, str | None] = {}
    for stage in config.stages:
        ds = open_dataset(stage.dataset, stage.split, stage.max_samples, allow_eval_splits=stage.allow_eval_splits)
        hashes, no_id = picture_hashes(ds)
        for image_id, digest in hashes.items():
            if ids.get(image_id) is None:
                ids[image_id] = digest
        stages.append({"name": stage.name, "dataset": stage.dataset, "split": stage.split,
                       "allow_eval_splits": stage.allow_eval_splits, "rows": len(ds), "pictures": len(hashes),
                       "rows_without_image_id": no_id, "image_ids": sorted(hashes)})
    return {
        "schema": MANIFEST_SCHEMA,
        "hash": HASH_RULE,
        "preprocess": {"resize": config.data.resize, "size": config.data.resolution},
        "stages": stages,
        "pictures": {str(k): v for k, v in sorted(ids.items())},
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_text(path, dumps(manifest, indent=1) + "\n")


def read_manifest(folder: Path | str) -> dict[str, Any] | None:
    """The manifest saved with a checkpoint folder, None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read training manifest {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise DataError(f"{path} is not a training manifest ({MANIFEST_SCHEMA})")
    return data


def trained_size(folder: Path | str, default: int | None = 512) -> int | None:
    """The longer side a checkpoint was trained at (its manifest's preprocessing), so that editing and
    evaluation feed it pictures of that size; `default` (the protocol's 512) without a manifest."""
    return manifest_size(read_manifest(folder), default)


def manifest_size(manifest: dict[str, Any] | None, default: int | None = 512) -> int | None:
    """`trained_size` of a manifest already read (None: no manifest)."""
    size = ((manifest or {}).get("preprocess") or {}).get("size")
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else default


def overlap(manifest: dict[str, Any], evaluation: dict[int, str | None],
            samples_per_picture: dict[int, int] | None = None) -> dict[str, Any]:
    """Which evaluation pictures ({image_id: hash}) the manifest's run trained on.

    `image_ids`: the evaluation pictures seen, by id or by content hash (sorted); `by_id` / `by_hash`: how
    each was found; `count`: how many; `samples`: evaluation samples on those pictures;
    `same_id_other_pixels`: ids shared with a training picture whose pixels differ (not counted)."""
    trained: dict[str, str | None] = manifest.get("pictures") or {}
    trained_hashes = {h for h in trained.values() if h}
    by_hash = sorted(i for i, h in evaluation.items() if h and h in trained_hashes)
    shared = [i for i in evaluation if str(i) in trained]
    other = sorted(i for i in shared if evaluation[i] and trained[str(i)] and evaluation[i] != trained[str(i)]
                   and i not in by_hash)
    by_id = sorted(i for i in shared if i not in other)
    seen = sorted(set(by_id) | set(by_hash))
    counts = samples_per_picture or {}
    return {"count": len(seen), "image_ids": seen, "by_id": by_id, "by_hash": by_hash, "same_id_other_pixels": other,
            "samples": sum(counts.get(i, 0) for i in seen), "evaluation_pictures": len(evaluation),
            "training_pictures": len(trained)}


def samples_per_picture(image_ids: Iterable[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for i in image_ids:
        if i is not None:
            out[int(i)] = out.get(int(i), 0) + 1
    return out
