"""Editing prompts P = referring part P_r + edit part P_e, with exact character spans.

A prompt is built from a template such as ``<replace> {ref} <with {target}>``: text in angle
brackets is the edit part, ``{ref}`` is the referring part (the ref's expression, with an article
added or adjusted so it reads as a noun phrase), and the rest is glue that belongs to neither part.
Because the prompt is assembled piece by piece, every span is known by construction; `validate`
re-checks them anyway, since rephrasings (LLM or rule-based) are checked with the same code.

Spans are lists of ``[start, end)`` pairs (usually one; two when a template splits a part, as in
"replace ... with a giraffe"). `referring_text` and `edit_text` are the words of their spans joined
by one space, so ``" ".join(prompt[s:e] for s, e in spans) == text`` always holds.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from refcoco_edit.errors import InputError
from refcoco_edit.schema import EDIT_TYPES, span_problems, span_text
from refcoco_edit.text.subjects import COLOUR_WORDS

SOURCES = ("template", "llm", "rephrase")
# names people type for the edit types; "add" is "add next to", "other" is free text
EDIT_TYPE_ALIASES: dict[str, str] = {
    "add-next-to": "add", "add_next_to": "add", "free": "other", "free-text": "other",
    "free_text": "other", "text": "other", "recolor": "attribute", "recolour": "attribute",
    "delete": "remove", "swap": "replace",
}
# The keys `prompt --json` prints (the contract); `to_dict` adds source and reviewed.
CLI_KEYS = ("prompt", "referring_text", "edit_text", "referring_spans", "edit_spans", "edit_type", "target")

Span = list[int]

# ---------------------------------------------------------------------------- templates
# <...> edit part, {ref} referring part, {target} the target phrase inside an edit part.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "replace": (
        "<replace> {ref} <with {target_np}>",
        "<turn> {ref} <into {target_np}>",
        "<change> {ref} <into {target_np}>",
        "<swap> {ref} <for {target_np}>",
        "<put {target_np} in place of> {ref}",
        "<substitute {target_np} for> {ref}",
        "<replace> {ref} <by {target_np}>",
        "<make> {ref} <into {target_np}>",
    ),
    "remove": (
        "<remove> {ref}",
        "<delete> {ref}",
        "<erase> {ref} <from the picture>",
        "<take> {ref} <out of the image>",
        "<get rid of> {ref}",
        "<make> {ref} <disappear>",
        "<remove> {ref} <from the photo>",
    ),
    "attribute": (
        "<make> {ref} <{target}>",
        "<turn> {ref} <{target}>",
        "<change> {ref} <to be {target}>",
        "{ref} <should be {target}>",
    ),
    "add": (
        "<add {target_np} next to> {ref}",
        "<put {target_np} beside> {ref}",
        "<place {target_np} next to> {ref}",
        "<add {target_np} beside> {ref}",
        "<put {target_np} by> {ref}",
        "<draw {target_np} next to> {ref}",
    ),
    "other": (
        "for {ref}, <{target}>",
        "<{target}> for {ref}",
        "<{target}> (only {ref})",
    ),
}
# extra phrasings when the attribute is a colour
COLOUR_TEMPLATES: tuple[str, ...] = (
    "<paint> {ref} <{target}>",
    "<change the color of> {ref} <to {target}>",
    "<color> {ref} <{target}>",
    "<recolor> {ref} <{target}>",
)
# templates whose wording names a kind of edit for free text that carries its own placeholder
REF_PLACEHOLDER = "{ref}"

_TEMPLATE_PART = re.compile(r"<([^<>]*)>|\{ref\}|([^<{]+|\{(?!ref\}))")

_ARTICLES = ("the", "a", "an")
_DETERMINERS = frozenset(
    "the a an this that these those his her its their my your our some any each every one two three "
    "four five six seven eight nine ten both all no another".split()
)
# words that begin an expression which is only a location ("left", "far right", "top left")
_BARE_LOCATION = frozenset(
    "left right top bottom middle center centre front back far upper lower leftmost rightmost "
    "topmost bottommost closest nearest furthest farthest second third fourth first last".split()
)
_PREPOSITIONS = frozenset(
    "on in at near by behind beside between under over above below from to next with closest "
    "nearest".split()
)
_NOUN_WORDS = frozenset("one ones thing object shape guy person".split())


@dataclass
class Prompt:
    """An editing prompt with the character spans of its referring and edit parts."""

    prompt: str
    referring_text: str
    edit_text: str
    referring_spans: list[Span]
    edit_spans: list[Span]
    edit_type: str
    target: str = ""
    source: str = "template"
    reviewed: bool = True  # template prompts derive from the human-written expression; enriched ones start False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self, cli: bool = False) -> dict[str, Any]:
        """The JSON form; `cli=True` gives exactly the keys of `refcoco-edit prompt --json`."""
        d = asdict(self)
        d.pop("meta")
        if cli:
            return {k: d[k] for k in CLI_KEYS}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        p = cls(
            prompt=d["prompt"], referring_text=d["referring_text"], edit_text=d["edit_text"],
            referring_spans=[list(map(int, s)) for s in d["referring_spans"]],
            edit_spans=[list(map(int, s)) for s in d["edit_spans"]], edit_type=d["edit_type"],
            target=d.get("target", ""), source=d.get("source", "template"), reviewed=bool(d.get("reviewed", True)),
        )
        p.validate()
        return p

    @classmethod
    def from_spans(cls, prompt: str, referring_spans: Sequence[Sequence[int]], edit_spans: Sequence[Sequence[int]],
                   edit_type: str, target: str = "", source: str = "template", reviewed: bool = True) -> Prompt:
        """A prompt whose texts are read off its spans (then validated)."""
        rs = [[int(s), int(e)] for s, e in referring_spans]
        es = [[int(s), int(e)] for s, e in edit_spans]
        p = cls(prompt, span_text(prompt, rs), span_text(prompt, es), rs, es, edit_type, target, source, reviewed)
        p.validate()
        return p

    def problems(self) -> list[str]:
        """Everything wrong with the prompt's spans and fields; [] when it is sound."""
        out: list[str] = []
        if not self.prompt.strip():
            out.append("empty prompt")
        if self.edit_type not in EDIT_TYPES:
            out.append(f"unknown edit type {self.edit_type!r}")
        if self.edit_type != "remove" and not self.target.strip():
            out.append(f"edit type {self.edit_type} needs a target")
        if self.source not in SOURCES:
            out.append(f"unknown source {self.source!r}")
        out += span_problems(self.prompt, [("referring", self.referring_spans, self.referring_text),
                                           ("edit", self.edit_spans, self.edit_text)])
        return out

    def validate(self) -> Prompt:
        """Raise InputError when a span is not exact, parts overlap, or a field is missing."""
        problems = self.problems()
        if problems:
            raise InputError(f"bad prompt {self.prompt!r}: " + "; ".join(problems))
        return self


