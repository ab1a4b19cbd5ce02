"""Where an agent gets its desired state: a policy repository directory (the control-plane
API will be a second implementation of the same port)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from septum.errors import SeptumError
from septum.model.resources import Repository
from septum.sources.files import load_repository, repository_digest

__all__ = ["DesiredStateSource", "RepositorySource", "SourceUnavailable"]


class SourceUnavailable(SeptumError):
    """The desired state cannot be reached right now (the agent keeps what it applied)."""


class DesiredStateSource(Protocol):
    def digest(self) -> str:
        """A cheap fingerprint of the current desired state; raises ``SourceUnavailable``."""
        ...

    def fetch(self) -> tuple[Repository, str]:
        """The desired state and its digest; raises ``SourceUnavailable`` or
        ``ValidationError`` (bad input: the agent reports it and keeps what it applied)."""
        ...


@dataclass(frozen=True, slots=True)
class RepositorySource:
    """A policy repository directory on this host (a git checkout, a mounted volume)."""

    path: Path

    def digest(self) -> str:
        if not self.path.exists():
            raise SourceUnavailable(f"{self.path}: no such file or directory")
        try:
            return repository_digest(self.path)
        except OSError as exc:
            raise SourceUnavailable(f"{self.path}: {exc.strerror or exc}") from exc

    def fetch(self) -> tuple[Repository, str]:
        # The digest is taken before the load: if the files change in between, the next
        # poll sees a new digest and loads again, so nothing newer is ever marked as applied.
        digest = self.digest()
        return load_repository(self.path), digest
