"""The study's frozen random text encoder and its linear probe."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from refcoco_edit.errors import InputError  # noqa: E402
from refcoco_edit.refshapes import sample_root  # noqa: E402
from referdiffusion.study import text_encoder as te  # noqa: E402
from referdiffusion.study.data import RefShapesStudy  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def study() -> RefShapesStudy:
    return RefShapesStudy(sample_root())  # the committed 40-image sample: train and val both have edits


def test_encoder_is_seeded_frozen_and_64_wide():
    a, b, c = te.build_text_encoder(), te.build_text_encoder(), te.build_text_encoder(seed=1)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    with pytest.raises(InputError, match="multiple"):
        te.build_text_encoder(hidden=30)


def test_encode_shapes_and_pooled_is_the_end_token():
    tok, model = te.build_tokenizer(), te.build_text_encoder()
    prompts = ["remove the red circle", "turn the small star on the left into a blue hexagon"]
    hs, mask, pooled = te.encode(tok, model, prompts, batch_size=1)
    assert hs.shape == (2, te.MAX_TOKENS, 64) and mask.shape == (2, te.MAX_TOKENS) and pooled.shape == (2, 64)
    for i in range(2):
        eos = int(mask[i].sum()) - 1  # the first end-of-text token closes the prompt
        np.testing.assert_allclose(pooled[i], hs[i, eos],
                                   rtol=1e-5, atol=1e-5)


def test_probe_reads_separable_labels_and_not_random_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    good = te.probe_accuracy(x[:300], y[:300], x[300:], y[300:])
    assert good["accuracy"] > 0.95
    noise = rng.integers(0, 2, size=400)
    bad = te.probe_accuracy(x[:300], noise[:300], x[300:], noise[300:])
    assert bad["accuracy"] < 0.7


def test_probe_set_labels(study):
    records = study.edits("train")[:30]
    ps = te.probe_set(study, records, te.build_tokenizer(), te.build_text_encoder())
    assert ps.pooled.shape == ps.mean.shape == (30, 64)
    types = ps.labels["edit type"]
    assert ((ps.labels["target shape"] >= 0) == (types == 0)).all()  # only replace names a new shape
    assert ((ps.labels["target colour"] >= 0) == (types != 1)).all()  # remove names no colour
    assert len(ps.tokens) == len(ps.token_word) == len(ps.token_part) > 30
    assert set(np.unique(ps.token_part)) == {0, 1}
    words = te.attribute_words()
    assert "hexagon" in words and len(set(words)) == len(words)


def test_probe_table_on_a_small_study(study):
    rows = te.probe(study, train_size=40, val_size=20)
    with pytest.raises(InputError, match="needs edits"):
        te.probe(study, train_size=0)
    assert {r["task"] for r in rows} >= {"edit type", "target colour", "attribute word"}
    assert all(0 <= r["accuracy"] <= 1 and r["train"] > 0 and r["test"] > 0 for r in rows)