def normalise_edit_type(edit_type: str) -> str:
    key = edit_type.strip().lower()
    key = EDIT_TYPE_ALIASES.get(key, key)
    if key not in EDIT_TYPES:
        raise InputError(f"unknown edit type {edit_type!r}; use one of: {', '.join(EDIT_TYPES)} "
                         "(or add-next-to, free)")
    return key


# ---------------------------------------------------------------------------- noun phrases


def clean_expression(expression: str) -> str:
    """White space collapsed, trailing punctuation dropped, first word lower-cased unless it is an acronym."""
    text = " ".join(expression.split()).strip(" .,;:!?\"'")
    if not text:
        return text
    first, _, rest = text.partition(" ")
    if not (len(first) > 1 and first.isupper()):
        first = first.lower()
    return f"{first} {rest}" if rest else first


def referring_phrase(expression: str) -> str:
    """The expression as a definite noun phrase to weave into an instruction.

    "man on the left" -> "the man on the left"; "a sandwich" -> "the sandwich" (the instruction
    points at one object); "right" / "far left" -> "the right one" / "the far left one";
    "on the left" -> "the one on the left". Expressions already starting with a determiner
    ("the", "this", "his", "two") are kept as they are.
    """
    text = clean_expression(expression)
    if not text:
        raise InputError("the referring expression is empty")
    words = text.split(" ")
    first = words[0].lower()
    if first in ("a", "an") and len(words) > 1:
        return "the " + " ".join(words[1:])
    if first in ("one", "ones"):  # "one on the left" -> "the one on the left"
        return "the " + text
    if first in _DETERMINERS:
        return text
    if first in _PREPOSITIONS:
        return "the one " + text
    if all(w.lower() in _BARE_LOCATION for w in words):
        return f"the {text} one"
    return "the " + text


