"""Golden files pin the compiler's output for the examples; every script loads in nft -c.

Regenerate after an intended change with ``SEPTUM_UPDATE_GOLDEN=1 pytest tests/render``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES, EXAMPLES_AT

from septum.render.compile import compile_all
from septum.sources.files import load_repository

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "examples"
SCRIPTS = compile_all(load_repository(EXAMPLES), EXAMPLES_AT)


def test_every_enforcer_has_a_golden_file() -> None:
    if os.environ.get("SEPTUM_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.glob("*.nft"):
            old.unlink()
        for name, script in SCRIPTS.items():
            (GOLDEN / f"{name}.nft").write_text(script)
    assert sorted(p.stem for p in GOLDEN.glob("*.nft")) == sorted(SCRIPTS)


@pytest.mark.parametrize("enforcer", sorted(SCRIPTS))
def test_examples_match_golden(enforcer: str) -> None:
    assert SCRIPTS[enforcer] == (GOLDEN / f"{enforcer}.nft").read_text()


@pytest.mark.root
@pytest.mark.parametrize("enforcer", sorted(SCRIPTS))
def test_examples_load_in_nft_check_mode(nft: str, enforcer: str) -> None:
    done = subprocess.run(
        [nft, "-c", "-f", "-"], input=SCRIPTS[enforcer], text=True, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
