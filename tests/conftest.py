"""Shared fixtures. Tests that need root and nftables skip outside CI and fail inside it
(CI=true), so that a machine missing them can never pass CI silently."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: A fixed evaluation time, so that expiring rules and address validity are deterministic.
EXAMPLES_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def require_root_nft() -> str:
    nft = shutil.which("nft") or ("/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else None)
    if os.geteuid() == 0 and nft is not None:
        return nft
    if os.environ.get("CI") == "true":
        pytest.fail("CI must run this test: it needs root and nftables (installed by .ci/run)")
    pytest.skip("needs root and nftables")


@pytest.fixture
def nft() -> str:
    """Path of the nft binary, when this process may use it (root)."""
    return require_root_nft()
