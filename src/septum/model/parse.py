"""Documents → the validated, frozen model (first lowering stage).

``parse_documents`` takes documents already read from YAML (values plus positions, see
:mod:`septum.sources.yamldoc`) and returns a :class:`~septum.model.resources.Repository`, or
raises :class:`~septum.errors.ValidationError` with *every* problem found, each pointing at a
file, line and column. It never returns a partial repository, and no other exception escapes
for bad input. Pure: no I/O.

Passes::

    SourceDocument ──envelope──► kind ──pydantic──► *Document ──build──► resources.*
         (apiVersion, kind)         (shape, types)         (selectors, CIDRs, ports, labels,
                                                            times, names, references)

Checks that need all documents (duplicate names, references between documents, one Settings,
addresses held twice) run after every document has been read, so that documents may refer to
each other in any order and across files.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any, Generic, TypeVar, get_args

import pydantic
from pydantic import BaseModel

from septum.errors import Problem, SelectorSyntaxError, ValidationError
from septum.model import documents as d
from septum.model.documents import Path, SourceDocument
from septum.model.resources import (
    ALL_PORTS,
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    AddressBinding,
    Assertion,
    Direction,
    Expect,
    FailsafeEntry,
    FlowAssertion,
    Invariant,
    InvariantKind,
    IPAddress,
    IPNetwork,
    Mode,
    Network,
    Origin,
    Peer,
    PeerKind,
    Policy,
    PolicyMode,
    PortRange,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    Segment,
    Service,
    ServicePort,
    Settings,
    Tier,
    TierDefault,
    User,
    UserGroup,
    Workload,
    WorkloadKind,
)
from septum.model.selector import ALL, Selector, parse_selector

__all__ = [
    "InvalidValue",
    "UnresolvedReferences",
    "parse_address",
    "parse_cidr",
    "parse_documents",
    "parse_service_port",
    "parse_time",
]

D = TypeVar("D", bound=d.Document)


class UnresolvedReferences(ValidationError):
    """Raised instead of returning when references were left unchecked
    (``check_references=False``) and some do not resolve: a repository with a rule peer or
    service silently dropped would allow more than was written."""


class InvalidValue(ValueError):
    """A value that does not parse; the message is meant for the user as is."""


# ------------------------------------------------------------------------ value parsers


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(?P<zone>[Zz]|[+-]\d{2}:\d{2})?$"
)


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with a zone (``2026-12-31T00:00:00Z``). Naive times are rejected:
    their meaning would depend on the clock of whoever evaluates the policy."""
    m = _RFC3339.match(text)
    if m is None:
        raise InvalidValue(f"invalid time {text!r}: expected RFC 3339, e.g. 2026-12-31T00:00:00Z")
    if m.group("zone") is None:
        raise InvalidValue(f"time {text!r} has no zone: add Z or an offset such as +01:00")
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:  # e.g. month 13
        raise InvalidValue(f"invalid time {text!r}: {exc}") from None


def parse_address(text: str) -> IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        raise InvalidValue(f"invalid IP address {text!r}") from None


def parse_cidr(text: str) -> IPNetwork:
    """A network; a bare address is a /32 or /128. Host bits set are an error, because
    ``10.0.0.1/8`` is almost always a typo for something else than ``10.0.0.0/8``."""
    try:
        network = ip_network(text, strict=False)
    except ValueError:
        raise InvalidValue(f"invalid CIDR {text!r}") from None
    if ip_interface(text).ip != network.network_address:
        raise InvalidValue(f"CIDR {text!r} has host bits set (the network is {network})")
    return network


_PROTOCOLS = {p.value: p for p in Protocol}


