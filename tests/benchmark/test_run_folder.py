"""The run folder's clean-up recognises exactly what `refcoco_edit.io.atomic_path` leaves behind when
its writer is killed, so a resumed run removes it (and only the leftovers of its own samples)."""

from __future__ import annotations

from benchmark.run.folder import output_name, remove_stale_temporaries
from refcoco_edit.io import atomic_path


def test_leftovers_of_a_killed_atomic_write_are_recognised(tmp_path):
    ours, theirs = "coco_1_2_replace", "odd id/3"
    leftovers, writers = {}, []  # the writers are kept: a collected one would clean up after itself
    for sid in (ours, theirs):
        writers.append(atomic_path(tmp_path / f"{output_name(sid)}.png"))
        tmp = writers[-1].__enter__()  # never exited: what SIGKILL in the middle of a write leaves
        tmp.write_bytes(b"\x89PNG half")
        leftovers[sid] = tmp
    assert remove_stale_temporaries(tmp_path, {output_name(ours)}) == 1
    assert not leftovers[ours].exists() and leftovers[theirs].exists()
    assert remove_stale_temporaries(tmp_path, {output_name(theirs)}) == 1
    assert not list(tmp_path.iterdir())
