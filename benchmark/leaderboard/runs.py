"""The runs a leaderboard compares: each run folder's results.json, its samples.jsonl rows and outputs.

Run folders may come from anyone, so the leaderboard reads only files inside each folder: an output
that samples.jsonl names is found inside the folder, or the leaderboard is refused with a message
naming the run and the sample (never `../../etc/passwd`, an absolute path elsewhere or a symlink out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.run.folder import OUTPUTS, SAMPLES, iter_results, output_name, read_jsonl
from benchmark.run.submission import IMAGE_SUFFIXES
from refcoco_edit.errors import DataError, InputError
from refcoco_edit.imaging.files import OutsideFolderError, inside


@dataclass
class RunEntry:
    """One run folder and its results.json."""

    folder: Path
    results: dict[str, Any]
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        method = self.results.get("method") or {}
        return str(method.get("label") or method.get("name") or self.folder.name)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.results.get("metrics") or {}

    @property
    def fingerprint(self) -> str | None:
        return (self.results.get("dataset") or {}).get("fingerprint")

    @property
    def samples(self) -> Any:
        """The number of samples scored, as recorded ("" when not recorded)."""
        return (self.results.get("dataset") or {}).get("samples", "")

    def rows(self) -> list[dict[str, Any]]:
        """samples.jsonl rows (empty when the file is missing)."""
        if self._rows is None:
            rows = read_jsonl(inside(self.folder, SAMPLES, what=f"run {self.folder}"))
            for i, row in enumerate(rows, 1):
                if not isinstance(row, dict) or "sample_id" not in row:
                    raise DataError(f"run {self.folder}: line {i} of {SAMPLES} is not a sample row")
            self._rows = rows
        return self._rows

    def output_path(self, row: dict[str, Any]) -> Path | None:
        """The output file of a samples.jsonl row, always inside the run folder; None when it is missing.

        The recorded path is used when it lies inside the folder. A path elsewhere that ends in the
        sample's own file name is the run's old place (the folder was moved or copied, or the path was
        recorded relative to another working folder): the file of that name in `outputs/` is used
        instead, the recorded one is never read. Any other path, and any link out of the folder,
        raises `OutsideFolderError`.
        """
        sid = str(row.get("sample_id"))
        what = f"run {self.folder}, sample {sid}"
        own = f"{output_name(sid)}.png"
        recorded = row.get("output")
        candidates = []
        if recorded not in (None, ""):
            try:
                candidates.append(inside(self.folder, recorded, what=what))
            except OutsideFolderError:
                name = Path(str(recorded))
                if name.stem != output_name(sid) or name.suffix.lower() not in IMAGE_SUFFIXES:
                    raise
                candidates.append(inside(self.folder, Path(OUTPUTS) / name.name, what=what))
        candidates.append(inside(self.folder, Path(OUTPUTS) / own, what=what))
        for path in candidates:
            if path.is_file():
                return path
        return None


def load_runs(paths: Sequence[Path | str]) -> list[RunEntry]:
    """The runs of run folders (or results.json files), their repeated labels told apart."""
    if not paths:
        raise InputError("no run folder given")
    runs = [RunEntry(folder, data) for folder, data in iter_results(paths)]
    # repeated labels get the folder's name, then a number, so that rows and grid columns can be told apart
    for suffix in (lambda i, r: f" [{r.folder.name}]", lambda i, r: f" #{i + 1}"):
        labels = [r.label for r in runs]
        for i, run in enumerate(runs):
            if labels.count(labels[i]) > 1:
                run.results.setdefault("method", {})["label"] = labels[i] + suffix(i, run)
    return runs
