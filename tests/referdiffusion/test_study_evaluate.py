"""Scoring study edits: the reference edit scores perfectly, identity keeps the background and misses the edit."""

from __future__ import annotations

import numpy as np
import pytest

from refcoco_edit.errors import InputError
from refcoco_edit.refshapes import sample_root
from referdiffusion.study.data import RefShapesStudy
from referdiffusion.study.evaluate import score, summary
from referdiffusion.study.measure import PSNR_CAP


@pytest.fixture(scope="module")
def study() -> RefShapesStudy:
    return RefShapesStudy(sample_root())


def test_reference_and_identity(study):
    records = study.edits("test")[:15]
    ref = score(study, records, lambda src, r: study.edited(r))
    assert (ref["fg_agreement"] == 1).all()
    assert (ref["fg_psnr"] == PSNR_CAP).all() and (ref["bg_psnr"] == PSNR_CAP).all()
    ident = score(study, records, lambda src, r: src)
    assert (ident["bg_psnr"] == PSNR_CAP).all()
    assert ident["fg_agreement"].mean() < 0.3  # an edit changes most of M_e
    s = summary(ident)
    assert s["fg_agreement"]["n"] == 15 and s["fg_agreement"]["ci95"][0] <= s["fg_agreement"]["mean"]


def test_bad_output_is_named(study):
    r = study.edits("test")[:1]
    with pytest.raises(InputError, match="expected uint8"):
        score(study, r, lambda src, rec: src.astype(np.float32))
