"""Property tests of `rie-bench score`'s submission check, the parser of the benchmark's untrusted
input: whatever files a submission folder holds (random bytes, valid PNGs of any size and mode,
truncated or mutated ones, names that are not samples), validation finishes within its deadline and
either accepts an output or names its problem; it never raises."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmark.run.submission import validate_submission
from tests.images import bomb_png

FAST = settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
SOURCE = (16, 12)


def _png(w: int, h: int, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, len(mode)) if len(mode) > 1 else (h, w), np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


files = st.one_of(
    st.binary(max_size=300),
    st.builds(_png, st.integers(1, 64), st.integers(1, 64), st.sampled_from(["RGB", "RGBA", "L"])),
    st.builds(bomb_png, st.integers(1, 200_000), st.integers(1, 200_000)),
    st.builds(lambda data, cut: data[:cut], st.builds(_png, st.just(16), st.just(12), st.just("RGB")),
              st.integers(0, 200)),
    st.builds(lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1:],
              st.builds(_png, st.just(16), st.just(12), st.just("RGB")), st.integers(0, 150), st.integers(0, 255)),
)


@FAST
# found by this test: chunk checksums right, image data ending early; verify() passes, decoding fails
@example({"s0.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\n\x00\x00\x00\x08\x08\x02\x00\x00\x00O\x98"
                    b"\xf9\xe1\x00\x00\x00\x0cIDATx\x9cc`\xa0\x0c\x00\x00\x00@\x00\x01\xb74|\xef\x00\x00\x00\x00IEND"})
@given(st.dictionaries(st.sampled_from(["s0.png", "s1.png", "s1.jpg", "other.png", "s2.webp"]), files,
                       max_size=4))
def test_any_submission_is_accepted_or_its_problems_named(tmp_path_factory, content: dict[str, bytes]) -> None:
    folder: Path = tmp_path_factory.mktemp("sub")
    for name, data in content.items():
        (folder / name).write_bytes(data)
    expected = {"s0": SOURCE, "s1": SOURCE, "s2": SOURCE}
    report = validate_submission(folder, expected)
    assert set(report.files) <= set(expected)
    for sid in expected:
        named = any(sid in p for p in report.problems)
        assert (sid in report.files) != named, (sid, report.problems)  # each sample: valid xor a named problem
    for path in report.files.values():
        with Image.open(path) as im:  # what validation accepted decodes as RGB
            assert im.mode == "RGB"
            im.load()
