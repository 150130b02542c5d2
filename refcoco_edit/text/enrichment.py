"""What a valid rephrasing is, whoever wrote it (an LLM or the offline rules).

A rephrasing keeps exact, disjoint spans for its referring part P_r and edit part P_e, every
identifying word of the original referring text (colour, location, ordinal and size words, the head
noun), the target in its edit part (a removal verb for removals), and differs from the original and
from the rephrasings already kept. `Enrichment` is what a rephraser returns: kept prompts and the
rejected texts with their reasons.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from refcoco_edit.errors import InputError
from refcoco_edit.text.prompts import Prompt
from refcoco_edit.text.subjects import key_words, missing_words, tokens

MAX_PROMPT_CHARS = 400
REMOVAL_WORDS = frozenset(
    "remove removed delete erase eliminate rid take clear wipe vanish disappear gone without cut drop".split()
)
_TARGET_STOP = frozenset("a an the some it its of to and with in on for make please ref".split())



@dataclass
class Rejection:
    text: str
    reason: str


@dataclass
class Enrichment:
    """Rephrasings of one prompt that passed the checks, the rejected ones with reasons, and any error."""

    original: Prompt
    rephrasings: list[Prompt] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None
    cached: bool = False

    @property
    def prompts(self) -> list[Prompt]:
        """The usable prompts: the rephrasings, or the original when none survived."""
        return self.rephrasings or [self.original]

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original.to_dict(),
            "rephrasings": [p.to_dict() for p in self.rephrasings],
            "rejected": [asdict(r) for r in self.rejected],
            "error": self.error,
            "cached": self.cached,
        }


def _trim(prompt: str, start: int, end: int) -> list[int] | None:
    while start < end and (prompt[start].isspace() or prompt[start] in ",;:.!?()"):
        start += 1
    while end > start and (prompt[end - 1].isspace() or prompt[end - 1] in ",;:.!?()"):
        end -= 1
    return [start, end] if end > start else None


def _find(haystack: str, needle: str, start: int = 0, avoid: Sequence[Sequence[int]] = ()) -> int:
    """First index >= start of `needle` (exact, else case-insensitive) not overlapping `avoid`; -1 if none."""
    for hay, ndl in ((haystack, needle), (haystack.lower(), needle.lower())):
        i = hay.find(ndl, start)
        while i >= 0:
            if all(i + len(ndl) <= s or i >= e for s, e in avoid):
                return i
            i = hay.find(ndl, i + 1)
    return -1


def locate_parts(text: str, referring: str | None, edit: Sequence[str] | None, original: Prompt,
                 source: str) -> Prompt:
    """Build a Prompt from a rephrasing by finding its parts in it; ValueError says what is missing."""
    prompt = " ".join(text.split())
    if not prompt:
        raise ValueError("empty rephrasing")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"longer than {MAX_PROMPT_CHARS} characters")
    candidates = [" ".join(referring.split())] if referring and referring.strip() else []
    candidates.append(original.referring_text)
    ref_span = None
    for cand in candidates:
        i = _find(prompt, cand)
        if i >= 0:
            ref_span = _trim(prompt, i, i + len(cand))
            if ref_span:
                break
    if ref_span is None:
        raise ValueError("referring part not found in the rephrasing")
    edit_spans: list[list[int]] = []
    if edit:
        for piece in edit:
            piece = " ".join(str(piece).split())
            if not piece:
                continue
            i = _find(prompt, piece, 0, [ref_span, *edit_spans])
            if i < 0:
                raise ValueError(f"edit piece {piece!r} not found in the rephrasing outside the referring part")
            sp = _trim(prompt, i, i + len(piece))
            if sp:
                edit_spans.append(sp)
        edit_spans.sort()
    else:
        for s, e in ((0, ref_span[0]), (ref_span[1], len(prompt))):
            sp = _trim(prompt, s, e)
            if sp:
                edit_spans.append(sp)
    if not edit_spans:
        raise ValueError("no edit part in the rephrasing")
    try:
        return Prompt.from_spans(prompt, [ref_span], edit_spans, original.edit_type, original.target,
                                 source=source, reviewed=False)
    except InputError as exc:
        raise ValueError(str(exc)) from None


def target_words(prompt: Prompt) -> list[str]:
    """Content words of the edit's target that a rephrasing must keep."""
    text = prompt.target.replace("{ref}", " ")
    return [w for w in tokens(text) if w not in _TARGET_STOP]


def check_rephrasing(new: Prompt, original: Prompt, seen: Iterable[str] = (), category: str | None = None,
                     extra_nouns: Iterable[str] = ()) -> str | None:
    """Why `new` is not a faithful rephrasing of `original`, or None when it is."""
    problems = new.problems()
    if problems:
        return "; ".join(problems)
    norm = " ".join(tokens(new.prompt))
    if norm == " ".join(tokens(original.prompt)):
        return "same as the original"
    if norm in seen:
        return "duplicate of another rephrasing"
    keys = key_words(original.referring_text, category, extra_nouns)
    lost = missing_words(keys, new.referring_text)
    if lost:
        return f"referring part lost {', '.join(repr(w) for w in lost)}"
    if original.edit_type == "remove":
        if not REMOVAL_WORDS & {w for w in tokens(new.edit_text)}:
            return "edit part no longer says to remove"
    else:
        want = target_words(original)
        lost = missing_words(want, new.edit_text)
        if original.edit_type == "other":
            if want and len(lost) * 2 > len(want):
                return f"edit part lost most of the edit text ({', '.join(lost)})"
        elif lost:
            return f"edit part lost the target word(s) {', '.join(repr(w) for w in lost)}"
    return None


class Rephraser(Protocol):
    def rephrase(self, prompt: Prompt, n: int, *, category: str | None = None,
                 extra_nouns: Iterable[str] = ()) -> Enrichment: ...
