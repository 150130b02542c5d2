"""Worker processes for the store's concurrency and crash tests (and its benchmark's sample maker).

Importable (multiprocessing targets) and runnable: `python -m tests.refcoco_edit.store_worker crash DB`
writes in a loop and prints one line per committed change, so the test knows what must survive a kill.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from refcoco_edit.schema import Sample
from refcoco_edit.store import Candidate, ConflictError, DuplicateKeyError, Store

PROMPT = "replace the cat on the left with a dog"


def make_sample(seed: int, *, status: str = "candidate", size: int = 16, split: str = "train",
                edit_type: str = "replace", pipeline: str = "composition", annotator: str = "") -> Sample:
    """A valid sample with random images (so different seeds give different blobs)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    src = Image.fromarray(pixels)
    mask = np.zeros((size, size), np.uint8)
    mask[2: 2 + size // 3, 3: 3 + size // 2] = 1
    edit_mask = np.zeros((size, size), np.uint8)
    edit_mask[1: 1 + size // 2, 2: 2 + size // 2] = 1
    # the edit changes only M_e: outside it the edited image is the source (the store's invariant)
    edited = Image.fromarray(np.where(edit_mask[:, :, None] == 1,
                                      rng.integers(0, 256, (size, size, 3), dtype=np.uint8), pixels))
    return Sample(sample_id="", image_id=seed, ref_id=1000 + seed, ann_id=2000 + seed, split=split,
                  source_image=src, edited_image=edited, source_mask=mask, edit_mask=edit_mask, prompt=PROMPT,
                  referring_text="the cat on the left", edit_text="replace with a dog",
                  referring_spans=[[8, 27]], edit_spans=[[0, 7], [28, 38]], edit_type=edit_type,
                  target="dog", pipeline=pipeline, generation={"count": 0, "seed": seed}, annotator=annotator,
                  status=status)


def increment(db: str, sample_id: str, times: int, user: str) -> int:
    """Add 1 to generation["count"] `times` times, retrying on conflict; returns the conflicts met."""
    conflicts = 0
    with Store.open(db, create=False, durable=False) as store:
        for _ in range(times):
            while True:
                rec = store.get_sample(sample_id, images=False)
                gen = dict(rec.sample.generation, count=rec.sample.generation["count"] + 1)
                try:
                    store.update_sample(sample_id, {"generation": gen}, rec.version, user)
                    break
                except ConflictError:
                    conflicts += 1
    return conflicts


def race_insert(db: str, key: str, seed: int, barrier) -> str:
    """Try to store one sample under `key` at the same moment as others; 'won' or 'duplicate'."""
    with Store.open(db, create=False, durable=False) as store:
        sample = make_sample(seed)
        barrier.wait()
        try:
            store.add_sample(sample, user=f"w{seed}", key=key)
            return "won"
        except DuplicateKeyError:
            return "duplicate"


def _kill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def crash_loop(db: str, start: int) -> None:
    """Add, update and attach candidates forever, printing each commit; the test kills us."""
    store = Store.open(db, durable=False)
    i = start
    while True:
        key = f"crash:{i}"
        if not store.has_key(key):
            sid = store.add_sample(make_sample(i), user="crash", key=key)
            print(f"added {sid}", flush=True)
            v = store.update_sample(sid, {"generation": {"count": 1, "seed": i}}, 1, "crash")
            print(f"updated {sid} {v}", flush=True)
            store.add_candidates(sid, [Candidate(image=make_sample(10_000 + i).edited_image, seed=i)], "crash")
            print(f"candidate {sid}", flush=True)
        i += 1


def die_during(db: str, where: str) -> None:
    """Commit two samples, then die on the third: inside its transaction ('tx') or while its image
    file is being renamed into place ('blob')."""
    from refcoco_edit import io as io_mod  # blob files are renamed into place by refcoco_edit.io
    from refcoco_edit.store import db as db_mod

    store = Store.open(db, durable=False)
    for i in range(2):
        print(f"added {store.add_sample(make_sample(i), user='die', key=f'die:{i}')}", flush=True)
    if where == "tx":
        original = db_mod.Store._audit

        def audit_then_die(self, *args, **kwargs):
            original(self, *args, **kwargs)  # the row and its audit are written, not committed
            _kill_self()

        db_mod.Store._audit = audit_then_die
    else:
        io_mod.os.replace = lambda *a, **k: _kill_self()
    store.add_sample(make_sample(2), user="die", key="die:2")
    print("not reached", flush=True)


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "crash":
        crash_loop(path, int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    elif mode == "die":
        die_during(path, sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
