"""Validation of a submission for `rie-bench score`: a folder of edited images named by sample id.

Rules, each broken one reported with the samples it concerns (all of them, then scoring refuses):
- every sample of the scored selection has exactly one output `<sample_id>.png` (also .jpg, .jpeg,
  .webp or .bmp, with a warning: lossy files add compression noise to the background metrics); ids
  with characters outside [A-Za-z0-9._-] are percent-encoded in file names (`folder.output_name`);
- each output is a file inside the folder (not a link to a file elsewhere), within the pixel limit
  (`refcoco_edit.imaging.files`, checked from the header before decoding), readable (not truncated:
  Pillow's checks pass and it decodes) and 8-bit RGB (no alpha, no grey, no palette);
- each output has the source's size, or the same aspect ratio within 10% (a model's working size,
  e.g. 512x384 for 640x480); such outputs are resized to the source's size at scoring (bicubic) and
  counted in the report.
Files that are not samples of the selection are ignored, with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.run.folder import OUTPUTS, output_name
from refcoco_edit.errors import DataError, InputError
from refcoco_edit.imaging.files import check_whole, inside

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
ASPECT_TOLERANCE = 0.10
MIN_SIDE = 8
MAX_LISTED = 30  # sample ids named per problem kind in messages


@dataclass
class ValidationReport:
    """What `validate_submission` found; `files` maps every valid sample id to its output file."""

    folder: Path
    expected: int
    files: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "expected": self.expected, "valid": len(self.files),
                "resized": len(self.resized), "problems": list(self.problems), "warnings": list(self.warnings)}


class SubmissionError(InputError):
    """The submission is not valid; `report.problems` lists why, sample by sample."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        lines = "\n".join(f"  - {p}" for p in report.problems)
        super().__init__(f"submission {report.folder} is not valid ({len(report.problems)} problem(s); "
                         f"{len(report.files)} of {report.expected} outputs are fine):\n{lines}")


def _listed(ids: list[str]) -> str:
    more = f" ... and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
    return ", ".join(ids[:MAX_LISTED]) + more


def prediction_folder(path: Path) -> Path:
    """The folder holding the images: `path`, or `path/outputs` for a run folder."""
    if not path.is_dir():
        raise InputError(f"--pred {path} is not a folder")
    inner = path / OUTPUTS
    if inner.is_dir():
        inside(path, OUTPUTS, what=f"--pred {path}")  # a link to a folder elsewhere is refused
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file())
    return inner if inner.is_dir() and not has_images else path


def check_image(path: Path, size: tuple[int, int]) -> tuple[str | None, bool]:
    """(problem or None, needs resizing) for one output against its source's (width, height).

    The size is checked against the pixel limit from the header, before any pixel is read."""
    try:
        mode, (w, h) = check_whole(path, what="output")
    except DataError as exc:  # over the pixel limit, not an image, or not decoding to the end
        return f"cannot be read ({exc})", False
    if mode != "RGB":
        what = "has an alpha channel" if "A" in mode else "is not 8-bit RGB"
        return f"{what} (mode {mode}); save it as an RGB image", False
    sw, sh = size
    if (w, h) == (sw, sh):
        return None, False
    if min(w, h) < MIN_SIDE:
        return f"is {w}x{h}, too small to score (the source is {sw}x{sh})", False
    sx, sy = w / sw, h / sh
    if abs(sx / sy - 1.0) > ASPECT_TOLERANCE:
        return (f"is {w}x{h} but the source is {sw}x{sh}: the aspect ratio differs by "
                f"{abs(sx / sy - 1.0):.0%} (more than {ASPECT_TOLERANCE:.0%}); resize it to the source's size"), False
    return None, True


def validate_submission(folder: Path | str, expected: Mapping[str, tuple[int, int]]) -> ValidationReport:
    """Check `folder` against {sample_id: (width, height) of its source}; see the module docstring."""
    folder = Path(folder)
    report = ValidationReport(folder=folder, expected=len(expected))
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            by_stem.setdefault(path.stem, []).append(path)
    missing: list[str] = []
    ambiguous: list[str] = []
    lossy: list[str] = []
    bad: list[str] = []
    names = {output_name(sid): sid for sid in expected}
    for sid, size in expected.items():
        found = by_stem.get(output_name(sid), [])
        if not found:
            missing.append(sid)
            continue
        if len(found) > 1:
            ambiguous.append(f"{sid} ({', '.join(p.name for p in found)})")
            continue
        path = found[0]
        try:
            inside(folder, path.name, what=f"sample {sid}")
        except DataError as exc:
            bad.append(f"{path.name}: {exc}")
            continue
        problem, resize = check_image(path, size)
        if problem:
            bad.append(f"{path.name}: {problem}")
            continue
        if resize:
            report.resized.append(sid)
        if path.suffix.lower() in LOSSY_SUFFIXES:
            lossy.append(sid)
        report.files[sid] = path
    if missing:
        report.problems.append(f"no output for {len(missing)} sample(s): {_listed(missing)} "
                               f"(expected files named <sample_id>.png)")
    if ambiguous:
        report.problems.append(f"several outputs for {len(ambiguous)} sample(s): {_listed(ambiguous)}")
    report.problems.extend(bad[:MAX_LISTED])
    if len(bad) > MAX_LISTED:
        report.problems.append(f"... and {len(bad) - MAX_LISTED} more unusable outputs")
    extra = sorted(stem for stem in by_stem if stem not in names)
    if extra:
        report.warnings.append(f"{len(extra)} file(s) are not samples of the dataset and are ignored: {_listed(extra)}")
    if lossy:
        report.warnings.append(f"{len(lossy)} output(s) are lossy (JPEG/WebP): compression noise counts against the "
                               "background metrics")
    if report.resized:
        report.warnings.append(f"{len(report.resized)} output(s) are not at the source's size and are resized "
                               "(bicubic) for scoring")
    return report
