"""Referring expressions over a RefShapes scene: meaning, English, and back.

An expression's meaning is a `Form`: a noun phrase (optional colour, optional kind) and a relation
(only, on the left, biggest, second from the top, ...). `select` evaluates a form over a scene and
returns the objects it picks out; the generator only emits a sentence whose form selects exactly the
referred object. `resolve_expression` goes the other way, from a sentence's words to its form to the
objects, so a test can check every emitted sentence from its text alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.refshapes import geometry as geo

LOCATION_MARGIN = 16.0  # pixels between centres before "left of" counts as visible
SIZE_RATIO = 1.3  # area ratio before "bigger" counts as visible
DIRECTIONS = ("left", "right", "top", "bottom")
ORDINALS = {2: "second", 3: "third", 4: "fourth"}
SENTENCE_COUNTS = (1, 2, 3, 4)
SENTENCE_COUNT_P = (0.08, 0.25, 0.42, 0.25)  # mean 2.84 sentences per ref, as RefCOCO


class Thing(Protocol):
    kind: str
    colour: str
    size: str
    area: float

    @property
    def x(self) -> float: ...

    @property
    def y(self) -> float: ...


@dataclass(frozen=True)
class Form:
    """Meaning of one expression. relation: only | extreme | middle | superlative | comparative |
    label | ordinal; arg: a direction, "big"/"small", or a size class; rank: for ordinals."""

    relation: str
    colour: str | None = None
    kind: str | None = None
    arg: str | None = None
    rank: int = 0


CATEGORY = {"only": "attribute", "extreme": "location", "middle": "location",
            "superlative": "size", "comparative": "size", "label": "size", "ordinal": "ordinal"}


# ----------------------------------------------------------------------------- meaning


def _group(objs: Sequence[Thing], form: Form) -> list[Thing]:
    return [o for o in objs if (form.colour is None or o.colour == form.colour)
            and (form.kind is None or o.kind == form.kind)]


def _axis(direction: str):
    """Key that sorts objects starting from `direction` (leftmost first for "left")."""
    return {"left": lambda o: o.x, "right": lambda o: -o.x,
            "top": lambda o: o.y, "bottom": lambda o: -o.y}[direction]


def _ranked(group: list[Thing], direction: str, rank: int) -> list[Thing]:
    """The rank-th object from `direction`, or every object too close to tell apart from it."""
    key = _axis(direction)
    ordered = sorted(group, key=key)
    pick = ordered[rank - 1]
    return [o for o in ordered if abs(key(o) - key(pick)) < LOCATION_MARGIN]


def select(form: Form, objs: Sequence[Thing]) -> list[Thing]:
    """Objects of the scene that the form picks out; unique reference means a one-element list."""
    return _select_in_group(form, _group(objs, form))


def _select_in_group(form: Form, group: list[Thing]) -> list[Thing]:
    # Literal meaning; which true forms sound natural enough to emit is candidate_forms' business.
    rel = form.relation
    if not group:
        return []
    if rel == "only":
        return group
    if rel == "extreme":
        return _ranked(group, form.arg, 1)
    if rel == "ordinal":
        return _ranked(group, form.arg, form.rank) if len(group) >= form.rank else []
    if rel == "middle":
        return _ranked(group, "left", 2) if len(group) == 3 else []
    if rel in ("superlative", "comparative"):
        if rel == "comparative" and len(group) != 2:
            return []
        sign = 1.0 if form.arg == "big" else -1.0
        best = max(group, key=lambda o: sign * o.area)
        # everything not clearly smaller (resp. bigger) than the pick ties with it
        return [o for o in group if max(o.area, best.area) < SIZE_RATIO * min(o.area, best.area)]
    if rel == "label":
        return [o for o in group if o.size == form.arg]
    raise ValueError(f"unknown relation {rel!r}")


def candidate_forms(target: Thing, objs: Sequence[Thing]) -> list[Form]:
    """Every natural form, over the target's own attributes, that selects exactly the target.

    Natural: a modifier is only used when its noun phrase covers several objects, and an ordinal
    never names the far end ("third from the left" of three is "the rightmost")."""
    forms: list[Form] = []
    for colour in (target.colour, None):
        for kind in (target.kind, None):
            base = {"colour": colour, "kind": kind}
            group = _group(objs, Form("only", **base))
            if len(group) == 1:  # a lone object needs no modifier
                forms.append(Form("only", **base))
                continue
            options = [Form(rel, arg=a, **base) for rel, args in (
                ("extreme", DIRECTIONS), ("superlative", ("big", "small")),
                ("comparative", ("big", "small")), ("label", (target.size,)))
                for a in args]
            options.append(Form("middle", **base))
            options += [Form("ordinal", arg=d, rank=r, **base)
                        for r in ORDINALS if len(group) > r for d in DIRECTIONS]
            for form in options:
                chosen = _select_in_group(form, group)
                if len(chosen) == 1 and chosen[0] is target:
                    forms.append(form)
    return forms


# ----------------------------------------------------------------------------- English

_GENERIC = ("shape", "object", "one")
_LOCATION_TEMPLATES = {
    "left": ("the {np} on the left", "the leftmost {np}", "the {np} furthest to the left",
             "left {np}", "the {np} on the far left"),
    "right": ("the {np} on the right", "the rightmost {np}", "the {np} furthest to the right",
              "right {np}", "the {np} on the far right"),
    "top": ("the {np} at the top", "the topmost {np}", "the top {np}", "the highest {np}",
            "the upper {np}"),
    "bottom": ("the {np} at the bottom", "the bottom {np}", "the lowest {np}", "the lower {np}",
               "the bottommost {np}"),
}
_TEMPLATES: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("only", None): ("the {np}", "{np}"),
    ("middle", None): ("the {np} in the middle", "the middle {np}"),
    ("superlative", "big"): ("the biggest {np}", "the largest {np}"),
    ("superlative", "small"): ("the smallest {np}", "the tiniest {np}"),
    ("comparative", "big"): ("the bigger of the two {nps}", "the larger of the two {nps}"),
    ("comparative", "small"): ("the smaller of the two {nps}",),
    ("label", "small"): ("the small {np}", "the little {np}", "small {np}"),
    ("label", "medium"): ("the medium {np}", "the medium-sized {np}"),
    ("label", "large"): ("the big {np}", "the large {np}", "big {np}"),
    ("ordinal", None): ("the {ord} {np} from the {dir}", "{ord} {np} from {dir}"),
}
for _d, _t in _LOCATION_TEMPLATES.items():
    _TEMPLATES[("extreme", _d)] = _t


def _noun_phrase(form: Form, plural: bool, rng: np.random.Generator) -> str:
    if form.kind is not None:
        noun = geo.PLURALS[form.kind] if plural else form.kind
    else:
        noun = str(rng.choice(_GENERIC)) + ("s" if plural else "")
    return f"{form.colour} {noun}" if form.colour else noun


def render(form: Form, rng: np.random.Generator) -> str:
    """One English phrasing of a form (the raw sentence, before tokenising)."""
    arg = None if form.relation in ("only", "middle", "ordinal") else form.arg
    template = str(rng.choice(_TEMPLATES[(form.relation, arg)]))
    text = template.format(np=_noun_phrase(form, False, rng), nps=_noun_phrase(form, True, rng),
                           ord=ORDINALS.get(form.rank, ""), dir=form.arg)
    if rng.random() < 0.25:
        text = text[0].upper() + text[1:]
    return text


def tokenize(raw: str) -> list[str]:
    """REFER-style tokens: lower-cased words, punctuation and hyphens dropped."""
    return re.findall(r"[a-z0-9]+", raw.lower())


def choose_sentences(forms: Sequence[Form], rng: np.random.Generator) -> list[str]:
    """1 to 4 raw sentences from a target's candidate forms, spread over expression categories."""
    if not forms:
        return []
    wanted = int(rng.choice(SENTENCE_COUNTS, p=SENTENCE_COUNT_P))
    by_category: dict[str, list[Form]] = {}
    for f in forms:
        by_category.setdefault(CATEGORY[f.relation], []).append(f)
    order = [str(c) for c in rng.permutation(sorted(by_category))]
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < wanted and attempts < 4 * wanted + 8:
        pool = by_category[order[attempts % len(order)]]
        attempts += 1
        raw = render(pool[int(rng.integers(len(pool)))], rng)
        sent = " ".join(tokenize(raw))
        if sent not in seen:
            seen.add(sent)
            sentences.append(raw)
    return sentences


