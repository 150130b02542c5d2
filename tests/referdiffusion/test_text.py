"""Prompt spans -> token positions, through the fast CLIP tokenizer's offsets."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from referdiffusion.text import fast_tokenizer, spans_to_token_mask, tokenize  # noqa: E402
from tests.referdiffusion import one_torch_thread  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

# OpenAI CLIP's ids for this prompt (ENVIRONMENT.md; computed with OpenAI's own tokenizer).
OPENAI_IDS = [49406, 9466, 518, 9706, 530, 518, 893, 593, 320, 12952, 49407]


@pytest.fixture(scope="module")
def tokenizer(tiny_cache):
    from transformers import CLIPTokenizer

    from refcoco_edit.models.resolver import resolve

    return CLIPTokenizer.from_pretrained(resolve("tiny-ip2p").source, subfolder="tokenizer")


class _SlowStandIn:
    """A tokenizer that reports no offsets (is_fast False), like transformers 4's slow CLIPTokenizer."""

    is_fast = False

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_max_length = inner.model_max_length

    def save_pretrained(self, path):
        return self.inner.save_pretrained(path)

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _expected(tokenizer, prompt: str, span: tuple[int, int], length: int = 77) -> list[float]:
    """Independent reference for spans on word boundaries: count the tokens of the text before the span
    and of the span itself (no offsets involved)."""
    s, e = span
    n_before = len(tokenizer(prompt[:s], add_special_tokens=False).input_ids)
    n_span = len(tokenizer(prompt[s:e], add_special_tokens=False).input_ids)
    out = [0.0] * length
    for j in range(1 + n_before, 1 + n_before + n_span):
        out[j] = 1.0
    return out


def test_ids_match_openai(tokenizer):
    ids = tokenize(tokenizer, ["replace the cow in the back with a panda"])["input_ids"][0].tolist()
    assert ids[: len(OPENAI_IDS)] == OPENAI_IDS


@pytest.mark.parametrize(
    ("prompt", "part"),
    [
        ("replace the cow in the back with a panda", "the cow in the back"),
        ("replace the cow in the back with a panda", "a panda"),
        ("Make the  ZEBRA on the left, purple!", "ZEBRA on the left"),
        ("remove the man's umbrella", "the man's umbrella"),
        ("turn the giraffe into a hippopotamus", "a hippopotamus"),
    ],
)
def test_span_to_tokens_matches_token_counts(tokenizer, prompt, part):
    s = prompt.index(part)
    span = (s, s + len(part))
    mask = spans_to_token_mask(tokenizer, [prompt], [[span]])
    assert mask.shape == (1, 77)
    assert mask[0].tolist() == _expected(tokenizer, prompt, span)
    assert mask.sum() > 0


def test_partial_word_span_takes_the_token_and_nothing_special(tokenizer):
    prompt = "paint the cow blue"
    mask = spans_to_token_mask(tokenizer, [prompt], [[(10, 12)]])  # "co" inside "cow"
    ids = tokenize(tokenizer, [prompt])["input_ids"][0]
    hits = mask[0].nonzero().flatten().tolist()
    assert len(hits) == 1
    assert tokenizer.decode([int(ids[hits[0]])]).strip() == "cow"
    empty = spans_to_token_mask(tokenizer, [prompt], [[]])
    assert empty.sum() == 0


def test_several_spans_and_batch(tokenizer):
    prompts = ["replace the cow with a panda", "make the car red"]
    spans = [[(8, 15), (21, 28)], [(9, 12)]]  # "the cow" + "a panda"; "car"
    mask = spans_to_token_mask(tokenizer, prompts, spans)
    a = [max(x, y) for x, y in zip(_expected(tokenizer, prompts[0], spans[0][0]),
                                   _expected(tokenizer, prompts[0], spans[0][1]))]
    assert mask[0].tolist() == a
    assert mask[1].tolist() == _expected(tokenizer, prompts[1], spans[1][0])


def test_truncated_span_keeps_only_tokens_that_fit(tokenizer):
    prompt = "make " + "very " * 80 + "the cow red"
    s = prompt.index("the cow")
    mask = spans_to_token_mask(tokenizer, [prompt], [[(s, s + 7)]])
    assert mask.sum() == 0  # cut off by truncation: no token, in particular not the EOS at position 76
    s2 = prompt.index("very")
    mask2 = spans_to_token_mask(tokenizer, [prompt], [[(s2, len(prompt))]])
    assert mask2[0, 1:76].sum() == 74 and mask2[0, 0] == 0 and mask2[0, 76] == 0


def test_bad_span_is_refused(tokenizer):
    with pytest.raises(ValueError):
        spans_to_token_mask(tokenizer, ["short"], [[(2, 40)]])
    with pytest.raises(ValueError):
        spans_to_token_mask(tokenizer, ["a", "b"], [[(0, 1)]])


def test_fast_tokenizer_from_a_slow_one_gives_same_ids_and_offsets(tokenizer):
    assert fast_tokenizer(tokenizer) is tokenizer
    converted = fast_tokenizer(_SlowStandIn(tokenizer))
    assert converted.is_fast
    prompts = ["Replace  the COW in the back, with a panda!", "remove the man's umbrella"]
    assert converted(prompts).input_ids == tokenizer(prompts).input_ids
    spans = [[(13, 16)], [(7, 17)]]
    assert spans_to_token_mask(_SlowStandIn(tokenizer), prompts, spans).equal(
        spans_to_token_mask(tokenizer, prompts, spans)
    )
