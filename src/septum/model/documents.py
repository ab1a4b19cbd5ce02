"""The shape of each policy document, as written (the README's policy language reference).

These pydantic models are the first lowering stage (``PolicyDocument`` → ``Policy`` → …): they
check structure only (which fields exist, their types, enumerated values, names), and they
define the JSON Schema (:mod:`septum.model.schema`). Everything that needs more than the
shape of one document — selector syntax, CIDRs, ports, label rules, times, references between
documents — is checked by :mod:`septum.model.parse`, which also turns these into the frozen
model of :mod:`septum.model.resources`.

Conventions: every model forbids unknown fields (a typo must not silently weaken policy) and is
strict (``"1"`` is not a number and ``1`` is not a string); enumerations are ``Literal`` strings
here (strict pydantic would not take a string for an ``Enum``) and become ``Enum`` members in
the model. Field names use the YAML spelling through aliases (``from``, ``appliesTo``).

``SourceDocument`` is one document as read from YAML (plain values plus where each part was
written). It lives here rather than in ``septum.sources`` so that the core depends on no
source module: sources produce it, :mod:`septum.model.parse` consumes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from septum.errors import Problem

__all__ = [
    "API_VERSION",
    "KINDS",
    "NAME_PATTERN",
    "AddressEntry",
    "AnyDocument",
    "AssertionDocument",
    "AssertionSpec",
    "Document",
    "EgressRule",
    "FailsafeSpec",
    "IngressRule",
    "InvariantSpec",
    "Metadata",
    "NetworkDocument",
    "NetworkSpec",
    "Path",
    "PeerEntry",
    "PolicyDocument",
    "PolicySpec",
    "Position",
    "SegmentDocument",
    "SegmentSpec",
    "ServiceDocument",
    "ServiceSpec",
    "SettingsDocument",
    "SettingsSpec",
    "SourceDocument",
    "TierDocument",
    "TierSpec",
    "UserDocument",
    "UserGroupDocument",
    "UserGroupSpec",
    "UserSpec",
    "WorkloadDocument",
    "WorkloadMetadata",
    "WorkloadSpec",
]

API_VERSION = "septum/v1"

#: Resource names: DNS-label-like, lowercase, at most 253 characters.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"
NAME_MAX = 253
#: Label keys: optional DNS prefix and "/", then a name of at most 63 characters. A key
#: under ``namespace.septum.io/`` holds a whole label key of the workload's Kubernetes
#: namespace (``namespace.septum.io/kubernetes.io/metadata.name``), as imported clusters do.
LABEL_KEY_PATTERN = (
    r"^(namespace\.septum\.io/)?"
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^[-A-Za-z0-9_.]{0,63}$"

#: Used in the JSON Schema only; parse.py validates these texts with precise messages.
_PORT_PATTERN = r"^(any|icmp|icmpv6|(tcp|udp|sctp)(/[0-9]+(-[0-9]+)?)?)$"
_TIME = {"format": "date-time"}
_SELECTOR = {"description": 'a label selector, e.g. app == "web" && has(pci)'}

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX)]
Labels = Annotated[
    dict[str, str],
    Field(
        json_schema_extra={
            "propertyNames": {"pattern": LABEL_KEY_PATTERN},
            "additionalProperties": {"type": "string", "pattern": LABEL_VALUE_PATTERN},
        }
    ),
]
Time = Annotated[str, Field(json_schema_extra=_TIME)]
SelectorText = Annotated[str, Field(json_schema_extra=_SELECTOR)]
PortText = Annotated[str, Field(json_schema_extra={"pattern": _PORT_PATTERN})]
# A non-empty list: an empty list of ports would read as "any service" downstream.
PortList = Annotated[list[PortText], Field(min_length=1)]
ActionText = Literal["allow", "deny", "pass", "log"]
ModeText = Literal["idle", "visibility", "test", "enforced", "selective"]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=False, frozen=True
    )


def _string_or_mapping(value: Any) -> str:
    """Discriminator for ``str | Model`` unions: keeps validation errors about one branch."""
    return "string" if isinstance(value, str) else "mapping"


#: Tags used by the ``str | Model`` unions; they appear in pydantic error locations.
UNION_TAGS = frozenset({"string", "mapping"})


# ------------------------------------------------------------------- documents as read

#: A path into a document: mapping keys and sequence indexes, from the root.
Path = tuple[object, ...]


class Position(NamedTuple):
    """A 1-based line and column (in characters). A tuple: there is one per YAML node, and
    tuples are several times cheaper to make than frozen dataclasses."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """One YAML document of one file: its plain value and where each part of it was written.

    ``values`` maps a path to the position of the value at that path (for a mapping or a
    sequence, where it starts); ``keys`` maps the path of a mapping entry to the position of
    its key. ``styles`` holds the YAML scalar style of string scalars that were quoted or block
    scalars (``'``, ``"``, ``|``, ``>``); plain scalars are absent. ``text`` is the whole file,
    kept (shared, not copied) so that a position inside a scalar can be computed on demand.
    """

    file: str
    value: object
    start: Position
    values: Mapping[Path, Position] = field(default_factory=dict)
    keys: Mapping[Path, Position] = field(default_factory=dict)
    styles: Mapping[Path, str] = field(default_factory=dict)
    text: str = field(default="", repr=False)

    def position(self, path: Path) -> Position:
        """The value at ``path``, or the nearest enclosing value that exists."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return self.start

    def key_position(self, path: Path) -> Position:
        """The key of the mapping entry at ``path``; its value or nearest parent otherwise."""
        found = self.keys.get(path)
        return found if found is not None else self.position(path)

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        """A problem pointing at the value (or with ``key``, the key) at ``path``."""
        pos = self.key_position(path) if key else self.position(path)
        return Problem(self.file, pos.line, pos.column, message)

    def locate(self, path: Path, offset: int) -> Position:
        """Where the character ``offset`` (0-based) of the string scalar at ``path`` was written.

        Accounts for the opening quote, escapes (``''``, ``\\"``), folded line breaks and block
        scalar headers by aligning the decoded value with the source text: source characters
        that do not match the next value character are skipped. This is exact for the usual
        cases (plain or quoted single-line scalars) and close for the exotic ones. An offset at
        or past the end points just after the last character.
        """
        start = self.values.get(path)
        value = _lookup(self.value, path)
        if start is None or not isinstance(value, str) or not self.text:
            return self.position(path)
        index = _index_of(self.text, start)
        if index is None:
            return start
        text = self.text
        i = index
        if self.styles.get(path) in ("'", '"'):
            i += 1  # the opening quote never matches a value character
        last = i  # source index just after the previous matched character
        for k, ch in enumerate(value):
            while i < len(text) and text[i] != ch:
                i += 1
            if i >= len(text):
                break
            if k == offset:
                return _position_at(text, i)
            i += 1
            last = i
        return _position_at(text, last)


def _lookup(value: object, path: Path) -> object:
    for part in path:
        in_dict = isinstance(value, dict) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if in_dict or in_list:
            value = value[part]  # type: ignore[index]
        else:
            return None
    return value


def _index_of(text: str, pos: Position) -> int | None:
    """Character index of a 1-based (line, column) in ``text``."""
    index = 0
    for _ in range(pos.line - 1):
        nl = text.find("\n", index)
        if nl < 0:
            return None
        index = nl + 1
    return index + pos.column - 1


def _position_at(text: str, index: int) -> Position:
    line_start = text.rfind("\n", 0, index) + 1
    return Position(text.count("\n", 0, index) + 1, index - line_start + 1)


# ------------------------------------------------------------------------------ envelope


class Metadata(_Strict):
    name: Name
    labels: Labels = Field(default_factory=dict)
    description: str | None = None


class WorkloadMetadata(Metadata):
    namespace: Name | None = None


# ------------------------------------------------------------------------------ inventory


class AddressEntry(_Strict):
    """An address with its validity interval ``[from, until)``."""

    address: str
    from_: Time | None = Field(default=None, alias="from")
    until: Time | None = None


Address = Annotated[
    Annotated[str, Tag("string")] | Annotated[AddressEntry, Tag("mapping")],
    Discriminator(_string_or_mapping),
]


class WorkloadSpec(_Strict):
    kind: Literal["host", "vm", "container", "pod", "cloud"]
    addresses: list[Address] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)
    enforcer: str | None = None
    mode: ModeText | None = None


