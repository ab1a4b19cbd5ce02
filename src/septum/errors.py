"""Septum's exceptions. Front ends catch ``SeptumError`` and print it; anything else escaping
the core is a bug.

::

    SeptumError
    ├── SelectorSyntaxError        a selector expression does not parse (column within the text)
    ├── ValidationError            one or more problems in a policy repository
    │     .problems: list[Problem]   each with file, line, column and message
    ├── LookupFailed               a CLI/API argument names no workload, address or enforcer
    ├── RenderError                a target cannot express something it was asked to render
    ├── render.wire.WireError      a ruleset or delta received as JSON is malformed (.location)
    │
    │   defined at the edges, next to the port they belong to:
    ├── agent.backend.ApplyFailed        nft refused a transaction (nothing of it applied)
    ├── agent.state.CorruptState         the agent's state directory fails its checksums
    ├── agent.source.SourceUnavailable   the desired state cannot be reached right now
    ├── agent.nflog.NflogError           an NFLOG group cannot be bound or read
    ├── agent.conntrack.ConntrackError   the conntrack tool failed
    │     └── ConntrackParseError          a line of its output was not understood
    ├── agent.capture.CaptureError       flow recording cannot start or write
    ├── lab.plan.LabError                a repository cannot be played in the lab
    ├── server.documents.DocumentError   API documents that do not validate (document, field)
    ├── server.service.Unauthorized      no valid API token (401)
    ├── server.service.Forbidden         the caller's role or scope does not allow it (403)
    ├── server.service.NotFound          no such resource, version or user (404)
    ├── server.service.Conflict          nothing to provision, or a concurrent change (409)
    ├── server.service.ProvisionRefused  the draft is invalid or an assertion fails (422)
    ├── server.ca.CertificateError       a CSR, certificate or enforcer name is refused
    └── server.client.ApiError           the API answered with an error status
"""

from __future__ import annotations

from dataclasses import dataclass


class SeptumError(Exception):
    """Base of every error Septum reports to a user."""


class SelectorSyntaxError(SeptumError):
    """``column`` is 1-based, counted in the selector text."""

    def __init__(self, message: str, column: int, text: str) -> None:
        super().__init__(f"{message} (column {column} of selector {text!r})")
        self.message = message
        self.column = column
        self.text = text


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One validation problem, pointing at a position in a file (1-based line and column)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ValidationError(SeptumError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LookupFailed(SeptumError):
    """A name or address given on the command line or API matched nothing."""


class RenderError(SeptumError):
    """A renderer cannot express part of the resolved policy."""
