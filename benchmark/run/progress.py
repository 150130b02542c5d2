"""The progress bar of the runner's per-sample loops (tqdm, imported when a loop starts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


def sample_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A bar counting samples; `enabled=False` hides it, otherwise tqdm shows it on a terminal only."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=None if enabled else True)
