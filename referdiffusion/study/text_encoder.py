"""The study's text encoder: a small CLIP text model with frozen random weights, and the probe behind it.

Why frozen and random: no pretrained CLIP can be downloaded here, and training a text model on RefShapes
prompts would add a stage to the study without a clear objective (CLIP's contrastive loss needs images
and a second tower). RefShapes prompts are a small closed language (six colours, six shapes, sizes,
positions, three edit verbs and their templates), so what the UNet and the Region-Embedder need from the
text encoder is features from which those words, and the part of the prompt they sit in, can be read
linearly; a random transformer keeps token identity through its residual stream and adds position
through its position embeddings. `probe` checks exactly that on RefShapes prompts: linear
(softmax-regression) probes trained on train-split prompts and scored on val-split prompts must beat
the majority class by a wide margin. The encoder is CLIP's architecture at width 64 (two layers, four
heads; 64 is the UNet's cross-attention width) with the project's CLIP tokenizer
(`refcoco_edit.models.tiny.build_clip_tokenizer`), its weights drawn from seed 0 and never trained.

Run: `python -m referdiffusion.study.text_encoder probe --data ROOT` prints the probe's table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from refcoco_edit.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

    from referdiffusion.study.data import EditRecord, RefShapesStudy

log = logging.getLogger(__name__)

HIDDEN = 64
LAYERS = 2
HEADS = 4
INTERMEDIATE = 256
SEED = 0
# The study's prompts are short (under 25 tokens); 32 positions keep the UNet's cross-attention small.
MAX_TOKENS = 32


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The project's CLIP tokenizer (OpenAI's vocabulary), capped at `MAX_TOKENS`."""
    from refcoco_edit.models.tiny import build_clip_tokenizer

    tok = build_clip_tokenizer()
    tok.model_max_length = MAX_TOKENS
    return tok


def build_text_encoder(seed: int = SEED, hidden: int = HIDDEN, layers: int = LAYERS) -> CLIPTextModel:
    """CLIPTextModel of width `hidden`, weights drawn from `seed`, frozen (no gradients) and in eval mode."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from refcoco_edit.models.tiny import BOS_TOKEN_ID, CLIP_VOCAB_SIZE, EOS_TOKEN_ID

    if hidden % HEADS:
        raise InputError(f"text encoder width {hidden} must be a multiple of {HEADS} heads")
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=HEADS, max_position_embeddings=MAX_TOKENS, projection_dim=hidden,
        hidden_act="quick_gelu", bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config).eval()
    model.requires_grad_(False)
    return model


def encode(tokenizer: PreTrainedTokenizerBase, model: CLIPTextModel, prompts: Sequence[str],
           batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token features N x L x D, attention mask N x L, pooled N x D) of the prompts."""
    import torch

    from referdiffusion.text import tokenize

    hs, masks, pooled = [], [], []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            t = tokenize(tokenizer, prompts[start:start + batch_size])
            out = model(t["input_ids"])
            hs.append(out.last_hidden_state.numpy())
            masks.append(t["attention_mask"].numpy())
            pooled.append(out.pooler_output.numpy())
    return np.concatenate(hs), np.concatenate(masks), np.concatenate(pooled)


