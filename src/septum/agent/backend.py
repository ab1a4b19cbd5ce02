"""The port to the kernel's nftables: apply one script as one atomic transaction.

Why the ``nft`` CLI fed on stdin rather than libnftables through Debian's python3-nftables:
the agent runs in its own virtual environment (any Python ≥ 3.11), and python3-nftables is
installed for Debian's interpreter only; both end in the same netlink batch, which the kernel
commits all or nothing, and ``bench/agent.py`` measures what the extra process costs (a few
milliseconds per transaction, against hundreds for a large table's parse).

Why stdin is a sealed in-memory file (``memfd``) rather than a pipe: a pipe written while the
agent dies gives nft a truncated script, and a truncated script can be valid (cut right after
``delete table``, it would open the host). The memfd is written completely before nft starts,
so nft reads either the whole script or, if the agent dies earlier, nothing at all; once
started, nft finishes its transaction even if the agent is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol

from septum.errors import SeptumError

__all__ = ["ApplyFailed", "NftBackend", "NftCli"]


class ApplyFailed(SeptumError):
    """nft rejected a transaction; nothing of it was applied (the kernel commits all or
    nothing). ``message`` is what nft said."""

    def __init__(self, message: str) -> None:
        super().__init__(f"nft rejected the transaction: {message}")
        self.message = message


class NftBackend(Protocol):
    """What the agent needs from nftables."""

    def apply(self, script: str) -> None:
        """Apply ``script`` as one transaction; raise ``ApplyFailed`` (nothing applied)."""
        ...

    def table_exists(self, family: str, table: str) -> bool: ...

    def list_table(self, family: str, table: str) -> str | None:
        """The table as ``nft list`` prints it, or None when it does not exist."""
        ...


def _nft_binary() -> str:
    found = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if found is None:
        raise SeptumError("nft not found: install Debian's nftables package")
    return found


@dataclass
class NftCli:
    """The real backend: ``nft -f -`` in the caller's network namespace. Cost: one process
    (~3 ms) plus nft's parse and the kernel's commit, O(script)."""

    binary: str = ""

    def __post_init__(self) -> None:
        if not self.binary:
            self.binary = _nft_binary()

    def apply(self, script: str) -> None:
        fd = os.memfd_create("septum-nft", os.MFD_CLOEXEC)
        try:
            data = script.encode()
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.lseek(fd, 0, os.SEEK_SET)
            proc = subprocess.run(
                [self.binary, "-f", "-"],
                stdin=fd,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            os.close(fd)
        if proc.returncode != 0:
            raise ApplyFailed(proc.stderr.strip() or f"exit code {proc.returncode}")

    def _list(self, family: str, table: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, "list", "table", family, table],
            capture_output=True,
            text=True,
            check=False,
        )

    def table_exists(self, family: str, table: str) -> bool:
        # `list tables` rather than `list table`: the latter prints every set element.
        proc = subprocess.run(
            [self.binary, "list", "tables", family],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0 and f"table {family} {table}" in proc.stdout.splitlines()

    def list_table(self, family: str, table: str) -> str | None:
        proc = self._list(family, table)
        return proc.stdout if proc.returncode == 0 else None
