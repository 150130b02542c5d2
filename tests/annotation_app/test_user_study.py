"""The user study: items from a manifest, hidden shuffled methods, checked ratings, means with intervals."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from annotation_app.errors import AccessDenied, StateError
from annotation_app.handlers import user_study as U
from annotation_app.user_study import StudyStore, cluster_bootstrap_ci, shown_order
from refcoco_edit.errors import DataError, InputError

METHODS = ["ip2p", "magicbrush", "referdiffusion"]


def write_manifest(folder, n_items=3, methods=METHODS):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_items):
        Image.new("RGB", (16, 12), (i, 0, 0)).save(folder / f"src{i}.png")
        outs = {}
        for k, m in enumerate(methods):
            Image.new("RGB", (16, 12), (i, 10 * (k + 1), 0)).save(folder / f"{m}{i}.png")
            outs[m] = f"{m}{i}.png"
        lines.append(json.dumps({"item_id": f"item{i}", "source": f"src{i}.png", "prompt": "make the left cup red",
                                 "referring_spans": [[5, 17]], "edit_spans": [[0, 4], [18, 21]], "outputs": outs}))
    (folder / "study.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "study.jsonl"


def reference_bootstrap(groups, resamples, seed, confidence=0.95):
    """An independent, loop-based cluster bootstrap with the same random draws."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
    means = []
    for row in picks:
        values = [v for i in row for v in groups[i]]
        means.append(sum(values) / len(values))
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def test_bootstrap_matches_a_reference_and_covers_the_mean():
    rnd = random.Random(3)
    groups = [[rnd.randint(1, 5) for _ in range(rnd.randint(1, 4))] for _ in range(12)]
    mean, low, high = cluster_bootstrap_ci([np.array(g) for g in groups], resamples=500, seed=7)
    assert mean == pytest.approx(sum(map(sum, groups)) / sum(map(len, groups)))
    assert (low, high) == pytest.approx(reference_bootstrap(groups, 500, 7))
    assert low <= mean <= high
    # more items of the same spread: a narrower interval
    many = [np.array(g) for g in groups * 10]
    _, low2, high2 = cluster_bootstrap_ci(many, resamples=500, seed=7)
    assert high2 - low2 < high - low
    assert cluster_bootstrap_ci([np.array([4, 4])]) == (4.0, 4.0, 4.0)
    assert all(np.isnan(v) for v in cluster_bootstrap_ci([]))


def test_manifest_import_and_checks(tmp_path):
    study = StudyStore(tmp_path / "s.study.sqlite")
    try:
        assert study.import_manifest(write_manifest(tmp_path / "m")) == 3
        assert study.item_ids() == ["item0", "item1", "item2"]
        assert study.methods("item1") == sorted(METHODS)
        with pytest.raises(InputError, match="already stored"):
            study.import_manifest(tmp_path / "m" / "study.jsonl")
        (tmp_path / "bad.jsonl").write_text('{"item_id": "x"}\n')
        with pytest.raises(DataError, match="expected item_id"):
            study.import_manifest(tmp_path / "bad.jsonl")
        from PIL import Image

        with pytest.raises(InputError, match="2 to 8"):
            study.add_item("one", Image.new("RGB", (2, 2)), "p", {"only": Image.new("RGB", (2, 2))})
    finally:
        study.close()


def test_order_is_shuffled_per_rater_and_stable():
    orders = {tuple(shown_order(METHODS, f"r{i}", "item0")) for i in range(30)}
    assert len(orders) > 1 and all(sorted(o) == sorted(METHODS) for o in orders)
    assert shown_order(METHODS, "r1", "item0") == shown_order(list(reversed(METHODS)), "r1", "item0")


def test_rating_flow_and_export(ctx, tmp_path):
    ctx.study.import_manifest(write_manifest(tmp_path / "m"))
    # every rater rates every item; the score a method gets is fixed per method, so means are known
    want = {"ip2p": (2, 3), "magicbrush": (3, 3), "referdiffusion": (5, 4)}
    for rater in ("ann1", "ann2", "rev1"):
        st, view = U.study_next(ctx, rater, None)
        seen = 0
        while st.item_id is not None:
            assert view["slots"] == 3 and view["outputs"][3] is None
            assert "".join(t for t, _ in view["prompt"]) == "make the left cup red"
            assert [lab for _, lab in view["prompt"]] == ["P_e", None, "P_r", None, "P_e"]
            # slots show the methods' images in the session's (shuffled) order
            for i, m in enumerate(st.methods):
                expected = 10 * (METHODS.index(m) + 1)
                assert np.asarray(view["outputs"][i])[0, 0, 1] == expected
            scores = [want[m] for m in st.methods]
            st, view = U.study_rate(ctx, rater, st, scores)
            seen += 1
        assert seen == 3 and "rated every item" in view["message"]
    out = U.study_export(ctx, "boss")
    rows = {r[0]: dict(zip(out["columns"], r)) for r in out["rows"]}
    for m, (q, c) in want.items():
        assert rows[m]["quality_mean"] == q and rows[m]["consistency_mean"] == c
        assert rows[m]["quality_low"] == q == rows[m]["quality_high"]  # no spread, no width
        assert rows[m]["ratings"] == 9 and rows[m]["items"] == 3 and rows[m]["raters"] == 3
    assert out["csv"].splitlines()[0].startswith("method,ratings,items,raters,quality_mean")
    assert len(out["csv"].splitlines()) == 4


def test_rating_refusals(ctx, tmp_path):
    ctx.study.import_manifest(write_manifest(tmp_path / "m", n_items=1))
    st, _ = U.study_next(ctx, "ann1", None)
    with pytest.raises(StateError, match="score every output"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (3, None), (4, 4)])
    with pytest.raises(StateError, match="score every output"):
        U.study_rate(ctx, "ann1", st, [(1, 2)])
    with pytest.raises(InputError, match="1-5"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (6, 2), (4, 4)])
    with pytest.raises(InputError, match="whole numbers"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (2.5, 2), (4, 4)])
    with pytest.raises(StateError, match="no item"):
        U.study_rate(ctx, "ann1", U.StudyState(), [])
    U.study_rate(ctx, "ann1", st, [(1, 2), (3, 3), (4, 4)])
    with pytest.raises(InputError, match="already rated"):
        U.study_rate(ctx, "ann1", st, [(1, 2), (3, 3), (4, 4)])
    with pytest.raises(AccessDenied, match="only admins"):
        U.study_export(ctx, "rev1")
    with pytest.raises(AccessDenied):
        U.study_next(ctx, None, None)


def test_empty_study(ctx):
    st, view = U.study_next(ctx, "ann1", None)
    assert st.item_id is None and "No study items" in view["message"]