def _port_number(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise InvalidValue(f"invalid port {text!r} in {whole!r}")
    number = int(text)
    if number > 65535:
        raise InvalidValue(f"port {number} out of range 0..65535 in {whole!r}")
    return number


def parse_service_port(text: str) -> ServicePort:
    """``tcp/443``, ``udp/8000-8099``, ``tcp`` (every port), ``icmp``, ``icmpv6``, ``any``."""
    if text == "any":
        return ServicePort(None)
    name, slash, ports = text.partition("/")
    protocol = _PROTOCOLS.get(name)
    if protocol is None:
        hint = difflib.get_close_matches(name.lower(), [*_PROTOCOLS, "any"], n=1)
        raise InvalidValue(
            f"unknown protocol {name!r} in {text!r}: expected tcp, udp, sctp, icmp, icmpv6 or any"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    if not slash:
        return ServicePort(protocol)
    if not protocol.has_ports:
        raise InvalidValue(f"{protocol.value} has no ports: write {protocol.value!r} alone")
    first_text, dash, last_text = ports.partition("-")
    first = _port_number(first_text, text)
    last = _port_number(last_text, text) if dash else first
    if first > last:
        raise InvalidValue(f"reversed port range in {text!r}: the first port must be ≤ the last")
    return ServicePort(protocol, PortRange(first, last))


_LABEL_KEY = re.compile(d.LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(d.LABEL_VALUE_PATTERN)
_RESERVED_PREFIX = "septum.io/"


def _label_key_problem(key: str) -> str | None:
    if key.startswith(_RESERVED_PREFIX):
        return f"label key {key!r} is reserved: septum.io/ labels are set by Septum"
    prefix, _, _ = key.rpartition("/")
    if _LABEL_KEY.match(key) is None or len(prefix) > 253:
        return (
            f"invalid label key {key!r}: an optional DNS prefix and '/', then at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


# ------------------------------------------------------------------ pydantic → problems


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _fields_at(cls: type[BaseModel], loc: Iterable[object]) -> list[str]:
    """Field names (YAML spelling) of the model(s) at a pydantic error location."""
    models: list[type[BaseModel]] = [cls]
    for part in loc:
        if not isinstance(part, str) or part in d.UNION_TAGS:
            continue  # list indexes and union tags do not change the model
        found: list[type[BaseModel]] = []
        for model in models:
            for name, info in model.model_fields.items():
                if part in (name, info.alias):
                    found.extend(_models_in(info.annotation))
        models = found
    return sorted({info.alias or name for m in models for name, info in m.model_fields.items()})


def _split_loc(value: object, loc: Sequence[object]) -> tuple[Path, tuple[object, ...]]:
    """Split a pydantic ``loc`` into the longest path that exists in ``value`` and the rest.

    Union tags (``string``/``mapping``) are dropped: they name a branch, not data."""
    path: list[object] = []
    rest = list(loc)
    current = value
    while rest:
        part = rest[0]
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]  # type: ignore[index]
        elif part in d.UNION_TAGS:
            rest.pop(0)
            continue
        else:
            break
        path.append(part)
        rest.pop(0)
    return tuple(path), tuple(rest)


def _field_name(path: Sequence[object]) -> str:
    for part in reversed(path):
        if isinstance(part, str) and part not in d.UNION_TAGS and part != "[key]":
            return part
    return "document"


def _type_name(value: object) -> str:
    names = {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _describe_input(value: object) -> str:
    if isinstance(value, dict | list):
        return f"a {_type_name(value)}"
    if value is None:
        return "null"
    return f"{_type_name(value)} {value!r}"


def _pydantic_problem(
    doc: SourceDocument, cls: type[d.Document], value: object, error: Any
) -> Problem:
    loc: tuple[object, ...] = tuple(error["loc"])
    kind: str = error["type"]
    given = error.get("input")
    ctx: dict[str, Any] = error.get("ctx") or {}
    path, rest = _split_loc(value, loc)
    name = _field_name((*path, *rest))
    in_labels = len(path) >= 2 and path[-2] == "labels"

    if kind == "missing":
        missing = _field_name(rest) if rest else name
        where = _field_name(path) if path else ""
        message = f"missing required field {missing!r}" + (f" in {where}" if where else "")
        return doc.problem(path, message, key=bool(path))
    if kind == "extra_forbidden":
        unknown = str(path[-1])
        allowed = _fields_at(cls, loc[:-1])
        close = difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if path == ("metadata", "namespace"):
            hint = ": only a Workload has a namespace"
        elif {unknown, *allowed} >= {"from", "to"}:  # "to" in an ingress rule, or vice versa
            side = (
                "an ingress rule takes 'from'" if unknown == "to" else "an egress rule takes 'to'"
            )
            hint = f" ({side})"
        return doc.problem(path, f"unknown field {unknown!r}{hint}", key=True)
    if rest == ("[key]",):
        return doc.problem(path, f"a key must be a string, not {_describe_input(given)}", key=True)
    if kind == "string_type":
        if in_labels:
            text = str(given).lower() if isinstance(given, bool) else str(given)
            message = f'label value for {name!r} must be a string: write "{text}"'
        elif name in ("ports", "port"):
            message = f"a port must be text such as tcp/443, not {_describe_input(given)}"
        else:
            message = f"{name} must be a string, not {_describe_input(given)}"
    elif kind in ("int_type", "float_type", "int_parsing", "float_parsing"):
        message = f"{name} must be a number, not {_describe_input(given)}"
    elif kind == "finite_number":
        message = f"{name} must be a finite number"
    elif kind == "bool_type":
        message = f"{name} must be true or false, not {_describe_input(given)}"
    elif kind == "list_type":
        message = f"{name} must be a list, not {_describe_input(given)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        what = "a string or a mapping" if loc and loc[-1] == "mapping" else "a mapping"
        message = f"{name} must be {what}, not {_describe_input(given)}"
    elif kind == "literal_error":
        message = f"invalid {name} {given!r}: expected {ctx.get('expected', '?')}"
    elif kind == "string_pattern_mismatch" and name in ("name", "namespace"):
        message = (
            f"invalid {name} {given!r}: use lowercase letters, digits, '-', '.' and '_', "
            "starting and ending with a letter or digit"
        )
    elif kind == "string_too_long":
        message = f"{name} is too long (at most {ctx.get('max_length')} characters)"
    elif kind == "too_short":
        message = f"{name} must not be empty"
        if name in ("ports", "services"):
            message += " (omit it to allow any service)"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    else:
        message = f"{name}: {error['msg']}"
    return doc.problem(path, message)


def _without_typo_echoes(errors: Sequence[Any]) -> list[Any]:
    """Drop "missing 'address'" when the same mapping has an unknown key ``adress``: one typo
    should be one problem, and "unknown field 'adress' (did you mean 'address'?)" says it."""
    unknown: dict[tuple[object, ...], list[str]] = {}
    for error in errors:
        if error["type"] == "extra_forbidden":
            unknown.setdefault(tuple(error["loc"][:-1]), []).append(str(error["loc"][-1]))
    kept = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and difflib.get_close_matches(
            str(loc[-1]), unknown.get(loc[:-1], []), n=1, cutoff=0.6
        ):
            continue
        kept.append(error)
    return kept


# ---------------------------------------------------------------------------- the parser


@dataclass(frozen=True, slots=True)
class _Entry(Generic[D]):
    """A document that passed the shape check, with where it came from."""

    doc: SourceDocument
    model: D

    @property
    def name(self) -> str:
        return self.model.metadata.name

    @property
    def origin(self) -> Origin:
        return Origin(self.doc.file, self.doc.start.line, self.doc.start.column)

    def where(self) -> str:
        pos = self.doc.position(("metadata", "name"))
        return f"{self.doc.file}:{pos.line}"


@dataclass
class _Parser:
    problems: list[Problem] = field(default_factory=list)
    entries: dict[str, list[_Entry[Any]]] = field(default_factory=dict)
    #: Every name written per kind, even in documents that failed validation, so that an
    #: invalid Tier does not also produce "unknown tier" errors in every policy that uses it.
    names: dict[str, set[str]] = field(default_factory=dict)
    check_references: bool = True
    #: Unknown references found while not checking them (see UnresolvedReferences).
    unresolved: list[Problem] = field(default_factory=list)

    def report(self, doc: SourceDocument, path: Path, message: str, *, key: bool = False) -> None:
        self.problems.append(doc.problem(path, message, key=key))

    # ---- pass 1: envelope and shape, per document

    def read(self, doc: SourceDocument) -> None:
        value = doc.value
        if not isinstance(value, dict):
            self.report(
                doc,
                (),
                "a document must be a mapping with apiVersion, kind, "
                f"metadata and spec, not {_describe_input(value)}",
            )
            return
        if "apiVersion" not in value:
            self.report(doc, (), f"missing apiVersion (expected {d.API_VERSION!r})")
        elif value["apiVersion"] != d.API_VERSION:
            self.report(
                doc,
                ("apiVersion",),
                f"unsupported apiVersion {value['apiVersion']!r}: expected {d.API_VERSION!r}",
            )
        kind = value.get("kind")
        if kind is None:
            self.report(doc, (), f"missing kind (one of {', '.join(d.KINDS)})")
            return
        if not isinstance(kind, str) or kind not in d.KINDS:
            close = difflib.get_close_matches(str(kind), list(d.KINDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.report(
                doc, ("kind",), f"unknown kind {kind!r}{hint}: expected one of {', '.join(d.KINDS)}"
            )
            return
        metadata = value.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            self.names.setdefault(kind, set()).add(metadata["name"])
        # apiVersion problems are reported above; do not report them twice.
        checked = {**value, "apiVersion": d.API_VERSION}
        cls = d.KINDS[kind]
        try:
            model = cls.model_validate(checked)
        except pydantic.ValidationError as exc:
            for error in _without_typo_echoes(exc.errors()):
                self.problems.append(_pydantic_problem(doc, cls, checked, error))
            return
        self.entries.setdefault(kind, []).append(_Entry(doc, model))

    # ---- helpers for pass 2

    def unique(self, kind: str) -> list[_Entry[Any]]:
        """Entries of a kind with duplicate names reported (pointing at the second) and
        dropped."""
        first: dict[str, _Entry[Any]] = {}
        for entry in self.entries.get(kind, []):
            seen = first.get(entry.name)
            if seen is not None:
                self.report(
                    entry.doc,
                    ("metadata", "name"),
                    f"duplicate {kind} name {entry.name!r} (first defined at {seen.where()})",
                )
            else:
                first[entry.name] = entry
        return list(first.values())

    def reference(
        self, doc: SourceDocument, path: Path, kind: str, name: str, note: str = ""
    ) -> bool:
        """Whether ``name`` names a ``kind``; reports an unknown name (with a suggestion)."""
        known = self.names.get(kind, set())
        if name in known:
            return True
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problem = doc.problem(path, f"unknown {kind.lower()} {name!r}{note}{hint}")
        (self.problems if self.check_references else self.unresolved).append(problem)
        return False

    def value(self, doc: SourceDocument, path: Path, parse: Any, text: str) -> Any:
        """Run a value parser; report its InvalidValue at ``path``; None when invalid."""
        try:
            return parse(text)
        except InvalidValue as exc:
            self.report(doc, path, str(exc))
            return None

    def time(self, doc: SourceDocument, path: Path, text: str | None) -> datetime | None:
        return None if text is None else self.value(doc, path, parse_time, text)

    def selector(self, doc: SourceDocument, path: Path, text: str) -> Selector | None:
        try:
            return parse_selector(text)
        except SelectorSyntaxError as exc:
            pos = doc.locate(path, exc.column - 1)
            self.problems.append(
                Problem(doc.file, pos.line, pos.column, f"invalid selector: {exc.message}")
            )
            return None

    def ports(self, doc: SourceDocument, path: Path, texts: Sequence[str]) -> list[ServicePort]:
        found: list[ServicePort] = []
        for i, text in enumerate(texts):
            port = self.value(doc, (*path, i), parse_service_port, text)
            if port is not None:
                found.append(port)
        return found

    def cidrs(self, doc: SourceDocument, path: Path, texts: Sequence[str]) -> list[IPNetwork]:
        found: list[IPNetwork] = []
        for i, text in enumerate(texts):
            network = self.value(doc, (*path, i), parse_cidr, text)
            if network is not None:
                found.append(network)
        return found

    def labels(self, doc: SourceDocument, path: Path, labels: Mapping[str, str]) -> dict[str, str]:
        good: dict[str, str] = {}
        for key, value in labels.items():
            problem = _label_key_problem(key)
            if problem is not None:
                self.report(doc, (*path, key), problem, key=True)
            elif _LABEL_VALUE.match(value) is None:
                self.report(
                    doc,
                    (*path, key),
                    f"invalid label value {value!r} for {key!r}: at most 63 "
                    "letters, digits, '-', '_' or '.'",
                )
            else:
                good[key] = value
        return good

    def all_labels(self, entry: _Entry[Any], *, spec: bool) -> dict[str, str]:
        """metadata.labels with spec.labels merged over them (``spec``: the kind has them)."""
        merged = self.labels(entry.doc, ("metadata", "labels"), entry.model.metadata.labels)
        if spec:
            merged.update(self.labels(entry.doc, ("spec", "labels"), entry.model.spec.labels))
        return merged

    def bindings(
        self, doc: SourceDocument, path: Path, entries: Sequence[str | d.AddressEntry]
    ) -> list[tuple[AddressBinding, Path]]:
        found: list[tuple[AddressBinding, Path]] = []
        for i, entry in enumerate(entries):
            where = (*path, i)
            if isinstance(entry, str):
                address = self.value(doc, where, parse_address, entry)
                if address is not None:
                    found.append((AddressBinding(address), where))
                continue
            address = self.value(doc, (*where, "address"), parse_address, entry.address)
            start = self.time(doc, (*where, "from"), entry.from_)
            until = self.time(doc, (*where, "until"), entry.until)
            if start is not None and until is not None and until <= start:
                self.report(doc, (*where, "until"), "until must be later than from")
            elif address is not None:
                found.append((AddressBinding(address, start, until), (*where, "address")))
        return found

    # ---- pass 2: build

    def build(self) -> Repository:
        settings = self.build_settings()
        services = {e.name: self.build_service(e) for e in self.unique("Service")}
        segments = {e.name: self.build_segment(e) for e in self.unique("Segment")}
        tiers = [self.build_tier(e) for e in self.unique("Tier")]
        networks = [self.build_network(e) for e in self.unique("Network")]
        workloads = self.build_workloads(settings)
        groups = [self.build_group(e) for e in self.unique("UserGroup")]
        users = self.build_users(groups)
        policies = [self.build_policy(e, services, segments) for e in self.unique("Policy")]
        assertions = [self.build_assertion(e) for e in self.unique("Assertion")]
        by_name = _by_name
        return Repository(
            workloads=by_name(workloads),
            networks=by_name(networks),
            services=by_name(services.values()),
            segments=by_name(s for s in segments.values() if s is not None),
            tiers=by_name(tiers),
            policies=by_name(policies),
            users=by_name(users),
            user_groups=by_name(groups),
            assertions=by_name(assertions),
            settings=settings,
        )

    def build_settings(self) -> Settings:
        entries: list[_Entry[d.SettingsDocument]] = self.entries.get("Settings", [])
        if not entries:
            return Settings()
        first = entries[0]
        for extra in entries[1:]:
            self.report(
                extra.doc,
                ("kind",),
                f"more than one Settings document (the first is at {first.where()})",
            )
        spec = first.model.spec
        failsafe = []
        for i, item in enumerate(spec.failsafe):
            path: Path = ("spec", "failsafe", i)
            failsafe.append(
                FailsafeEntry(
                    direction=None if item.direction is None else Direction(item.direction),
                    services=tuple(self.ports(first.doc, (*path, "ports"), item.ports)),
                    cidrs=tuple(self.cidrs(first.doc, (*path, "cidrs"), item.cidrs)),
                    description=item.description,
                )
            )
        return Settings(
            default_action=RepositoryDefault(spec.default_action),
            default_mode=Mode(spec.default_mode),
            failsafe=tuple(failsafe),
            cidr_matches_workloads=spec.cidr_matches_workloads,
            origin=first.origin,
        )

    def build_service(self, e: _Entry[d.ServiceDocument]) -> Service:
        self.all_labels(e, spec=False)
        ports = self.ports(e.doc, ("spec", "ports"), e.model.spec.ports)
        return Service(e.name, tuple(ports), e.model.metadata.description, e.origin)

    def build_segment(self, e: _Entry[d.SegmentDocument]) -> Segment | None:
        self.all_labels(e, spec=False)
        selector = self.selector(e.doc, ("spec", "selector"), e.model.spec.selector)
        if selector is None:
            return None
        return Segment(e.name, selector, e.model.metadata.description, e.origin)

    def build_tier(self, e: _Entry[d.TierDocument]) -> Tier:
        self.all_labels(e, spec=False)
        spec = e.model.spec
        return Tier(
            e.name,
            float(spec.order),
            TierDefault(spec.default_action),
            tuple(spec.owners),
            e.model.metadata.description,
            e.origin,
        )

    def build_network(self, e: _Entry[d.NetworkDocument]) -> Network:
        labels = self.all_labels(e, spec=True)
        labels.update({KIND_LABEL: "network", NAME_LABEL: e.name})
        spec = e.model.spec
        return Network(
            name=e.name,
            labels=_frozen(labels),
            cidrs=tuple(self.cidrs(e.doc, ("spec", "cidrs"), spec.cidrs)),
            excepts=tuple(self.cidrs(e.doc, ("spec", "except"), spec.except_)),
            description=e.model.metadata.description,
            origin=e.origin,
        )

    def build_workloads(self, settings: Settings) -> list[Workload]:
        workloads: list[Workload] = []
        held: dict[IPAddress, list[tuple[AddressBinding, str, _Entry[Any]]]] = {}
        for e in self.unique("Workload"):
            spec: d.WorkloadSpec = e.model.spec
            metadata: d.WorkloadMetadata = e.model.metadata
            labels = self.all_labels(e, spec=True)
            labels.update({KIND_LABEL: spec.kind, NAME_LABEL: e.name})
            if metadata.namespace is not None:
                labels[NAMESPACE_LABEL] = metadata.namespace
            bindings = self.bindings(e.doc, ("spec", "addresses"), spec.addresses)
            for binding, path in bindings:
                for other, other_name, other_entry in held.get(binding.address, []):
                    if other_name != e.name and _overlap(binding, other):
                        self.report(
                            e.doc,
                            path,
                            f"address {binding.address} is also held by workload "
                            f"{other_name!r} ({other_entry.where()}) at overlapping "
                            "times",
                        )
                        break
                held.setdefault(binding.address, []).append((binding, e.name, e))
            workloads.append(
                Workload(
                    name=e.name,
                    kind=WorkloadKind(spec.kind),
                    labels=_frozen(labels),
                    addresses=tuple(b for b, _ in bindings),
                    enforcer=spec.enforcer,
                    mode=settings.default_mode if spec.mode is None else Mode(spec.mode),
                    namespace=metadata.namespace,
                    description=metadata.description,
                    origin=e.origin,
                )
            )
        return workloads

    def build_group(self, e: _Entry[d.UserGroupDocument]) -> UserGroup:
        self.all_labels(e, spec=False)
        labels = self.labels(e.doc, ("spec", "labels"), e.model.spec.labels)
        members = e.model.spec.members
        for i, member in enumerate(members):
            self.reference(e.doc, ("spec", "members", i), "User", member)
        return UserGroup(
            e.name, tuple(members), _frozen(labels), e.model.metadata.description, e.origin
        )

    def build_users(self, groups: Sequence[UserGroup]) -> list[User]:
        # Groups apply in name order, so when two groups disagree the result is deterministic
        # (the group whose name sorts last wins); the user's own labels win over all groups.
        inherited: dict[str, dict[str, str]] = {}
        for group in sorted(groups, key=lambda g: g.name):
            for member in group.members:
                inherited.setdefault(member, {}).update(group.labels)
        users: list[User] = []
        for e in self.unique("User"):
            labels = dict(inherited.get(e.name, {}))
            labels.update(self.all_labels(e, spec=True))
            labels.update({KIND_LABEL: "user", NAME_LABEL: e.name})
            sessions = self.bindings(e.doc, ("spec", "sessions"), e.model.spec.sessions)
            users.append(
                User(
                    e.name,
                    _frozen(labels),
                    tuple(b for b, _ in sessions),
                    e.model.metadata.description,
                    e.origin,
                )
            )
        return users

    def build_policy(
        self,
        e: _Entry[d.PolicyDocument],
        services: Mapping[str, Service],
        segments: Mapping[str, Segment | None],
    ) -> Policy:
        self.all_labels(e, spec=False)
        spec = e.model.spec
        self.reference(e.doc, ("spec", "tier"), "Tier", spec.tier)
        applies_to = ALL
        if spec.applies_to is not None:
            applies_to = self.selector(e.doc, ("spec", "appliesTo"), spec.applies_to) or ALL

        def rules(
            direction: str,
            written: Sequence[d.IngressRule | d.EgressRule] | None,
        ) -> tuple[Rule, ...] | None:
            if written is None:
                return None
            return tuple(
                self.build_rule(e.doc, ("spec", direction, i), i, rule, services, segments)
                for i, rule in enumerate(written)
            )

        return Policy(
            name=e.name,
            tier=spec.tier,
            order=float(spec.order),
            applies_to=applies_to,
            mode=PolicyMode(spec.mode),
            ingress=rules("ingress", spec.ingress),
            egress=rules("egress", spec.egress),
            description=e.model.metadata.description,
            origin=e.origin,
        )

    def build_rule(
        self,
        doc: SourceDocument,
        path: Path,
        index: int,
        rule: d.IngressRule | d.EgressRule,
        services: Mapping[str, Service],
        segments: Mapping[str, Segment | None],
    ) -> Rule:
        if isinstance(rule, d.IngressRule):
            side, written = "from", rule.from_
        else:
            side, written = "to", rule.to
        peers = [
            p
            for i, peer in enumerate(written or [])
            if (p := self.build_peer(doc, (*path, side, i), peer, segments)) is not None
        ]
        flat: list[ServicePort] = []
        for i, ref in enumerate(rule.services or []):
            if self.reference(doc, (*path, "services", i), "Service", ref) and ref in services:
                flat.extend(services[ref].ports)
        flat.extend(self.ports(doc, (*path, "ports"), rule.ports or []))
        pos = doc.position(path)
        return Rule(
            action=Action(rule.action),
            index=index,
            peers=tuple(peers),
            services=tuple(dict.fromkeys(flat)),  # de-duplicated, first occurrence kept
            service_refs=tuple(rule.services or ()),
            expires=self.time(doc, (*path, "expires"), rule.expires),
            description=rule.description,
            origin=Origin(doc.file, pos.line, pos.column),
        )

    def build_peer(
        self,
        doc: SourceDocument,
        path: Path,
        peer: str | d.PeerEntry,
        segments: Mapping[str, Segment | None],
    ) -> Peer | None:
        if isinstance(peer, str):
            selector = self.selector(doc, path, peer)
            return None if selector is None else Peer(PeerKind.SELECTOR, selector=selector)
        if peer.selector is not None:
            selector = self.selector(doc, (*path, "selector"), peer.selector)
            return None if selector is None else Peer(PeerKind.SELECTOR, selector=selector)
        if peer.users is not None:
            selector = self.selector(doc, (*path, "users"), peer.users)
            return None if selector is None else Peer(PeerKind.USERS, selector=selector)
        if peer.segment is not None:
            self.reference(doc, (*path, "segment"), "Segment", peer.segment)
            segment = segments.get(peer.segment)
            if segment is None:
                return None
            return Peer(PeerKind.SEGMENT, selector=segment.selector, ref=peer.segment)
        if peer.network is not None:
            if not self.reference(doc, (*path, "network"), "Network", peer.network):
                return None
            return Peer(PeerKind.NETWORK, ref=peer.network)
        assert peer.cidr is not None  # PeerEntry guarantees exactly one key
        cidr = self.value(doc, (*path, "cidr"), parse_cidr, peer.cidr)
        return None if cidr is None else Peer(PeerKind.CIDR, cidr=cidr)

    def build_assertion(self, e: _Entry[d.AssertionDocument]) -> Assertion:
        self.all_labels(e, spec=False)
        spec, doc = e.model.spec, e.doc
        check: FlowAssertion | Invariant | None = None
        flow_fields = {
            k: v
            for k, v in (
                ("from", spec.from_),
                ("to", spec.to),
                ("port", spec.port),
                ("expect", spec.expect),
            )
            if v is not None
        }
        invariants = [k for k in ("never", "always") if getattr(spec, k) is not None]
        if len(invariants) == 2:
            self.report(
                doc,
                ("spec", _later(doc, ("spec",), invariants)),
                "an assertion takes never or always, not both",
                key=True,
            )
        elif invariants and (flow_fields or spec.at is not None):
            extra = next(iter(flow_fields), "at")
            self.report(
                doc,
                ("spec", extra),
                f"{extra!r} belongs to a flow assertion; an invariant "
                f"({invariants[0]}) takes from, to and ports inside it",
                key=True,
            )
        elif invariants:
            check = self.build_invariant(doc, invariants[0], getattr(spec, invariants[0]))
        elif missing := [k for k in ("from", "to", "port", "expect") if k not in flow_fields]:
            self.report(
                doc,
                ("spec",),
                f"a flow assertion needs {', '.join(missing)} (or write never/always)",
                key=True,
            )
        else:
            check = self.build_flow(doc, flow_fields, spec.at)
        return Assertion(e.name, check or _PLACEHOLDER, e.model.metadata.description, e.origin)

    def build_flow(
        self, doc: SourceDocument, fields: Mapping[str, str], at: str | None
    ) -> FlowAssertion | None:
        source, target, port = fields["from"], fields["to"], fields["port"]
        for key, endpoint in (("from", source), ("to", target)):
            try:
                parse_address(endpoint)
            except InvalidValue:
                self.reference(
                    doc,
                    ("spec", key),
                    "Workload",
                    endpoint,
                    ": neither a workload name nor an IP address",
                )
        service = self.value(doc, ("spec", "port"), parse_service_port, port)
        if service is not None:
            if service.protocol is None:
                self.report(
                    doc, ("spec", "port"), "an assertion checks one protocol and port, not 'any'"
                )
                service = None
            elif service.protocol.has_ports and service.ports.first != service.ports.last:
                self.report(
                    doc,
                    ("spec", "port"),
                    f"an assertion checks one port: write e.g. "
                    f"{service.protocol.value}/443, not {port!r}",
                )
                service = None
        when = self.time(doc, ("spec", "at"), at)
        if service is None:
            return None
        return FlowAssertion(source, target, service, Expect(fields["expect"]), when)

    def build_invariant(
        self, doc: SourceDocument, kind: str, spec: d.InvariantSpec
    ) -> Invariant | None:
        path: Path = ("spec", kind)
        source = self.selector(doc, (*path, "from"), spec.from_)
        target = self.selector(doc, (*path, "to"), spec.to)
        ports = self.ports(doc, (*path, "ports"), spec.ports or [])
        if source is None or target is None:
            return None
        return Invariant(InvariantKind(kind), source, target, tuple(ports))


#: Stands in for an assertion check that failed validation (never returned to a caller:
#: any problem makes parse_documents raise).
_PLACEHOLDER = FlowAssertion("", "", ServicePort(None, ALL_PORTS), Expect.DENY)


def _later(doc: SourceDocument, parent: Path, keys: Sequence[str]) -> str:
    """Of several keys of one mapping, the one written last (to point at the second)."""
    return max(keys, key=lambda k: doc.key_position((*parent, k)))


def _overlap(a: AddressBinding, b: AddressBinding) -> bool:
    """Whether [from, until) intervals intersect; None is unbounded."""
    a_starts_before_b_ends = (
        b.valid_until is None or a.valid_from is None or (a.valid_from < b.valid_until)
    )
    b_starts_before_a_ends = (
        a.valid_until is None or b.valid_from is None or (b.valid_from < a.valid_until)
    )
    return a_starts_before_b_ends and b_starts_before_a_ends


_T = TypeVar("_T", Workload, Network, Service, Segment, Tier, Policy, User, UserGroup, Assertion)


def _by_name(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(sorted(items, key=lambda item: item.name))


def _frozen(labels: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(sorted(labels.items())))


def parse_documents(docs: Sequence[SourceDocument], *, check_references: bool = True) -> Repository:
    """Validate documents and build the repository they describe.

    ``docs`` in load order (files sorted, documents in file order): for duplicates, the later
    one is reported. ``check_references=False`` leaves "unknown name" problems out of the
    ValidationError; the file loader uses it when some file could not be read, where they
    would be noise. A repository with unresolved references is still never returned: then
    UnresolvedReferences (a ValidationError carrying those problems) is raised.

    Raises ValidationError with every problem found. Cost: linear in the size of the
    documents, plus one selector parse per distinct selector text.
    """
    parser = _Parser(check_references=check_references)
    for doc in docs:
        parser.read(doc)
    repository = parser.build()
    if parser.problems:
        raise ValidationError(parser.problems)
    if parser.unresolved:
        raise UnresolvedReferences(parser.unresolved)
    return repository
