"""The image grid: the same samples across runs (rows: samples; columns: the source with the
referred object outlined, when the dataset can be read, then each run's output).

Run folders may come from anyone. Outputs are read only inside their run folder and within the pixel
limit; the source column comes from `--dataset`, or from the dataset the first run names only when
that is a local folder holding exactly the samples the run scored (never a download, never a folder
the run merely names).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.leaderboard.runs import RunEntry
from benchmark.run.dataset import Selection, open_selection
from refcoco_edit.errors import DataError
from refcoco_edit.imaging.files import open_image

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_GRID = 4
DEFAULT_THUMB = 256


def choose_grid_samples(runs: Sequence[RunEntry], k: int = DEFAULT_GRID) -> list[str]:
    """Up to `k` sample ids whose outputs every run has, taking the edit types in turn (first run's order)."""
    if k <= 0 or not runs:
        return []
    have = []
    for run in runs:
        have.append({str(r["sample_id"]) for r in run.rows() if run.output_path(r) is not None})
    common = set.intersection(*have) if have else set()
    by_type: dict[str, list[str]] = {}
    for row in runs[0].rows():
        sid = str(row["sample_id"])
        if sid in common:
            by_type.setdefault(str(row.get("edit_type", "")), []).append(sid)
    chosen: list[str] = []
    queues = list(by_type.values())
    while len(chosen) < k and any(queues):
        for queue in queues:
            if queue and len(chosen) < k:
                chosen.append(queue.pop(0))
    return chosen


def _recorded_selection(run: RunEntry) -> Selection | None:
    """The dataset the first run recorded, when it is a local folder that holds exactly the samples the
    run scored (same fingerprint). A run folder may come from anyone: it never makes the leaderboard
    download a dataset, nor show the pictures of a folder it merely names."""
    recorded = run.results.get("dataset") or {}
    source, split, count = recorded.get("source"), recorded.get("split"), recorded.get("samples")
    if not source:
        return None
    if not isinstance(source, str) or not Path(source).is_dir():
        logger.warning("sources for the grid not shown: run %s names dataset %r, which is not a local folder; "
                       "pass --dataset", run.folder, source)
        return None
    selection = open_selection(source, split if isinstance(split, str) else None,
                               count if isinstance(count, int) and count > 0 else None)
    if selection.fingerprint() != run.fingerprint:
        logger.warning("sources for the grid not shown: dataset %s does not hold the samples run %s scored "
                       "(their fingerprints differ); pass --dataset", source, run.folder)
        return None
    return selection


def _source_images(runs: Sequence[RunEntry], ids: Sequence[str], dataset: str | None) -> dict[str, Image.Image]:
    """sample id -> the source with the referred object outlined, from the dataset when it can be read:
    `dataset` (the user's choice), else the one the first run recorded (`_recorded_selection`)."""
    from refcoco_edit.imaging.viz import overlay_mask

    source = dataset or (runs[0].results.get("dataset") or {}).get("source")
    if not source:
        return {}
    try:
        selection = open_selection(str(dataset)) if dataset else _recorded_selection(runs[0])
    except Exception as exc:  # noqa: BLE001 - the grid is shown without sources, with a note
        logger.warning("sources for the grid not shown: dataset %s cannot be read (%s)", source, exc)
        return {}
    if selection is None:
        return {}
    where = {sid: i for i, sid in enumerate(selection.ids)}
    images = {}
    for sid in ids:
        if sid in where:
            try:
                sample = selection.sample(where[sid])
            except DataError as exc:  # e.g. over the pixel limit: that source is left out, with a note
                logger.warning("source of sample %s not shown: %s", sid, exc)
                continue
            images[sid] = overlay_mask(sample.source_image, sample.source_mask)
    return images


def _thumb(image: Image.Image, size: int) -> Image.Image:
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def grid_cells(runs: Sequence[RunEntry], ids: Sequence[str], *, dataset: str | None = None,
               thumb: int = DEFAULT_THUMB) -> tuple[list[str], list[tuple[str, str, list[Image.Image | None]]]]:
    """(column labels, [(sample id, prompt, [images or None])]): the source column first when available.

    Outputs are read inside their run folder only (`RunEntry.output_path`) and within the pixel limit
    (`open_image`); an output that breaks either rule stops the grid with a message naming it."""
    sources = _source_images(runs, ids, dataset)
    labels = (["source"] if sources else []) + [r.label for r in runs]
    index = [{str(row["sample_id"]): row for row in run.rows()} for run in runs]
    rows = []
    for sid in ids:
        first = index[0].get(sid, {})
        prompt = str(first.get("prompt", ""))
        edit_type = str(first.get("edit_type", ""))
        images: list[Image.Image | None] = [_thumb(sources[sid], thumb) if sid in sources else None] if sources else []
        for run, rows_by_id in zip(runs, index, strict=True):
            path = run.output_path(rows_by_id[sid]) if sid in rows_by_id else None
            if path is None:
                images.append(None)
                continue
            with open_image(path, what=f"run {run.folder}, sample {sid}: output {path.name}", mode=None) as im:
                images.append(_thumb(im, thumb))
        rows.append((sid, f"{prompt} ({edit_type})" if edit_type else prompt, images))
    return labels, rows


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_grid_png(runs: Sequence[RunEntry], ids: Sequence[str], *, dataset: str | None = None,
                    thumb: int = DEFAULT_THUMB) -> Image.Image:
    """The grid as one PIL image (rows: samples, columns: source then runs)."""
    from refcoco_edit.imaging.viz import image_grid

    labels, rows = grid_cells(runs, ids, dataset=dataset, thumb=thumb)
    return image_grid([images for _, _, images in rows], col_labels=labels, cell=thumb)
