"""The port to the kernel's nftables: apply one script as one atomic transaction.

Two real backends, both ending in one netlink batch that the kernel commits all or nothing:

- ``LibNftables``: libnftables in-process, through Debian's python3-nftables (a ctypes
  wrapper, loaded from Debian's path so that the agent's own virtual environment can use it).
  The default when installed: ``bench/agent.py`` measured it at 5-7 ms for a 1,000-element
  delta where the CLI took 21-24 ms (most of that is starting nft and closing its netlink
  socket), and ~20% less for a 100k-element table.
- ``NftCli``: ``nft -f -`` whose stdin is a sealed in-memory file (``memfd``), the fallback
  when python3-nftables is absent. Not a pipe: a pipe written while the agent dies gives nft
  a truncated script, and a truncated script can be valid (cut right after ``delete table``,
  it would open the host). The memfd is complete before nft starts; once started, nft
  finishes its transaction even if the agent is killed.

A kill of the agent in the middle of an in-process apply cannot leave half a transaction
either: the batch goes to the kernel in one ``sendmsg`` and is committed (or aborted) inside
that system call. The kernel fault tests kill agents of both kinds mid-apply.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from septum.errors import SeptumError

__all__ = ["ApplyFailed", "LibNftables", "NftBackend", "NftCli", "default_backend"]


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


def _nft_binary() -> str:
    found = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if found is None:
        raise SeptumError("nft not found: install Debian's nftables package")
    return found


@dataclass
class NftCli:
    """``nft -f -`` in the caller's network namespace. Cost: one process (5-20 ms on a busy
    machine) plus nft's parse and the kernel's commit, O(script)."""

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

    def table_exists(self, family: str, table: str) -> bool:
        # `list tables` rather than `list table`: the latter prints every set element.
        proc = subprocess.run(
            [self.binary, "list", "tables", family],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0 and f"table {family} {table}" in proc.stdout.splitlines()


#: Where Debian's python3-nftables puts its module (for Debian's own python3).
DEBIAN_NFTABLES = Path("/usr/lib/python3/dist-packages/nftables/__init__.py")


def _debian_nftables(path: Path = DEBIAN_NFTABLES) -> ModuleType | None:
    """Debian's ``nftables`` module, imported by path (only that package, not the rest of
    Debian's dist-packages), or None when it is not installed or does not load."""
    loaded = sys.modules.get("nftables")
    if loaded is not None and hasattr(loaded, "Nftables"):
        return loaded
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(
        "nftables", path, submodule_search_locations=[str(path.parent)]
    )
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nftables"] = module
    try:
        spec.loader.exec_module(module)
    except (OSError, ImportError):  # e.g. libnftables.so.1 missing
        del sys.modules["nftables"]
        return None
    return module


@dataclass
class LibNftables:
    """libnftables in the agent's process (and network namespace). Cost: nft's parse and the
    kernel's commit, O(script); no process start. Not thread-safe (one context)."""

    module: ModuleType | None = None
    _ctx: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        module = self.module or _debian_nftables()
        if module is None:
            raise SeptumError("libnftables is not available: install Debian's python3-nftables")
        self.module = module
        self._ctx = module.Nftables()

    def _run(self, script: str) -> tuple[int, str, str]:
        rc, output, error = self._ctx.cmd(script)
        return int(rc), str(output), str(error)

    def apply(self, script: str) -> None:
        rc, _, error = self._run(script)
        if rc != 0:
            raise ApplyFailed(error.strip() or f"libnftables returned {rc}")

    def table_exists(self, family: str, table: str) -> bool:
        rc, output, _ = self._run(f"list tables {family}")
        return rc == 0 and f"table {family} {table}" in output.splitlines()


def default_backend() -> NftBackend:
    """``LibNftables`` when Debian's python3-nftables is installed, else ``NftCli``."""
    try:
        return LibNftables()
    except SeptumError:
        return NftCli()