# ---------------------------------------------------------------------------- the linear probe
def fit_linear_probe(x: np.ndarray, y: np.ndarray, classes: int, weight_decay: float = 1e-4,
                     steps: int = 300) -> torch.nn.Linear:
    """Softmax regression on standardised features (full-batch L-BFGS): the weakest reader that counts."""
    import torch

    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"probe needs as many labels as features, got {len(x)} and {len(y)}")
    xt = torch.from_numpy(np.asarray(x, np.float32))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    torch.manual_seed(0)
    lin = torch.nn.Linear(xt.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """Accuracy of a linear probe fitted on train and scored on test, beside the majority-class rate."""
    import torch

    classes = int(max(train_y.max(), test_y.max())) + 1
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    lin = fit_linear_probe((train_x - mu) / sd, train_y, classes)
    with torch.no_grad():
        pred = lin(torch.from_numpy(((test_x - mu) / sd).astype(np.float32))).argmax(1).numpy()
    majority = np.bincount(train_y, minlength=classes).argmax()
    return {"accuracy": float((pred == test_y).mean()), "majority": float((test_y == majority).mean()),
            "classes": classes, "train": int(len(train_y)), "test": int(len(test_y))}


@dataclass
class ProbeSet:
    """Features and labels of one split's prompts, for the probe's tasks."""

    pooled: np.ndarray  # N x D: CLIP's pooled (end-of-text) feature
    mean: np.ndarray  # N x D: mean of the prompt's token features
    labels: dict[str, np.ndarray]  # prompt-level task -> N labels (-1: not applicable)
    tokens: np.ndarray  # T x D: features of attribute-word tokens
    token_word: np.ndarray  # T: which attribute word (index into `words`)
    token_part: np.ndarray  # T: 0 the word is in the referring part, 1 in the edit part


def attribute_words() -> list[str]:
    """RefShapes' colour, shape and position words: the words an editor must tell apart."""
    from refcoco_edit.refshapes.geometry import COLOURS, KINDS

    return [*COLOURS, *KINDS, "left", "right", "top", "bottom", "middle", "small", "large"]


def probe_set(study: RefShapesStudy, records: Sequence[EditRecord], tokenizer: PreTrainedTokenizerBase,
              model: CLIPTextModel) -> ProbeSet:
    """Encode the records' prompts and label them: edit type, target colour and target shape per prompt;
    word identity and prompt part (referring or edit) per attribute-word token."""
    from refcoco_edit.refshapes.geometry import COLOURS, KINDS
    from referdiffusion.text import fast_tokenizer

    prompts = [study.prompt(r) for r in records]
    texts = [p.prompt for p in prompts]
    hs, mask, pooled = encode(tokenizer, model, texts)
    mean = (hs * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    colours, kinds, types = list(COLOURS), list(KINDS), ["replace", "remove", "attribute"]
    labels = {
        "edit type": np.array([types.index(r.edit_type) for r in records]),
        "target colour": np.array([colours.index(r.target.split()[0]) if r.edit_type != "remove" else -1
                                   for r in records]),
        "target shape": np.array([kinds.index(r.target.split()[-1]) if r.edit_type == "replace" else -1
                                  for r in records]),
    }
    words = attribute_words()
    fast = fast_tokenizer(tokenizer)
    enc = fast(texts, padding="max_length", max_length=hs.shape[1], truncation=True, return_offsets_mapping=True)
    feats, word_ids, parts = [], [], []
    for i, (p, offsets) in enumerate(zip(prompts, enc["offset_mapping"])):
        # a word may be several BPE tokens ("hexagon"): its last token, which has seen the whole word
        # through the causal attention, stands for it
        ends = {m.end(): m.group(0).lower() for m in re.finditer(r"[A-Za-z]+", p.prompt)}
        for j, (a, b) in enumerate(offsets):
            word = ends.get(b, "")
            if b <= a or word not in words:
                continue
            a = b - len(word)
            in_edit = any(s <= a and b <= e for s, e in p.edit_spans)
            in_ref = any(s <= a and b <= e for s, e in p.referring_spans)
            if in_edit == in_ref:
                continue
            feats.append(hs[i, j])
            word_ids.append(words.index(word))
            parts.append(int(in_edit))
    return ProbeSet(pooled, mean, labels, np.array(feats), np.array(word_ids), np.array(parts))


def probe(study: RefShapesStudy, train_size: int = 3000, val_size: int = 1000, seed: int = 0) -> list[dict]:
    """The probe's table: one row per (task, feature), fitted on train prompts, scored on val prompts."""
    tokenizer, model = build_tokenizer(), build_text_encoder()
    rng = np.random.default_rng(seed)
    sets = {}
    for role, n in (("train", train_size), ("val", val_size)):
        recs = study.edits(role)
        if not recs or n < 1:
            raise InputError(f"the probe needs edits of the {role} split; it has {len(recs)}, asked for {n}")
        keep = sorted(rng.choice(len(recs), size=min(n, len(recs)), replace=False))
        sets[role] = probe_set(study, [recs[k] for k in keep], tokenizer, model)
    tr, va = sets["train"], sets["val"]
    rows = []
    for task in tr.labels:
        a, b = tr.labels[task] >= 0, va.labels[task] >= 0
        for feature in ("pooled", "mean"):
            fx, vx = getattr(tr, feature), getattr(va, feature)
            rows.append({"task": task, "feature": feature,
                         **probe_accuracy(fx[a], tr.labels[task][a], vx[b], va.labels[task][b])})
    rows.append({"task": "attribute word", "feature": "token",
                 **probe_accuracy(tr.tokens, tr.token_word, va.tokens, va.token_word)})
    rows.append({"task": "word's prompt part (referring/edit)", "feature": "token",
                 **probe_accuracy(tr.tokens, tr.token_part, va.tokens, va.token_part)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.text_encoder", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe", help="linear probes of the frozen random text encoder on RefShapes prompts")
    pr.add_argument("--data", type=Path, required=True, help="RefShapes root (refcoco-edit sample --out)")
    pr.add_argument("--train", type=int, default=3000)
    pr.add_argument("--val", type=int, default=1000)
    pr.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from refcoco_edit.io import atomic_write_json
    from referdiffusion.study.data import RefShapesStudy

    rows = probe(RefShapesStudy(args.data), args.train, args.val)
    print("| task | feature | val accuracy | majority class | classes | train / val |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['feature']} | {r['accuracy']:.3f} | {r['majority']:.3f} | {r['classes']} "
              f"| {r['train']} / {r['test']} |")
    if args.json:
        atomic_write_json(args.json, rows)
    else:
        log.debug(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
