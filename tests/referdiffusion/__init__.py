"""Tests of the `referdiffusion` package.

The torch tests run with one intra-op thread (`one_torch_thread`): on the shared 2-core test machine, two
OpenMP threads competing with other processes made them several times slower.
"""

from __future__ import annotations

from collections.abc import Iterator


def one_torch_thread() -> Iterator[None]:
    """Body of a module-scoped autouse fixture: torch on one thread, restored afterwards."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
