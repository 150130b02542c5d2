"""Property tests of the parsers of untrusted input: refs pickles, instances.json sizes and
segmentations (polygons, RLE), store masks and dumps. Whatever the input: no crash, no hang (each
example has a deadline), bounded memory (sizes are refused before anything is allocated for them),
and either a result or a clear `RefcocoEditError`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refcoco_edit.errors import RefcocoEditError
from refcoco_edit.refer.reader import decode_segmentation, image_size, rle_string_counts
from refcoco_edit.refer.safe_pickle import safe_load_bytes
from refcoco_edit.store import rle
from tests.refcoco_edit.py2pickle import dumps_py2

FAST = settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
SIDES = st.one_of(st.integers(-3, 40), st.integers(10**4, 10**7))
COORDS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))


def _refused_or(fn, *args):
    try:
        return fn(*args)
    except RefcocoEditError:
        return None


# ---------------------------------------------------------------------------- refs pickles
py2_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.binary(max_size=8),
              st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.binary(max_size=4), kids, max_size=4)),
    max_leaves=20)


@FAST
@given(py2_values)
def test_py2_pickles_load_as_text(value) -> None:
    def text(v):
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return v.decode("latin-1")
        if isinstance(v, list):
            return [text(x) for x in v]
        if isinstance(v, dict):
            return {text(k): text(x) for k, x in v.items()}
        return v

    assert safe_load_bytes(dumps_py2(value), "p") == text(value)


@FAST
@given(st.binary(max_size=600), st.sampled_from([b"", b"\x80\x02", b"\x80\x02]("]))
def test_any_bytes_load_or_are_refused(data: bytes, prefix: bytes) -> None:
    _refused_or(safe_load_bytes, prefix + data, "fuzz.p")


@pytest.mark.parametrize("op", [b"q\xff", b"r\x00\x00\x00\x01", b"r\xff\xff\xff\xff", b"p16777216\n"])
def test_a_large_memo_index_costs_no_memory(op):
    """PUT opcodes name memo slots; a slot number far beyond the file (here up to 2^32) must not make the
    loader allocate a table that large (the C unpickler grows an array to the index: 128 MB for 2^24)."""
    import tracemalloc

    tracemalloc.start()
    try:
        assert _refused_or(safe_load_bytes, b"\x80\x02)" + op + b".", "memo.p") in ((), None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak


@FAST
@given(st.lists(st.integers(0, 255), min_size=1, max_size=40), st.data())
def test_mutated_pickles_load_or_are_refused(flips, data) -> None:
    raw = bytearray(pickle.dumps([{"ref_id": 1, "sentences": [{"tokens": ["a", "b"]}]}] * 3, protocol=2))
    for f in flips:
        raw[data.draw(st.integers(0, len(raw) - 1))] = f
    _refused_or(safe_load_bytes, bytes(raw), "mutated.p")


# ---------------------------------------------------------------------------- instances.json
@FAST
@given(st.dictionaries(st.sampled_from(["height", "width", "id"]),
                       st.one_of(SIDES, st.floats(), st.text(max_size=3), st.none(), st.booleans())))
def test_image_sizes_are_checked(info: dict) -> None:
    size = _refused_or(image_size, info, "image")
    if size is not None:
        h, w = size
        assert 0 < h <= 16384 and 0 < w <= 16384 and h * w <= 8192 * 8192


@FAST
@given(st.lists(st.lists(COORDS, max_size=14), max_size=4), SIDES, SIDES)
def test_polygons_decode_or_are_refused(polys, h, w) -> None:
    mask = _refused_or(decode_segmentation, polys, h, w, "ann")
    if mask is not None:
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


@FAST
@given(st.one_of(st.text(max_size=40), st.binary(max_size=40), st.lists(st.integers(-5, 500), max_size=12),
                 st.lists(st.one_of(st.floats(), st.booleans(), st.none()), max_size=4)),
       st.one_of(SIDES, st.just(8)), st.one_of(SIDES, st.just(8)), st.booleans())
def test_rle_decodes_or_is_refused(counts, h, w, size_matches) -> None:
    size = [h, w] if size_matches else [w, h + 1]
    mask = _refused_or(decode_segmentation, {"size": size, "counts": counts}, h, w, "ann")
    if mask is not None:
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}


@FAST
@given(st.binary(max_size=200))
def test_rle_strings_decode_or_are_refused(counts: bytes) -> None:
    runs = _refused_or(rle_string_counts, counts)
    if runs is not None:
        assert (runs >= 0).all()


# ---------------------------------------------------------------------------- store masks
@FAST
@given(st.integers(1, 20), st.integers(1, 20), st.data())
def test_masks_round_trip(h, w, data) -> None:
    m = np.array(data.draw(st.lists(st.integers(0, 1), min_size=h * w, max_size=h * w)), np.uint8).reshape(h, w)
    np.testing.assert_array_equal(rle.from_json(rle.to_json(m)), m)


@FAST
@given(st.one_of(st.text(max_size=60),
                 st.builds(lambda size, counts: json.dumps({"size": size, "counts": counts}),
                           st.lists(st.one_of(SIDES, st.text(max_size=2)), max_size=3),
                           st.one_of(st.text(max_size=20), st.lists(st.integers(-2, 50), max_size=6)))))
def test_stored_mask_text_decodes_or_is_refused(text: str) -> None:
    try:
        rle.from_json(text)
    except (RefcocoEditError, json.JSONDecodeError):  # the store wraps both, naming the sample
        pass


# ---------------------------------------------------------------------------- store dumps
@pytest.fixture(scope="module")
def dump_lines(tmp_path_factory) -> list[str]:
    from refcoco_edit.store import Store
    from tests.refcoco_edit.test_store import _fill

    path = tmp_path_factory.mktemp("dump")
    with Store.open(path / "s.sqlite", durable=False) as store:
        _fill(store)
        store.dump(path / "d.jsonl")
    return (path / "d.jsonl").read_text(encoding="utf-8").splitlines()


VALUES = st.one_of(st.none(), st.integers(-2, 10**12), st.floats(), st.text(max_size=6), st.booleans(),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=25, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(st.data())
def test_dumps_with_a_changed_field_import_or_are_refused(dump_lines, tmp_path_factory, data) -> None:
    from refcoco_edit.store import Store

    lines = list(dump_lines)
    i = data.draw(st.integers(1, len(lines) - 2))
    rec = json.loads(lines[i])
    if rec["type"] == "blob":
        rec["png"] = data.draw(st.text(max_size=12))
    else:
        field = data.draw(st.sampled_from(sorted(k for k in rec if k != "type")))
        rec[field] = data.draw(VALUES)
    lines[i] = json.dumps(rec)
    folder: Path = tmp_path_factory.mktemp("imp")
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with Store.open(folder / "s.sqlite", durable=False) as store:
        try:
            store.import_(folder / "d.jsonl")
        except RefcocoEditError:
            assert store.count(failed=None) == 0  # all or nothing
            return
        report = store.check()
        assert report["invalid_rows"] == [], report["invalid_rows"]  # what it let in keeps the rules
