"""What a run records about where its numbers came from: the dataset's content hash, the package
versions, the git state, the accelerator, and whether the evaluated model was trained on the pictures it
is evaluated on.

The dataset fingerprint hashes the stored bytes of the selected samples (not a path or a Hub id), so
two runs with the same fingerprint scored the same samples whatever copy they read.

Contamination (`training_overlap`): a checkpoint written by `referdiffusion train` holds
`training_manifest.json`, the ids and content hashes of the pictures its stages trained on
(`referdiffusion.train.manifest`). The run compares it with the evaluation samples' pictures (ids from
the `image_id` column; hashes of the decoded source images, one decode per picture, the same
`picture_hash` rule) and records the overlap. It also compares the image protocol the model was trained
at with the run's working size.
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


def training_overlap(method_config: dict[str, Any], selection: Any, size: int | None) -> dict[str, Any] | None:
    """What results.json records under `contamination` for a method whose model is a checkpoint folder:
    the overlap of its training manifest with the evaluation pictures, `checked: false` for a
    ReferDiffusion checkpoint without a manifest, None for other methods."""
    # a resolver name (`refshapes-ip2p`) is recorded beside the local folder it resolved to
    model = method_config.get("model_folder") or method_config.get("model")
    if not isinstance(model, str) or not model:
        return None
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    from referdiffusion.train.manifest import MANIFEST, overlap, picture_hashes, read_manifest, samples_per_picture

    manifest = read_manifest(folder)
    if manifest is None:
        if not (folder / "rem").is_dir():  # not a ReferDiffusion checkpoint: nothing is known about its training
            return None
        return {"checked": False, "reason": f"{folder} has no {MANIFEST} (not written by `referdiffusion train`)"}
    dataset = selection.dataset
    evaluation, no_id = picture_hashes(dataset)
    counts = samples_per_picture(dataset["image_id"]) if "image_id" in dataset.column_names else {}
    record: dict[str, Any] = {"checked": True, "manifest": str((folder / MANIFEST).resolve()),
                              **overlap(manifest, evaluation, counts)}
    if no_id:
        record["samples_without_image_id"] = no_id
    trained = manifest.get("preprocess") or {}
    record["protocol"] = {"trained": trained, "evaluated": {"resize": "aspect", "size": size}}
    record["protocol"]["same"] = trained.get("resize") == "aspect" and trained.get("size") == size
    return record


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