# ----------------------------------------------------------------------------- back to meaning

_KIND_OF = {**{k: k for k in geo.KINDS}, **{p: k for k, p in geo.PLURALS.items()}}
_PLURAL_WORDS = set(geo.PLURALS.values()) | {g + "s" for g in _GENERIC}
_LEADING_LOCATION = {
    "leftmost": "left", "left": "left", "rightmost": "right", "right": "right",
    "topmost": "top", "top": "top", "highest": "top", "upper": "top",
    "bottommost": "bottom", "bottom": "bottom", "lowest": "bottom", "lower": "bottom",
}
_TRAILING_LOCATION = {
    ("on", "the", "left"): "left", ("on", "the", "right"): "right",
    ("on", "the", "far", "left"): "left", ("on", "the", "far", "right"): "right",
    ("furthest", "to", "the", "left"): "left", ("furthest", "to", "the", "right"): "right",
    ("at", "the", "top"): "top", ("at", "the", "bottom"): "bottom",
}
_SUPERLATIVES = {"biggest": "big", "largest": "big", "smallest": "small", "tiniest": "small"}
_COMPARATIVES = {"bigger": "big", "larger": "big", "smaller": "small"}
_LABELS = {"small": "small", "little": "small", "medium": "medium", "big": "large",
           "large": "large"}
