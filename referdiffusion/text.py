"""Prompt handling shared by the losses, the trainer and the pipeline.

The edit-embedding loss needs the token positions of the edit text P_e inside the prompt P. The data
gives P_e as character spans `[start, end)` of P; a fast (tokenizers-backed) CLIP tokenizer reports each
token's character offsets, and a token belongs to a span when its offsets overlap it. The slow
`CLIPTokenizer` of older transformers versions has no offsets, so `fast_tokenizer` builds the fast one
from the same vocabulary; `tests/referdiffusion/test_text.py` checks both give the same ids.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

Span = tuple[int, int]


def fast_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """`tokenizer` itself when it is a fast tokenizer, else a `CLIPTokenizerFast` from the same files."""
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return CLIPTokenizerFast.from_pretrained(tmp)


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_length: int | None = None) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` (B x L), padded to `max_length` (the tokenizer's by default) and
    truncated as Stable Diffusion pipelines do."""
    enc = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def spans_to_token_mask(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    max_length: int | None = None,
) -> torch.Tensor:
    """B x L float mask: 1 at the tokens of `prompts[i]` whose characters overlap any of `spans[i]`.

    Tokens are those of `tokenize(tokenizer, prompts, max_length)` (same truncation); special and padding
    tokens have empty offsets and never count. A span cut off by truncation keeps only its tokens that fit.
    """
    if len(prompts) != len(spans):
        raise ValueError(f"{len(prompts)} prompts but {len(spans)} span lists")
    fast = fast_tokenizer(tokenizer)
    length = max_length or tokenizer.model_max_length
    enc = fast(
        list(prompts), padding="max_length", max_length=length, truncation=True, return_offsets_mapping=True
    )
    out = torch.zeros(len(prompts), length)
    for i, (offsets, sample_spans) in enumerate(zip(enc["offset_mapping"], spans, strict=True)):
        for s, e in sample_spans:
            if not (0 <= s <= e <= len(prompts[i])):
                raise ValueError(f"span [{s}, {e}) is outside prompt {i} of {len(prompts[i])} characters")
        for j, (a, b) in enumerate(offsets):
            if b > a and any(a < e and s < b for s, e in sample_spans):
                out[i, j] = 1.0
    return out


@torch.no_grad()
def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: PreTrainedModel,
    prompts: Sequence[str],
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F_P, attention mask) for `prompts`: the text encoder's last hidden state, B x L x D, and B x L."""
    tokens = tokenize(tokenizer, prompts)
    device = device or text_encoder.device
    ids = tokens["input_ids"].to(device)
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = tokens["attention_mask"].to(device)
    embeds = text_encoder(ids, attention_mask=mask if use_mask else None)[0]
    return embeds, mask
