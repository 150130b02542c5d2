"""Keyboard shortcuts: Alt + a letter clicks the visible button it names; the keys 1-8 (no modifier,
outside text boxes) click that candidate in the Annotate gallery.

Alt combinations leave typing in text boxes alone. The listener reads `event.code` (the physical key),
so Option on a Mac, which changes the character typed, still works. A key may name buttons on
several tabs ("next" on Annotate, Review and User study): the one on the tab on screen is clicked.
"""

from __future__ import annotations

import json

# (key letter, what it does, element ids of the buttons it clicks, first visible wins)
SHORTCUTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("N", "next item (annotate, review, user study)", ("annotate-next", "review-next", "study-next")),
    ("G", "generate candidates", ("annotate-generate",)),
    ("D", "save draft", ("annotate-save",)),
    ("S", "submit (for review; the user study's ratings)", ("annotate-submit", "study-submit")),
    ("A", "accept", ("review-accept",)),
    ("R", "reject (with the reason typed)", ("review-reject",)),
    ("B", "send back (with the comment typed)", ("review-send-back",)),
    ("P", "refresh progress", ("progress-refresh",)),
)


# The keys 1..CANDIDATE_KEYS pick that candidate (its number in the gallery).
CANDIDATE_KEYS = 8
CANDIDATE_ITEMS = "#annotate-candidates .thumbnail-item"


def shortcuts_markdown() -> str:
    rows = "\n".join(f"| Alt+{key} | {what} |" for key, what, _ in SHORTCUTS)
    rows += f"\n| 1-{CANDIDATE_KEYS} | choose that candidate (outside text boxes) |"
    return "| Keys | Action |\n|---|---|\n" + rows


def shortcuts_head() -> str:
    """A <script> for the page's <head> that installs the listener once."""
    table = {f"Key{key}": list(ids) for key, _, ids in SHORTCUTS}
    return ("<script>\n(function () {\n"
            "  if (window.__refcocoEditShortcuts) return;\n"
            "  window.__refcocoEditShortcuts = true;\n"
            f"  const table = {json.dumps(table)};\n"
            "  function typing(el) {\n"
            "    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));\n"
            "  }\n"
            "  document.addEventListener('keydown', function (e) {\n"
            "    const digit = /^Digit([1-9])$/.exec(e.code);\n"
            f"    if (digit && !e.altKey && !e.ctrlKey && !e.metaKey && !e.repeat && +digit[1] <= {CANDIDATE_KEYS}\n"
            "        && !typing(document.activeElement)) {\n"
            f"      const items = document.querySelectorAll({json.dumps(CANDIDATE_ITEMS)});\n"
            "      const item = items[+digit[1] - 1];\n"
            "      if (item && item.offsetParent !== null) {\n"
            "        e.preventDefault();\n"
            "        item.click();\n"
            "      }\n"
            "      return;\n"
            "    }\n"
            "    if (!e.altKey || e.ctrlKey || e.metaKey || e.repeat) return;\n"
            "    const ids = table[e.code];\n"
            "    if (!ids) return;\n"
            "    for (const id of ids) {\n"
            "      const el = document.getElementById(id);\n"
            "      const button = el && (el.tagName === 'BUTTON' ? el : el.querySelector('button'));\n"
            "      if (button && button.offsetParent !== null && !button.disabled) {\n"
            "        e.preventDefault();\n"
            "        button.click();\n"
            "        return;\n"
            "      }\n"
            "    }\n"
            "  }, true);\n"
            "})();\n</script>")
