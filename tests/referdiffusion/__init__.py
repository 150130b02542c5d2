"""Tests of the `referdiffusion` package; its torch tests run on one thread (`tests.torch_threads`)."""

from tests.torch_threads import one_torch_thread

__all__ = ["one_torch_thread"]
