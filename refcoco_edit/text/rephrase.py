"""Offline rule-based rephrasings: variety without a network or a model.

A rephrasing re-renders the prompt's referring part and target through the other templates of its
edit type, with an optional polite opening ("please", "could you"), an initial capital and a final
full stop. It is built with the same composition code as template prompts, so its spans are exact by
construction, and it passes the same checks as an LLM rephrasing before it is returned.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from refcoco_edit.text.enrichment import Enrichment, Rejection, check_rephrasing
from refcoco_edit.text.prompts import Prompt, free_text_template, parse_template, render, templates_for
from refcoco_edit.text.subjects import tokens

# Openings go before templates that start with their edit verb ("please remove ..."), never before
# one that starts with the referring part ("please the cup should be red" would not be English).
OPENINGS: tuple[str, ...] = ("", "please ", "could you ", "I would like you to ", "now ", "go ahead and ")


class RuleRephraser:
    """Rephrasings from templates, chosen by a seeded RNG; `rephrase` never touches the network."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def variants(self, prompt: Prompt) -> list[tuple[str, bool, bool]]:
        """Every (template, capitalise, full stop) this prompt can be re-rendered with."""
        own = free_text_template(prompt.target) if prompt.edit_type == "other" else None
        templates = (own,) if own else templates_for(prompt.edit_type, prompt.target)
        out = []
        for tpl in templates:
            starts_with_edit = parse_template(tpl)[0][0] == "edit"
            for opening in OPENINGS if starts_with_edit else ("",):
                for cap in (False, True):
                    for stop in (False, True):
                        out.append((opening + tpl, cap, stop))
        return out

    def rephrase(self, prompt: Prompt, n: int, *, category: str | None = None,
                 extra_nouns: Iterable[str] = ()) -> Enrichment:
        rng = random.Random(f"{self.seed}:{prompt.prompt}:{prompt.edit_type}:{prompt.target}")
        options = self.variants(prompt)
        rng.shuffle(options)
        out = Enrichment(prompt)
        seen: set[str] = set()
        for template, cap, stop in options:
            if len(out.rephrasings) >= n:
                break
            new = self._render(prompt, template, cap, stop)
            reason = check_rephrasing(new, prompt, seen, category, extra_nouns)
            if reason is not None:
                if reason not in ("same as the original", "duplicate of another rephrasing"):
                    out.rejected.append(Rejection(new.prompt, reason))
                continue
            seen.add(" ".join(tokens(new.prompt)))
            out.rephrasings.append(new)
        return out

    @staticmethod
    def _render(prompt: Prompt, template: str, cap: bool, stop: bool) -> Prompt:
        p = render(template + ("." if stop else ""), prompt.referring_text, prompt.edit_type, prompt.target)
        p.source, p.reviewed = "rephrase", False
        # the referring part keeps its case: only an opening edit word or glue is capitalised
        if cap and p.referring_spans[0][0] != 0:
            text = p.prompt[:1].upper() + p.prompt[1:]
            p = Prompt.from_spans(text, p.referring_spans, p.edit_spans, p.edit_type, p.target, "rephrase", False)
        return p
