"""What a run records about where its numbers came from: the dataset's content hash, the package
versions, the git state and the accelerator.

The dataset fingerprint hashes the stored bytes of the selected samples (not a path or a Hub id), so
two runs with the same fingerprint scored the same samples whatever copy they read.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

_PACKAGES = ("refcoco-edit", "torch", "diffusers", "transformers", "accelerate", "datasets", "numpy", "pillow",
             "safetensors")
# Sample fields hashed into the dataset fingerprint (images and masks as their stored bytes).
_FINGERPRINT_COLUMNS = ("sample_id", "prompt", "referring_text", "edit_text", "edit_type", "pipeline",
                        "source_image", "edited_image", "source_mask", "edit_mask")


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """sha256 over the samples' ids, texts, labels and stored image/mask bytes, in order."""
    digest = hashlib.sha256()
    columns = [c for c in _FINGERPRINT_COLUMNS if c in dataset.column_names]
    table = dataset.select_columns(columns).with_format("arrow")
    for batch in table.iter(batch_size=64):
        for name in columns:
            column = batch.column(name)
            if hasattr(column.type, "get_field_index") and column.type.get_field_index("bytes") >= 0:
                values = column.combine_chunks().field("bytes").to_pylist() if hasattr(
                    column, "combine_chunks") else column.field("bytes").to_pylist()
            else:
                values = column.to_pylist()
            for value in values:
                blob = value if isinstance(value, bytes) else str(value).encode("utf-8")
                digest.update(len(blob).to_bytes(8, "big"))
                digest.update(blob)
    return digest.hexdigest()


def git_info(folder: Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout holding this package, or None outside one."""
    folder = folder or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def environment_info() -> dict[str, Any]:
    """Python, platform, package versions, git state and accelerator of this process."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "packages": packages, "git": git_info()}
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = bool(torch.cuda.is_available())
        env["cuda"] = cuda
        if cuda:
            env["gpu"] = torch.cuda.get_device_name(0)
    return env