class NetworkSpec(_Strict):
    cidrs: Annotated[list[str], Field(min_length=1)]
    except_: list[str] = Field(default_factory=list, alias="except")
    labels: Labels = Field(default_factory=dict)


class ServiceSpec(_Strict):
    ports: PortList


class SegmentSpec(_Strict):
    selector: SelectorText


class UserSpec(_Strict):
    labels: Labels = Field(default_factory=dict)
    sessions: list[AddressEntry] = Field(default_factory=list)


class UserGroupSpec(_Strict):
    members: list[str] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)


# ------------------------------------------------------------------------------ policy


class TierSpec(_Strict):
    order: float
    default_action: Literal["deny", "pass"] = Field(default="deny", alias="defaultAction")
    owners: list[str] = Field(default_factory=list)


_PEER_KEYS = ("selector", "segment", "network", "cidr", "users")


class PeerEntry(_Strict):
    """A peer written as a mapping with exactly one of its keys."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    selector: SelectorText | None = None
    segment: str | None = None
    network: str | None = None
    cidr: str | None = None
    users: SelectorText | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PeerEntry:
        given = [k for k in _PEER_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a peer needs exactly one of selector, segment, network, cidr, users"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


Peer = Annotated[
    Annotated[SelectorText, Tag("string")] | Annotated[PeerEntry, Tag("mapping")],
    Discriminator(_string_or_mapping),
]


class _Rule(_Strict):
    action: ActionText
    services: Annotated[list[str], Field(min_length=1)] | None = None
    ports: PortList | None = None
    expires: Time | None = None
    description: str | None = None


class IngressRule(_Rule):
    from_: list[Peer] | None = Field(default=None, alias="from")


class EgressRule(_Rule):
    to: list[Peer] | None = None


class PolicySpec(_Strict):
    tier: str
    order: float = 1000
    applies_to: SelectorText | None = Field(default=None, alias="appliesTo")
    mode: Literal["enforce", "staged"] = "enforce"
    ingress: list[IngressRule] | None = None
    egress: list[EgressRule] | None = None


class InvariantSpec(_Strict):
    from_: SelectorText = Field(alias="from")
    to: SelectorText
    ports: PortList | None = None


class AssertionSpec(_Strict):
    """Either a flow (``from``, ``to``, ``port``, ``expect``, ``at``) or one invariant
    (``never`` or ``always``); parse.py checks which, with a message naming what is missing."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["from", "to", "port", "expect"],
                    "not": {"anyOf": [{"required": ["never"]}, {"required": ["always"]}]},
                },
                {"required": ["never"], "not": {"required": ["always"]}},
                {"required": ["always"], "not": {"required": ["never"]}},
            ]
        }
    )

    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    port: PortText | None = None
    expect: Literal["allow", "deny"] | None = None
    at: Time | None = None
    never: InvariantSpec | None = None
    always: InvariantSpec | None = None


