from __future__ import annotations

import gc

import pytest

from septum.runtime import gc_paused


def _fail_inside() -> None:
    with gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")


def test_gc_paused_restores_state_even_on_error() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        _fail_inside()
    assert gc.isenabled()


def test_gc_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