def indefinite(noun_phrase: str) -> str:
    """'giraffe' -> 'a giraffe', 'apple' -> 'an apple'; phrases with a determiner or plurals kept."""
    text = " ".join(noun_phrase.split())
    words = text.lower().split(" ")
    if not text or words[0] in _DETERMINERS:
        return text
    last = words[-1]
    if last.endswith("s") and not last.endswith(("ss", "us", "is")) and len(last) > 3:
        return text  # plural: "giraffes"
    return f"{an_or_a(words[0])} {text}"


def an_or_a(word: str) -> str:
    w = word.lower()
    if w.startswith(("uni", "use", "usu", "one", "eu", "uk")):
        return "a"
    if w.startswith(("hour", "honest", "honou", "heir")):
        return "an"
    return "an" if w[:1] in "aeiou" else "a"


# ---------------------------------------------------------------------------- composition


def parse_template(template: str) -> list[tuple[str, str]]:
    """A template as (kind, text) pieces: kind is 'edit', 'ref' or 'glue'."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in _TEMPLATE_PART.finditer(template):
        if m.start() != pos:
            raise ValueError(f"bad template {template!r} at {pos}")
        pos = m.end()
        if m.group(1) is not None:
            pieces.append(("edit", m.group(1)))
        elif m.group(0) == REF_PLACEHOLDER:
            pieces.append(("ref", ""))
        else:
            pieces.append(("glue", m.group(0)))
    if pos != len(template):
        raise ValueError(f"bad template {template!r}: unbalanced brackets")
    if sum(kind == "ref" for kind, _ in pieces) != 1:
        raise ValueError(f"template {template!r} must hold {{ref}} once")
    return pieces


def _trimmed_span(text: str, start: int) -> list[int] | None:
    """Span of `text` (placed at `start`) without its leading and trailing white space and punctuation."""
    left = len(text) - len(text.lstrip(" ,;:.!?()"))
    right = len(text.rstrip(" ,;:.!?()"))
    if right <= left:
        return None
    return [start + left, start + right]


def render(template: str, referring: str, edit_type: str, target: str = "", **slots: str) -> Prompt:
    """Fill a template and record the spans of what each piece became."""
    values = {"target": target, "target_np": indefinite(target) if target else "", **slots}
    out: list[str] = []
    ref_spans: list[Span] = []
    edit_spans: list[Span] = []
    pos = 0
    for kind, text in parse_template(template):
        if kind == "ref":
            piece = referring
            ref_spans.append([pos, pos + len(piece)])
        else:
            piece = text.format(**values) if "{" in text else text
            if kind == "edit":
                sp = _trimmed_span(piece, pos)
                if sp is not None:
                    edit_spans.append(sp)
        out.append(piece)
        pos += len(piece)
    prompt = "".join(out)
    return Prompt(prompt, span_text(prompt, ref_spans), span_text(prompt, edit_spans), ref_spans, edit_spans,
                  edit_type, target)


def templates_for(edit_type: str, target: str = "") -> tuple[str, ...]:
    """The templates of an edit type; colour attributes get the painting phrasings too."""
    edit_type = normalise_edit_type(edit_type)
    words = target.lower().split()
    if edit_type == "attribute" and words and words[-1] in COLOUR_WORDS:
        return TEMPLATES["attribute"] + COLOUR_TEMPLATES
    return TEMPLATES[edit_type]


def free_text_template(text: str) -> str | None:
    """A user's free text with a {ref} placeholder becomes its own template ("make {ref} wear a hat")."""
    if REF_PLACEHOLDER not in text:
        return None
    if text.count(REF_PLACEHOLDER) != 1:
        raise InputError("free text may hold {ref} only once")
    if any(c in text for c in "<>"):
        raise InputError("free text may not contain '<' or '>'")
    before, after = (t.replace("{", "{{").replace("}", "}}") for t in text.split(REF_PLACEHOLDER))
    parts = []
    if before.strip():
        parts.append(f"<{before.rstrip()}> " if before.endswith(" ") else f"<{before}>")
    parts.append(REF_PLACEHOLDER)
    if after.strip():
        parts.append(f" <{after.lstrip()}>" if after.startswith(" ") else f"<{after}>")
    return "".join(parts)