class FailsafeSpec(_Strict):
    direction: Literal["ingress", "egress"] | None = None
    ports: PortList
    cidrs: list[str] = Field(default_factory=list)
    description: str | None = None


class SettingsSpec(_Strict):
    default_action: Literal["deny", "allow"] = Field(default="deny", alias="defaultAction")
    default_mode: ModeText = Field(default="enforced", alias="defaultMode")
    cidr_matches_workloads: bool = Field(default=True, alias="cidrMatchesWorkloads")
    failsafe: list[FailsafeSpec] = Field(default_factory=list)


# ------------------------------------------------------------------------------ documents


class Document(_Strict):
    api_version: Literal["septum/v1"] = Field(alias="apiVersion")
    metadata: Metadata


class WorkloadDocument(Document):
    kind: Literal["Workload"]
    metadata: WorkloadMetadata
    spec: WorkloadSpec


class NetworkDocument(Document):
    kind: Literal["Network"]
    spec: NetworkSpec


class ServiceDocument(Document):
    kind: Literal["Service"]
    spec: ServiceSpec


class SegmentDocument(Document):
    kind: Literal["Segment"]
    spec: SegmentSpec


class TierDocument(Document):
    kind: Literal["Tier"]
    spec: TierSpec


class PolicyDocument(Document):
    kind: Literal["Policy"]
    spec: PolicySpec


class UserDocument(Document):
    kind: Literal["User"]
    spec: UserSpec = Field(default_factory=UserSpec)


class UserGroupDocument(Document):
    kind: Literal["UserGroup"]
    spec: UserGroupSpec


class AssertionDocument(Document):
    kind: Literal["Assertion"]
    spec: AssertionSpec


class SettingsDocument(Document):
    kind: Literal["Settings"]
    spec: SettingsSpec = Field(default_factory=SettingsSpec)


#: Document class per ``kind``.
KINDS: dict[str, type[Document]] = {
    "Workload": WorkloadDocument,
    "Network": NetworkDocument,
    "Service": ServiceDocument,
    "Segment": SegmentDocument,
    "Tier": TierDocument,
    "Policy": PolicyDocument,
    "User": UserDocument,
    "UserGroup": UserGroupDocument,
    "Assertion": AssertionDocument,
    "Settings": SettingsDocument,
}

#: Any document, discriminated by ``kind`` (what the JSON Schema describes).
AnyDocument = Annotated[
    WorkloadDocument
    | NetworkDocument
    | ServiceDocument
    | SegmentDocument
    | TierDocument
    | PolicyDocument
    | UserDocument
    | UserGroupDocument
    | AssertionDocument
    | SettingsDocument,
    Field(discriminator="kind"),
]
