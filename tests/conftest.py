"""Shared fixtures. Tests that need root and nftables skip outside CI and fail inside it
(CI=true), so that a machine missing them can never pass CI silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: A fixed evaluation time, so that expiring rules and address validity are deterministic.
EXAMPLES_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


#: One prefix per test run, so that namespaces are recognisably ours and never collide.
NETNS_PREFIX = f"septum-t{uuid.uuid4().hex[:6]}-"


def require_root_nft() -> str:
    """The nft binary, when this process may use it (root, with iproute2 for namespaces).
    Outside CI a machine without them skips; in CI (CI=true) the test fails instead."""
    nft = shutil.which("nft") or ("/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else None)
    if os.geteuid() == 0 and nft is not None and shutil.which("ip") is not None:
        return nft
    if os.environ.get("CI") == "true":
        pytest.fail("CI must run this test: it needs root, nftables and iproute2 (.ci/run)")
    pytest.skip("needs root, nftables and iproute2")


@pytest.fixture
def nft() -> str:
    """Path of the nft binary, when this process may use it (root)."""
    return require_root_nft()


@contextmanager
def netns_context() -> Iterator[str]:
    """A fresh, empty network namespace with this run's prefix, deleted on exit even when
    the body fails (root only: see ``require_root_nft``)."""
    require_root_nft()
    name = NETNS_PREFIX + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, deleted when the test ends, even when it fails."""
    with netns_context() as name:
        yield name
