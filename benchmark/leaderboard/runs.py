"""The runs a leaderboard compares: each run folder's results.json, its samples.jsonl rows and outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.run.folder import OUTPUTS, SAMPLES, iter_results, output_name, read_jsonl
from refcoco_edit.errors import InputError


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
            self._rows = read_jsonl(self.folder / SAMPLES)
        return self._rows

    def output_path(self, row: dict[str, Any]) -> Path | None:
        """The output file of a samples.jsonl row (also when the run folder was moved)."""
        recorded = Path(str(row.get("output", "")))
        for path in (recorded, self.folder / OUTPUTS / recorded.name,
                     self.folder / OUTPUTS / f"{output_name(str(row.get('sample_id')))}.png"):
            if str(path) and path.is_file():
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
