"""Session-wide test settings. Kept light: nothing heavy is imported here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Persistent across runs (the tiny models are deterministic and versioned); .cache/ is git-ignored.
TEST_MODEL_CACHE = REPO_ROOT / ".cache" / "test-models"


def pytest_configure(config: pytest.Config) -> None:
    """Hermetic environment, set before any test module imports huggingface_hub (which reads
    HF_HUB_OFFLINE once, at import): no network retries, no analytics, no real API keys."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(var, None)


@pytest.fixture(scope="session")
def tiny_cache() -> Iterator[Path]:
    """Point REFCOCO_EDIT_CACHE at the persistent test cache, so tiny models are built once."""
    TEST_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("REFCOCO_EDIT_CACHE", str(TEST_MODEL_CACHE))
    try:
        yield TEST_MODEL_CACHE
    finally:
        patch.undo()