_ORDINAL_RANK = {word: rank for rank, word in ORDINALS.items()}


def _parse_np(tokens: list[str], plural: bool) -> tuple[str | None, str | None]:
    """[colour] noun -> (colour, kind); the noun's number must match `plural`."""
    words = list(tokens)
    colour = words.pop(0) if len(words) == 2 and words[0] in geo.COLOURS else None
    if len(words) != 1 or (words[0] in _PLURAL_WORDS) != plural:
        raise InputError(f"not a {'plural' if plural else 'singular'} noun phrase: "
                         f"{' '.join(tokens)!r}")
    noun = words[0]
    if noun in _KIND_OF:
        return colour, _KIND_OF[noun]
    if noun.rstrip("s") in _GENERIC:
        return colour, None
    raise InputError(f"unknown noun {noun!r}")


def parse_expression(sentence: str) -> Form:
    """The form of a sentence in the RefShapes grammar; InputError for anything outside it."""
    toks = tokenize(sentence)
    if toks[:1] == ["the"]:
        toks = toks[1:]
    if not toks:
        raise InputError(f"empty expression: {sentence!r}")
    head = toks[0]
    if head in _COMPARATIVES and toks[1:4] == ["of", "the", "two"]:
        return Form("comparative", *_parse_np(toks[4:], True), arg=_COMPARATIVES[head])
    if head in _ORDINAL_RANK:
        tail = toks[-3:] if toks[-2:-1] == ["the"] else toks[-2:]
        if tail[0] != "from" or tail[-1] not in DIRECTIONS:
            raise InputError(f"ordinal without 'from the <direction>': {sentence!r}")
        return Form("ordinal", *_parse_np(toks[1:-len(tail)], False), arg=tail[-1],
                    rank=_ORDINAL_RANK[head])
    if head == "middle":
        return Form("middle", *_parse_np(toks[1:], False))
    if toks[-3:] == ["in", "the", "middle"]:
        return Form("middle", *_parse_np(toks[:-3], False))
    if head in _LEADING_LOCATION and len(toks) > 1:
        return Form("extreme", *_parse_np(toks[1:], False), arg=_LEADING_LOCATION[head])
    for tail, direction in _TRAILING_LOCATION.items():
        if tuple(toks[-len(tail):]) == tail and len(toks) > len(tail):
            return Form("extreme", *_parse_np(toks[:-len(tail)], False), arg=direction)
    if head in _SUPERLATIVES:
        return Form("superlative", *_parse_np(toks[1:], False), arg=_SUPERLATIVES[head])
    if head in _LABELS and len(toks) > 1:
        rest = toks[2:] if head == "medium" and toks[1:2] == ["sized"] else toks[1:]
        return Form("label", *_parse_np(rest, False), arg=_LABELS[head])
    return Form("only", *_parse_np(toks, False))


@dataclass(frozen=True)
class _Described:
    key: int
    kind: str
    colour: str
    size: str
    area: float
    x: float
    y: float


def resolve_expression(sentence: str, objects: Mapping[int | str, Mapping]) -> list[int]:
    """Ann ids of the objects a sentence refers to, in a scene given as edits.json describes it
    ({ann_id: {"kind", "colour", "size", "area", "center": [x, y]}}, one image's objects)."""
    things = [_Described(int(k), v["kind"], v["colour"], v["size"], float(v["area"]),
                         float(v["center"][0]), float(v["center"][1]))
              for k, v in objects.items()]
    return sorted(t.key for t in select(parse_expression(sentence), things))
