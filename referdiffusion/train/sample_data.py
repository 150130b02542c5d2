"""`sample:synth` and `sample:edits`: training data made once from the bundled RefShapes sample.

So that `referdiffusion train --config tiny` runs with nothing prepared, a stage's `dataset` may name:

- `sample:synth`: stage-1 data, `refcoco-edit synth --refcoco sample` (train refs, seed 0; both prompt
  styles recorded, the `mask` one in the prompt column);
- `sample:edits`: stage-2 data, RefShapes' ground-truth edits built into a store and exported, as
  `refcoco-edit build --refcoco sample --pipelines synthetic --auto-accept oracle` then
  `refcoco-edit export`.

Each is written once into `<cache>/datasets/` (the cache of `refcoco_edit.settings.cache_dir()`) under a
file lock, in a temporary folder renamed into place, so a folder that exists is complete.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from refcoco_edit.errors import InputError
from refcoco_edit.io import build_once

log = logging.getLogger(__name__)

SAMPLE_DATA_VERSION = "v2"  # v2: stage-1 data of train refs only, both prompt styles
SAMPLE_DATASETS = ("sample:synth", "sample:edits")


def sample_folder(spec: str) -> Path:
    from refcoco_edit.settings import cache_dir

    kind = spec.split(":", 1)[1]
    return cache_dir() / "datasets" / f"refshapes-{kind}-{SAMPLE_DATA_VERSION}"


def _make_synth(out: Path) -> None:
    from refcoco_edit.dataset.synth import SynthConfig, synth_dataset
    from refcoco_edit.refer.reader import RefCOCO

    synth_dataset(RefCOCO.load("sample"), out, SynthConfig(seed=0))


def _make_edits(out: Path) -> None:
    from refcoco_edit.curation.build import BuildConfig, build
    from refcoco_edit.dataset.export import export_store
    from refcoco_edit.refer.reader import RefCOCO
    from refcoco_edit.store import Store

    with tempfile.TemporaryDirectory(prefix="refshapes-store-") as tmp:
        store_path = Path(tmp) / "store.db"
        cfg = BuildConfig(pipelines=("synthetic",), auto_accept="oracle").check()
        with Store.open(store_path) as store:
            build(RefCOCO.load("sample"), store, cfg, progress=False)
        export_store(store_path, out)


def materialize_sample_dataset(spec: str) -> Path:
    """The folder of `sample:synth` or `sample:edits`, made on first use."""
    if spec not in SAMPLE_DATASETS:
        raise InputError(f"unknown sample dataset {spec!r}; known: {', '.join(SAMPLE_DATASETS)}")
    dest = sample_folder(spec)

    def make(tmp: Path) -> None:
        log.info("making %s in %s (once)", spec, dest)
        (_make_synth if spec == "sample:synth" else _make_edits)(tmp)

    return build_once(dest, make)
