"""The study's RefShapes as a RefCOCO-Edit dataset folder at 128 x 96, for `referdiffusion train` and `rie-bench run`.

The trainer and the benchmark read the RefCOCO-Edit format (`refcoco-edit export`: parquet shards, a card,
a `save_to_disk` copy), so the study's rows and its evaluation go through the same code as real data.
Rows are made from `data.RefShapesStudy` at the study's size (box-averaged pixels, so the background
outside M_e stays byte-identical) and written by `refcoco_edit.dataset.export.DatasetWriter`, which
validates each row and checks the background invariant, exactly as an export from the store does.

Masks in the format are binary: M_e keeps the "any" rule; M, area-averaged in the study, is kept where the
object covers at least half of a pixel (every pixel it touches, for an object too thin to cover half of
any). Prompts are the study's (`RefShapesStudy.prompt`: a referring expression and a template drawn from
(seed, edit id)), so a sample's prompt is the same in the latent-cache code and in the exported rows.

Splits keep RefShapes' names (train, val, testA; testB stays in reserve), so `rie-bench run --split testA`
is the study's test split and `referdiffusion train` reads `train` without an eval-split override.

    python -m referdiffusion.study.export --data /work/study-data/refshapes --out DIR [--roles train val test]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from refcoco_edit.errors import InputError
from referdiffusion.study.data import SPLITS, RefShapesStudy

if TYPE_CHECKING:
    from refcoco_edit.dataset.export import ExportSummary
    from refcoco_edit.schema import Sample

log = logging.getLogger(__name__)

DEFAULT_ROLES = ("train", "val", "test")
OBJECT_MASK_THRESHOLD = 0.5  # share of a pixel the referred object must cover to be in the binary M


def binary_object_mask(area: np.ndarray, threshold: float = OBJECT_MASK_THRESHOLD) -> np.ndarray:
    """The area-averaged M as 0/1 uint8: pixels covered at least `threshold`; any covered pixel when that is empty."""
    m = area >= threshold
    if not m.any():
        m = area > 0
    return m.astype(np.uint8)


def study_sample(study: RefShapesStudy, record, prompt_seed: int = 0,
                 source: np.ndarray | None = None) -> Sample:
    """One exported row: the edit at the study's size, with its prompt, masks and provenance."""
    from PIL import Image

    from refcoco_edit.schema import Sample

    src = study.source(record.image_id) if source is None else source
    edited = study.edited(record)
    prompt = study.prompt(record, prompt_seed)
    return Sample(
        sample_id=f"refshapes-{record.edit_id}", image_id=record.image_id, ref_id=record.ref_id,
        ann_id=record.ann_id, split=record.split,
        source_image=Image.fromarray(src), edited_image=Image.fromarray(edited),
        source_mask=binary_object_mask(study.object_mask(record)),
        edit_mask=study.edit_mask(record).astype(np.uint8),
        prompt=prompt.prompt, referring_text=prompt.referring_text, edit_text=prompt.edit_text,
        referring_spans=[list(s) for s in prompt.referring_spans], edit_spans=[list(s) for s in prompt.edit_spans],
        edit_type=record.edit_type, target=record.target, pipeline="synthetic",
        generation={"generator": "refshapes", "edit_id": record.edit_id, "prompt_seed": prompt_seed,
                    "size": [study.size[1], study.size[0]], "resize": "box mean (M area >= 0.5, M_e any)",
                    "refshapes_seed": study.seed},
        annotator="refshapes", status="accepted",
    )


def iter_samples(study: RefShapesStudy, roles: Sequence[str], limit: int | None = None,
                 prompt_seed: int = 0) -> Iterator[Sample]:
    """The rows of the given roles in role order, edit-id order within each (at most `limit` per role)."""
    for role in roles:
        records = study.edits(role)
        if limit is not None:
            records = records[:limit]
        last: tuple[int, np.ndarray | None] = (-1, None)
        for rec in records:
            if rec.image_id != last[0]:
                last = (rec.image_id, study.source(rec.image_id))
            yield study_sample(study, rec, prompt_seed, source=last[1])


def export_study(data_root: Path | str, out: Path | str, roles: Sequence[str] = DEFAULT_ROLES, *,
                 limit: int | None = None, prompt_seed: int = 0, overwrite: bool = False,
                 progress: bool = False) -> ExportSummary:
    """Write the roles' edits as a RefCOCO-Edit folder at `out` (all or nothing, as `refcoco-edit export`)."""
    from refcoco_edit.dataset.card import CardInfo
    from refcoco_edit.dataset.export import DatasetWriter

    unknown = [r for r in roles if r not in SPLITS]
    if unknown or not roles:
        raise InputError(f"unknown study role(s) {', '.join(unknown) or '(none)'}; known: {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    study = RefShapesStudy(data_root)
    card = CardInfo(
        pretty_name="RefShapes at 128x96 (RefCOCO-Edit format)",
        summary="Synthetic referring edits with exact reference outputs (replace, remove, recolour), at 128 x 96.",
        source=f"RefShapes seed {study.seed}, roles {', '.join(roles)}"
               + (f", first {limit} edits per role" if limit else ""),
        extra_tags=["synthetic", "refshapes"],
    )
    total = sum(min(len(study.edits(r)), limit or 10**12) for r in roles)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="export", unit="row", disable=None)
    with DatasetWriter(out, overwrite=overwrite, card=card) as writer:
        for sample in iter_samples(study, roles, limit, prompt_seed):
            writer.add(sample)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return writer.finish()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.export", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="the RefShapes folder (`refcoco-edit sample --out`)")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument("--roles", nargs="+", default=list(DEFAULT_ROLES), choices=list(SPLITS))
    p.add_argument("--limit", type=int, default=None, help="at most N edits per role")
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    summary = export_study(args.data, args.out, args.roles, limit=args.limit, prompt_seed=args.prompt_seed,
                           overwrite=args.overwrite, progress=True)
    print(json.dumps({**summary.to_dict(), "wall_s": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
