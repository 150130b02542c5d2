"""The annotators' work queue: eligible refs not yet done, each held by one annotator at a time.

A ref is claimed through the store's assignments (`Store.assign`, key `ref:<id>`): a claim lasts
`ttl_s` seconds and is renewed whenever its holder acts on it, so an abandoned claim expires and
the ref goes back to the queue; two annotators never hold the same ref at once, because the claim
is taken inside one store transaction.

A ref is *done* for a user when it has a sample that is not that user's own draft (someone else's
draft, or anything submitted, accepted or rejected). The user's own drafts (saved, or sent back by
a reviewer) come first, then the eligible refs in order. Refs the user skipped in this session
(`skip`) come last, so "next" moves on instead of offering the same draft again.

Which refs have samples is kept in memory (ref id -> samples), updated by the app's own writes
(`note`) and re-read from the store every `refresh_s` seconds, so samples added by a CLI build
show up without a restart and a click does not scan the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30 * 60.0


def ref_key(ref_id: int) -> str:
    return f"ref:{int(ref_id)}"


def sample_key(ref_id: int) -> str:
    """The work key of the app's sample for a ref: one sample per ref, whoever makes it."""
    return f"app|ref:{int(ref_id)}"


@dataclass(frozen=True)
class SampleInfo:
    sample_id: str
    ref_id: int
    status: str
    annotator: str


class WorkQueue:
    def __init__(self, store, ref_ids: Sequence[int], *, ttl_s: float = DEFAULT_TTL_S, refresh_s: float = 10.0,
                 clock: Callable[[], float] = time.time, reads: Callable[[], object] | None = None) -> None:
        self.store = store
        self._reads = reads or (lambda: store)  # a store connection for reads (see AppContext.reads)
        self.ref_ids = ref_ids
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._by_ref: dict[int, dict[str, SampleInfo]] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.RLock()

    @property
    def ref_ids(self) -> list[int]:
        """The eligible refs, in queue order."""
        return self._ref_ids

    @ref_ids.setter
    def ref_ids(self, ref_ids: Sequence[int]) -> None:
        self._ref_ids = [int(r) for r in ref_ids]
        self._ref_set = set(self._ref_ids)

    # ------------------------------------------------------------------ the sample index
    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._loaded_at < self.refresh_s:
                return
            by_ref: dict[int, dict[str, SampleInfo]] = {}
            for rec in self._reads().list_samples(images=False):
                s = rec.sample
                by_ref.setdefault(int(s.ref_id), {})[s.sample_id] = SampleInfo(s.sample_id, int(s.ref_id), s.status,
                                                                                s.annotator)
            self._by_ref = by_ref
            self._loaded_at = time.monotonic()

    def note(self, info: SampleInfo) -> None:
        """Record a sample the app just wrote (its ref, status and annotator)."""
        with self._lock:
            self._by_ref.setdefault(info.ref_id, {})[info.sample_id] = info

    def samples_of(self, ref_id: int) -> list[SampleInfo]:
        self.refresh()
        with self._lock:
            return list(self._by_ref.get(int(ref_id), {}).values())

    def own_draft(self, ref_id: int, user: str) -> SampleInfo | None:
        for s in self.samples_of(ref_id):
            if s.status == "draft" and s.annotator == user:
                return s
        return None

    def done_for(self, ref_id: int, user: str) -> SampleInfo | None:
        """The sample that makes `ref_id` unavailable to `user`, or None when they may work on it."""
        for s in self.samples_of(ref_id):
            if not (s.status == "draft" and s.annotator == user):
                return s
        return None

    # ------------------------------------------------------------------ claims
    def holder(self, ref_id: int) -> str | None:
        now = self.clock()
        for a in self._reads().assignments(now=now):
            if a.ref_key == ref_key(ref_id):
                return a.user
        return None

    def claim(self, ref_id: int, user: str) -> bool:
        """Claim (or renew the claim on) `ref_id` for `user`; False when someone else holds it."""
        return self.store.assign(ref_key(ref_id), user, self.ttl_s, now=self.clock())

    def release(self, ref_id: int, user: str) -> bool:
        return self.store.release(ref_key(ref_id), user)

    def claims_of(self, user: str) -> list[int]:
        return [int(a.ref_key.split(":", 1)[1]) for a in self._reads().assignments(user, now=self.clock())
                if a.ref_key.startswith("ref:")]

    # ------------------------------------------------------------------ next
    def next_for(self, user: str, skip: Iterable[int] = ()) -> int | None:
        """Claim and return the next ref for `user` (see the module docstring); None when the queue is empty."""
        skipped = {int(r) for r in skip}
        self.refresh()
        with self._lock:
            drafts = [r for r, samples in self._by_ref.items()
                      if any(s.status == "draft" and s.annotator == user for s in samples.values())]
        order = [r for r in sorted(drafts) if r not in skipped]
        order += [r for r in self.ref_ids if r not in skipped and r not in drafts]
        order += [r for r in self.ref_ids if r in skipped] + [r for r in sorted(drafts) if r in skipped]
        held = {a.ref_key: a.user for a in self._reads().assignments(now=self.clock())}
        for ref_id in order:
            if self.done_for(ref_id, user) is not None or held.get(ref_key(ref_id), user) != user:
                continue
            if self.claim(ref_id, user):  # the claim itself is atomic: a race lost here moves on
                return ref_id
        return None

    def open_count(self, user: str) -> int:
        """How many eligible refs are still open to `user` (not done, not held by someone else),
        counted from the refs that have samples or claims rather than by visiting every ref."""
        self.refresh()
        with self._lock:
            done = {r for r, samples in self._by_ref.items()
                    if any(not (s.status == "draft" and s.annotator == user) for s in samples.values())}
        held = {int(a.ref_key.split(":", 1)[1]) for a in self._reads().assignments(now=self.clock())
                if a.ref_key.startswith("ref:") and a.user != user}
        return len(self._ref_set) - len((done | held) & self._ref_set)
