"""torch on one intra-op thread for the tests that run models.

On the shared 2-core test machine, two OpenMP threads competing with other processes made the model
tests several times slower. `one_torch_thread` is a fixture body (module-scoped autouse in the
referdiffusion tests, a plain fixture in the benchmark tests); `single_thread()` is the same as a
context manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def one_torch_thread() -> Iterator[None]:
    """torch on one thread while the caller runs, the previous count restored afterwards."""
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


single_thread = contextmanager(one_torch_thread)
