"""Splitting a run's samples over processes and gathering their scores.

Under `accelerate launch` (WORLD_SIZE > 1), process i of n takes samples i, i+n, ... (also
`shard=(i, n)` by hand, e.g. one machine each). Each process generates and scores its samples and
writes its score file; the main process waits for the others and merges (by hand: whichever process
finds all n files, stamped with the same run token, merges). Means and CIs are computed from the
gathered per-sample values, so they equal a single-process run's.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.run.folder import SHARDS, read_jsonl, write_jsonl
from refcoco_edit.errors import InputError
from refcoco_edit.io import atomic_write_text, dumps


@dataclass
class ProcessLayout:
    """Which share of the samples this process takes, and how it meets the others."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] | None = None  # None: no collective (single process, or shards by hand)
    device: str | None = None
    main_first: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def by_hand(self) -> bool:
        return self.count > 1 and self.barrier is None

    def indices(self, total: int) -> list[int]:
        """This process's samples among `total`: index, index + count, ..."""
        return list(range(self.index, total, self.count))


def process_layout(shard: tuple[int, int] | None = None) -> ProcessLayout:
    """`shard` given: that share, no collectives. Under `accelerate launch` with several processes:
    accelerate's process index, count, device and barrier. Otherwise one process."""
    if shard is not None:
        return ProcessLayout(index=shard[0], count=shard[1])
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        import torch
        from accelerate import PartialState

        # without CUDA, accelerate only goes multi-process when asked for the CPU (gloo backend)
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes != world:
            raise InputError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es); "
                             "launch with `accelerate launch` or torchrun")
        return ProcessLayout(index=state.process_index, count=state.num_processes, barrier=state.wait_for_everyone,
                             device=str(state.device), main_first=state.main_process_first)
    return ProcessLayout()


def _shard_stem(index: int, count: int) -> str:
    return f"scores-{index:03d}-of-{count:03d}"


def write_shard(out: Path, layout: ProcessLayout, token: str, rows: list[dict], unavailable: Mapping[str, str],
                seconds: float) -> None:
    """This process's score rows and a meta file stamped with the run `token` (written last)."""
    folder = out / SHARDS
    stem = _shard_stem(layout.index, layout.count)
    write_jsonl(folder / f"{stem}.jsonl", rows)
    meta = {"shard": [layout.index, layout.count], "token": token, "rows": len(rows),
            "unavailable": dict(unavailable), "seconds": seconds}
    atomic_write_text(folder / f"{stem}.meta.json", dumps(meta, indent=1))


def read_shards(out: Path, count: int, token: str) -> tuple[list[dict], dict[str, str], float] | None:
    """All shards' rows, unavailable metrics and scoring seconds; None while one is missing or stale."""
    rows: list[dict] = []
    unavailable: dict[str, str] = {}
    seconds = 0.0
    for index in range(count):
        stem = out / SHARDS / _shard_stem(index, count)
        meta_path = stem.with_name(stem.name + ".meta.json")
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("token") != token:
            return None
        part = read_jsonl(stem.with_name(stem.name + ".jsonl"))
        if len(part) != meta.get("rows"):
            return None
        rows.extend(part)
        unavailable.update(meta.get("unavailable") or {})
        seconds += float(meta.get("seconds") or 0.0)
    return rows, unavailable, seconds
