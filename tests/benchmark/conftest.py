"""Fixtures of the benchmark tests: a small RefShapes RefCOCO-Edit (built once per session through the
build and export code, as `--dataset sample` builds the full one) and one torch thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# refs built for the test dataset: 3 edit types each (replace, remove, attribute) -> 6 samples
DATASET_REFS = 2


@pytest.fixture(scope="session")
def bench_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmark.runner import ensure_sample_dataset

    return ensure_sample_dataset(tmp_path_factory.mktemp("bench") / "refshapes-edit", limit=DATASET_REFS)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread (the test machine's cores are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
