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


def test_a_cached_output_whose_data_ends_early_is_not_whole(tmp_path):
    """Checksums right but the image data cut short: Pillow's verify() passes it, decoding does not;
    a resumed run must generate it again rather than score it."""
    from benchmark.run.folder import png_is_whole

    cut = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\n\x00\x00\x00\x08\x08\x02\x00\x00\x00O\x98"
           b"\xf9\xe1\x00\x00\x00\x0cIDATx\x9cc`\xa0\x0c\x00\x00\x00@\x00\x01\xb74|\xef\x00\x00\x00\x00IEND")
    (tmp_path / "a.png").write_bytes(cut)
    assert not png_is_whole(tmp_path / "a.png")
    from PIL import Image

    Image.new("RGB", (10, 8)).save(tmp_path / "b.png")
    assert png_is_whole(tmp_path / "b.png")
