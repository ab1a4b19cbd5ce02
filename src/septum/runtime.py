"""Process-level tuning for Septum's front ends (CLI, agent, benchmarks). Not for the core.

A 10k-workload compile allocates a few million small immutable objects. They form no
reference cycles, so reference counting frees them; Python's cyclic collector only walks
them again and again while they are alive, which costs about a third of the compile.
Front ends therefore pause the collector around a compile and restore it afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector inside the block; restore its state on exit,
    also on error. Reference counting still frees everything that is not in a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