def compose(expression: str, edit_type: str, target: str | None = None, seed: int | str = 0,
            template: str | None = None, rng: random.Random | None = None) -> Prompt:
    """A prompt for one expression and one edit, its template chosen by a seeded RNG.

    `target`: the new object (replace), the attribute (attribute: "red", "wooden"), the object to
    add (add), or the free text (other, optionally with a {ref} placeholder); remove takes none
    (a target given to remove is ignored). `rng`, when given, replaces `seed`.
    """
    edit_type = normalise_edit_type(edit_type)
    target = " ".join((target or "").split())
    if edit_type == "remove":
        target = ""
    elif not target:
        raise InputError(f"edit type {edit_type} needs a target (--target): "
                         + {"replace": "the new object, e.g. giraffe", "attribute": "the attribute, e.g. red",
                            "add": "the object to add, e.g. a cat", "other": "the edit text"}[edit_type])
    if not expression or not expression.strip(" .,;:!?\"'"):
        raise InputError("a prompt needs a referring part: the referring expression is empty")
    referring = referring_phrase(expression)
    if template is None and edit_type == "other":
        template = free_text_template(target)
    if template is None:
        template = (rng or random.Random(str(seed))).choice(templates_for(edit_type, target))
    p = render(template, referring, edit_type, target)
    if not p.edit_spans:
        raise InputError(f"free text {target!r} has no words besides the placeholder")
    return p.validate()


def ref_sentences(ref: dict) -> list[str]:
    """The ref's expressions in file order, cleaned (REFER's `sent`, else `raw`)."""
    out = []
    for s in ref.get("sentences", []):
        text = s.get("sent") or s.get("raw") or ""
        text = " ".join(str(text).split())
        if text:
            out.append(text)
    return out


def prompt_for_ref(data, ref_id: int, edit_type: str, target: str | None = None, seed: int = 0,
                   sent_index: int | None = None) -> Prompt:
    """A prompt for a ref of a `RefCOCO`: a sentence and a template picked by `seed` (and the ref id)."""
    ref = data.ref(ref_id)
    sentences = ref_sentences(ref)
    if not sentences:
        raise InputError(f"ref {ref_id} has no referring expression; a prompt needs a referring part")
    rng = random.Random(f"{seed}:{ref_id}")
    if sent_index is None:
        sent_index = rng.randrange(len(sentences))
    elif not 0 <= sent_index < len(sentences):
        raise InputError(f"ref {ref_id} has {len(sentences)} sentence(s); no index {sent_index}")
    p = compose(sentences[sent_index], edit_type, target, rng=rng)
    p.meta.update(ref_id=int(ref_id), sentence=sentences[sent_index], sent_index=sent_index)
    return p
