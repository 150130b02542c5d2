"""Fixtures of the benchmark tests: a small RefShapes RefCOCO-Edit (built once per session through the
build and export code, as `--dataset sample` builds the full one) and one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torch_threads import one_torch_thread

# refs built for the test dataset: 3 edit types each (replace, remove, attribute) -> 6 samples
DATASET_REFS = 2


@pytest.fixture(scope="session")
def bench_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmark.run.dataset import ensure_sample_dataset

    return ensure_sample_dataset(tmp_path_factory.mktemp("bench") / "refshapes-edit", limit=DATASET_REFS)


one_thread = pytest.fixture(one_torch_thread)
