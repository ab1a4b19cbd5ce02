"""Kubernetes manifests → Septum's model ("Kubernetes meaning" in ``semantics.md``).

::

    SourceDocuments (yaml/json, *List kinds flattened)
      ├─ Namespace ──────────────► namespace labels (kubernetes.io/metadata.name always)
      ├─ Pod / Deployment / ReplicaSet / StatefulSet / DaemonSet / Job / CronJob /
      │  ReplicationController ──► one Workload per *service* (top owner): replicas of one
      │                             service share one policy, so they are one endpoint
      ├─ NetworkPolicy ──────────► tier "networkpolicy" (allow rules, default deny once a
      │                             policy selects the pod for the direction)
      ├─ AdminNetworkPolicy ─────► tier "adminnetworkpolicy" (ordered by priority, first
      │                             match wins, default pass)
      ├─ BaselineAdminNetworkPolicy ► tier "baselineadminnetworkpolicy" (default pass)
      └─ Service + Ingress / Route ► exposures ({ingress-controller} → workload, ports)
    Settings: repository default allow; CIDR peers (ipBlock, networks) never match pods.

Identity: a workload is *shown* as ``namespace/name[Kind]`` (netpol-analyzer's naming) and
*named* ``namespace_name_kind`` (a valid Septum name: ``_`` never occurs in Kubernetes names,
so the mapping is one to one); a pod template carrying the annotation ``septum.io/workload``
(our own renderer's round trip) is named and shown by that annotation.
Its labels are the pod labels, the implicit ``septum.io/kind|name|namespace`` (unless the pod
already has them), and its namespace's labels under ``namespace.septum.io/<key>``, so that a
``namespaceSelector`` is an ordinary Septum selector. Every translated pod selector carries a
positive namespace term, so it never selects an external address.

Named ports resolve per pod: an ingress rule's named port against the pods the policy selects
(the policy is split by the resolutions of its subjects, each part with the same rules, so
first-match order is kept), an egress rule's against the peer pods (the rule is split into
consecutive rules with the same action, one per resolution, which is a union). A named port
that resolves nowhere matches nothing; a rule left with nothing to match is dropped (an empty
Septum rule would mean "anything").

Pods get a synthetic address from 240.0.0.0/4 (reserved, never routed): the class machinery
needs one, and with ``cidr_matches_workloads`` off no CIDR peer ever matches it.

Pure: documents in, model out; problems are reported with file, line and column.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from types import MappingProxyType

from septum.errors import Problem, SelectorSyntaxError, ValidationError
from septum.model.documents import Path, SourceDocument
from septum.model.resources import (
    ALL_PORTS,
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    AddressBinding,
    Mode,
    Peer,
    PeerKind,
    Policy,
    PortRange,
    Protocol,
    Repository,
    RepositoryDefault,
    Rule,
    ServicePort,
    Settings,
    Tier,
    TierDefault,
    Workload,
    WorkloadKind,
)
from septum.model.selector import Selector, parse_selector

__all__ = [
    "ADMIN_TIER",
    "BASELINE_TIER",
    "INGRESS_CONTROLLER",
    "NAMESPACE_LABEL_PREFIX",
    "NETWORKPOLICY_TIER",
    "WORKLOAD_ANNOTATION",
    "Exposure",
    "KubernetesCluster",
    "map_cluster",
]

NAMESPACE_LABEL_PREFIX = "namespace.septum.io/"
WORKLOAD_ANNOTATION = "septum.io/workload"
METADATA_NAME = "kubernetes.io/metadata.name"
ADMIN_TIER = "adminnetworkpolicy"
NETWORKPOLICY_TIER = "networkpolicy"
BASELINE_TIER = "baselineadminnetworkpolicy"
ENFORCER = "kubernetes"
INGRESS_CONTROLLER = "{ingress-controller}"
POD_NETWORK = IPv4Network("240.0.0.0/4")

_OWNER_KINDS = {
    "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob",
    "ReplicationController",
}
_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}

# The namespaces of the ingress controllers netpol-analyzer recognises (OpenShift's and
# nginx's): a namespaceSelector admitting one of them admits the controller.
_CONTROLLER_NAMESPACES: tuple[tuple[str, dict[str, str]], ...] = (
    ("openshift-ingress", {
        METADATA_NAME: "openshift-ingress-operator",
        "namespace.name": "openshift-ingress-operator",
        "network.openshift.io/policy-group": "ingress",
        "openshift.io/cluster-monitoring": "true",
    }),
    ("ingress-nginx", {
        METADATA_NAME: "ingress-nginx",
        "tier": "ingress",
        "app.kubernetes.io/part-of": "ingress-nginx",
    }),
)


@dataclass(frozen=True, slots=True)
class Exposure:
    """A workload reachable by the cluster's ingress controller through an Ingress or Route,
    on these TCP ports."""

    workload: str
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class KubernetesCluster:
    """The cluster as a Septum repository, plus what only Kubernetes has: exposures through
    the ingress controller (whose stand-in workloads are ``controllers``), and warnings about
    things read but not understood (never silently)."""

    repository: Repository
    exposures: tuple[Exposure, ...] = ()
    controllers: tuple[str, ...] = ()
    warnings: tuple[Problem, ...] = ()
    display: Mapping[str, str] = field(default_factory=dict)  # workload name -> shown name

    def shown(self, name: str) -> str:
        return self.display.get(name, name)


# ------------------------------------------------------------------------ document handling


@dataclass(slots=True)
class _Obj:
    """One Kubernetes object with where it was written."""

    doc: SourceDocument
    path: Path  # path of the object inside the document (``items[i]`` of a List)
    value: Mapping[str, object]
    listed_as: str = ""  # items of a ``PodList`` may omit their kind

    @property
    def kind(self) -> str:
        return str(self.value.get("kind") or self.listed_as)

    @property
    def meta(self) -> Mapping[str, object]:
        m = self.value.get("metadata")
        return m if isinstance(m, Mapping) else {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def namespace(self) -> str:
        ns = self.meta.get("namespace")
        return str(ns) if ns else "default"

    def problem(self, where: Path, message: str) -> Problem:
        pos = self.doc.position((*self.path, *where))
        return Problem(self.doc.file, pos.line, pos.column, message)


def _objects(docs: Iterable[SourceDocument]) -> Iterator[_Obj]:
    for doc in docs:
        value = doc.value
        if not isinstance(value, Mapping):
            continue
        kind = str(value.get("kind", ""))
        items = value.get("items")
        if kind.endswith("List") and isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, Mapping):
                    yield _Obj(doc, ("items", i), item, kind.removesuffix("List"))
        else:
            yield _Obj(doc, (), value)


class _Bad(Exception):
    """A problem at a path of the object being read."""

    def __init__(self, where: Path, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def _map(v: object, where: Path) -> Mapping[str, object]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _Bad(where, "expected a mapping")
    return v


def _list(v: object, where: Path) -> list[object]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _Bad(where, "expected a list")
    return v


def _labels(v: object, where: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, x in _map(v, where).items():
        if x is None or isinstance(x, Mapping | list):
            raise _Bad((*where, k), f"label {k!r} must have a string value")
        out[str(k)] = str(x).lower() if isinstance(x, bool) else str(x)
    return out


# -------------------------------------------------------------------------------- selectors


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label_terms(sel: Mapping[str, object], where: Path, prefix: str = "") -> list[str]:
    """A Kubernetes LabelSelector as Septum selector terms (a conjunction); keys get
    ``prefix`` (namespace labels live under NAMESPACE_LABEL_PREFIX)."""
    terms: list[str] = []
    for k, v in _labels(sel.get("matchLabels"), (*where, "matchLabels")).items():
        terms.append(f"{prefix}{k} == {_quote(v)}")
    for i, e in enumerate(_list(sel.get("matchExpressions"), (*where, "matchExpressions"))):
        at = (*where, "matchExpressions", i)
        expr = _map(e, at)
        key = f"{prefix}{expr.get('key', '')}"
        op = str(expr.get("operator", ""))
        values = [str(x) for x in _list(expr.get("values"), (*at, "values"))]
        choice = "{" + ", ".join(_quote(x) for x in sorted(values)) + "}"
        if op == "In":
            terms.append(f"{key} in {choice}" if values else "!all()")
        elif op == "NotIn":  # Kubernetes: an absent key is "not in"
            terms.append(f"!({key} in {choice})" if values else "all()")
        elif op == "Exists":
            terms.append(f"has({key})")
        elif op == "DoesNotExist":
            terms.append(f"!has({key})")
        else:
            raise _Bad((*at, "operator"), f"unknown selector operator {op!r}")
    return terms


def _parse(terms: Sequence[str], where: Path) -> Selector:
    text = " && ".join(f"({t})" for t in terms) if terms else "all()"
    try:
        return parse_selector(text)
    except SelectorSyntaxError as exc:
        raise _Bad(where, f"label selector cannot be read: {exc.message}") from None


def _in_namespace(ns: str) -> str:
    return f"{NAMESPACE_LABEL} == {_quote(ns)}"


_ANY_NAMESPACE = f"has({NAMESPACE_LABEL})"


def _pods(ns_terms: list[str] | None, same_ns: str | None, pod: Mapping[str, object] | None,
          where: Path) -> Selector:
    """Pods in namespaces selected by ``ns_terms`` (or in ``same_ns``) matching ``pod``."""
    terms = [_ANY_NAMESPACE] if ns_terms is not None else [_in_namespace(same_ns or "default")]
    terms += ns_terms or []
    if pod is not None:
        terms += _label_terms(pod, (*where, "podSelector"))
    return _parse(terms, where)


# ------------------------------------------------------------------------------- workloads


@dataclass(slots=True)
class _WorkloadDraft:
    name: str
    display: str
    namespace: str
    labels: dict[str, str]
    ports: list[tuple[str, Protocol, int]]  # named container ports
    origin: _Obj


def _template(obj: _Obj) -> tuple[Mapping[str, object], Path]:
    """The pod template (metadata + spec) of a workload object, and its path."""
    spec = _map(obj.value.get("spec"), ("spec",))
    if obj.kind == "Pod":
        return obj.value, ()
    if obj.kind == "CronJob":
        job = _map(spec.get("jobTemplate"), ("spec", "jobTemplate"))
        job_spec = _map(job.get("spec"), ("spec", "jobTemplate", "spec"))
        return _map(job_spec.get("template"), ("spec", "jobTemplate", "spec", "template")), (
            "spec", "jobTemplate", "spec", "template")
    return _map(spec.get("template"), ("spec", "template")), ("spec", "template")


def _container_ports(tmpl: Mapping[str, object], where: Path) -> list[tuple[str, Protocol, int]]:
    spec = _map(tmpl.get("spec"), (*where, "spec"))
    out: list[tuple[str, Protocol, int]] = []
    for i, c in enumerate(_list(spec.get("containers"), (*where, "spec", "containers"))):
        cw = (*where, "spec", "containers", i)
        for j, p in enumerate(_list(_map(c, cw).get("ports"), (*cw, "ports"))):
            port = _map(p, (*cw, "ports", j))
            name = port.get("name")
            number = port.get("containerPort")
            protocol = _PROTOCOLS.get(str(port.get("protocol", "TCP")).upper())
            if name and isinstance(number, int) and protocol is not None:
                out.append((str(name), protocol, number))
    return out


def _owner(obj: _Obj) -> tuple[str, str] | None:
    refs = _list(obj.meta.get("ownerReferences"), ("metadata", "ownerReferences"))
    chosen = None
    for r in refs:
        if (isinstance(r, Mapping) and r.get("kind") in _OWNER_KINDS
                and (chosen is None or r.get("controller"))):
            chosen = r
    if chosen is None:
        return None
    return str(chosen.get("kind")), str(chosen.get("name"))


def _septum_name(*parts: str) -> str:
    """``a_b_c``, lower case, characters outside Septum names replaced by ``-``."""
    text = "_".join(p.lower() for p in parts)
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-._") or "x"


def _workloads(objs: Sequence[_Obj]) -> list[_WorkloadDraft]:
    """One draft per top owner (or bare pod); replicas merge into their owner."""
    by_key = {(o.kind, o.namespace, o.name): o for o in objs}

    def top(o: _Obj) -> tuple[str, str, str]:
        key = (o.kind, o.namespace, o.name)
        seen = {key}
        cur = o
        while True:
            owner = _owner(cur)
            if owner is None:
                return key
            key = (owner[0], cur.namespace, owner[1])
            nxt = by_key.get(key)
            if nxt is None or key in seen:
                return key
            seen.add(key)
            cur = nxt

    drafts: dict[tuple[str, str, str], _WorkloadDraft] = {}
    for o in objs:
        kind, ns, name = top(o)
        tmpl, where = _template(o)
        meta = _map(tmpl.get("metadata"), (*where, "metadata"))
        labels = _labels(meta.get("labels"), (*where, "metadata", "labels"))
        annotations = _map(meta.get("annotations"), (*where, "metadata", "annotations"))
        own = annotations.get(WORKLOAD_ANNOTATION)
        display = str(own or f"{ns}/{name}[{kind}]")
        septum_name = str(own or _septum_name(ns, name, kind))
        ports = _container_ports(tmpl, where)
        found = drafts.get((kind, ns, name))
        if found is None:
            drafts[(kind, ns, name)] = _WorkloadDraft(septum_name, display, ns, labels, ports, o)
        else:
            for p in ports:
                if p not in found.ports:
                    found.ports.append(p)
    return sorted(drafts.values(), key=lambda d: d.name)


# ------------------------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class _Named:
    """A named port of a rule: ``protocol`` None (ANP namedPort) takes the container's."""

    name: str
    protocol: Protocol | None


def _resolve(w: _WorkloadDraft, n: _Named) -> ServicePort | None:
    for name, protocol, number in w.ports:
        if name == n.name and (n.protocol is None or n.protocol is protocol):
            return ServicePort(protocol, PortRange(number, number))
    return None


def _protocol(v: object, where: Path) -> Protocol:
    p = _PROTOCOLS.get(str(v if v is not None else "TCP").upper())
    if p is None:
        raise _Bad(where, f"unknown protocol {v!r} (TCP, UDP or SCTP)")
    return p


def _port_number(v: object, where: Path) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
        raise _Bad(where, f"port must be a number 1-65535, not {v!r}")
    return v


def _np_ports(ports: list[object], where: Path) -> tuple[list[ServicePort], list[_Named]]:
    numbered: list[ServicePort] = []
    named: list[_Named] = []
    for i, p in enumerate(ports):
        at = (*where, i)
        port = _map(p, at)
        protocol = _protocol(port.get("protocol"), (*at, "protocol"))
        value = port.get("port")
        end = port.get("endPort")
        if value is None:
            numbered.append(ServicePort(protocol, ALL_PORTS))
        elif isinstance(value, str) and not value.isdigit():
            named.append(_Named(value, protocol))
        else:
            first = _port_number(int(value) if isinstance(value, str) else value, (*at, "port"))
            last = first if end is None else _port_number(end, (*at, "endPort"))
            if last < first:
                raise _Bad((*at, "endPort"), "endPort is below port")
            numbered.append(ServicePort(protocol, PortRange(first, last)))
    return numbered, named


def _anp_ports(ports: list[object], where: Path) -> tuple[list[ServicePort], list[_Named]]:
    numbered: list[ServicePort] = []
    named: list[_Named] = []
    for i, p in enumerate(ports):
        at = (*where, i)
        port = _map(p, at)
        if "portNumber" in port:
            pn = _map(port["portNumber"], (*at, "portNumber"))
            n = _port_number(pn.get("port"), (*at, "portNumber", "port"))
            numbered.append(ServicePort(_protocol(pn.get("protocol"), (*at, "portNumber")),
                                        PortRange(n, n)))
        elif "portRange" in port:
            pr = _map(port["portRange"], (*at, "portRange"))
            a = _port_number(pr.get("start"), (*at, "portRange", "start"))
            b = _port_number(pr.get("end"), (*at, "portRange", "end"))
            if b < a:
                raise _Bad((*at, "portRange", "end"), "end is below start")
            numbered.append(ServicePort(_protocol(pr.get("protocol"), (*at, "portRange")),
                                        PortRange(a, b)))
        elif "namedPort" in port:
            named.append(_Named(str(port["namedPort"]), None))
        else:
            raise _Bad(at, "expected portNumber, portRange or namedPort")
    return numbered, named


# --------------------------------------------------------------------------------- rules


@dataclass(slots=True)
class _RuleDraft:
    """A rule before named ports are resolved. ``peers`` None: any peer (Kubernetes' absent
    ``from``/``to``); an empty list: matches nothing."""

    action: Action
    peers: list[Peer] | None
    numbered: list[ServicePort]
    named: list[_Named]
    any_port: bool  # no ports given: every port
    description: str | None = None


def _cidr_peers(cidr: object, excepts: list[object], where: Path) -> list[Peer]:
    try:
        net = ip_network(str(cidr), strict=False)
        minus = [ip_network(str(e), strict=False) for e in excepts]
    except ValueError as exc:
        raise _Bad(where, f"not a CIDR: {exc}") from None
    pieces: list[IPv4Network | IPv6Network] = [net]
    for e in minus:
        nxt: list[IPv4Network | IPv6Network] = []
        for piece in pieces:
            if e.version != piece.version or not piece.overlaps(e):
                nxt.append(piece)
            elif piece.subnet_of(e):  # type: ignore[arg-type]
                continue
            else:
                nxt.extend(piece.address_exclude(e))  # type: ignore[arg-type]
        pieces = nxt
    return [Peer(PeerKind.CIDR, cidr=p) for p in sorted(pieces, key=lambda n: (n.version, n))]


def _np_peers(peers: list[object], ns: str, where: Path) -> list[Peer]:
    out: list[Peer] = []
    for i, p in enumerate(peers):
        at = (*where, i)
        peer = _map(p, at)
        if "ipBlock" in peer:
            block = _map(peer["ipBlock"], (*at, "ipBlock"))
            out += _cidr_peers(block.get("cidr"), _list(block.get("except"),
                                                         (*at, "ipBlock", "except")),
                               (*at, "ipBlock"))
            continue
        ns_sel = peer.get("namespaceSelector")
        pod_sel = peer.get("podSelector")
        ns_terms = (None if ns_sel is None else
                    _label_terms(_map(ns_sel, (*at, "namespaceSelector")),
                                 (*at, "namespaceSelector"), NAMESPACE_LABEL_PREFIX))
        pod = None if pod_sel is None else _map(pod_sel, (*at, "podSelector"))
        if ns_terms is None and pod is None:
            raise _Bad(at, "a peer needs podSelector, namespaceSelector or ipBlock")
        out.append(Peer(PeerKind.SELECTOR, selector=_pods(ns_terms, ns, pod, at)))
    return out


def _anp_peers(peers: list[object], where: Path, egress: bool,
               warn: list[tuple[Path, str]]) -> list[Peer]:
    out: list[Peer] = []
    for i, p in enumerate(peers):
        at = (*where, i)
        peer = _map(p, at)
        if "namespaces" in peer:
            sel = _map(peer["namespaces"], (*at, "namespaces"))
            out.append(Peer(PeerKind.SELECTOR, selector=_pods(
                _label_terms(sel, (*at, "namespaces"), NAMESPACE_LABEL_PREFIX), None, None, at)))
        elif "pods" in peer:
            pods = _map(peer["pods"], (*at, "pods"))
            ns_sel = _map(pods.get("namespaceSelector"), (*at, "pods", "namespaceSelector"))
            out.append(Peer(PeerKind.SELECTOR, selector=_pods(
                _label_terms(ns_sel, (*at, "pods", "namespaceSelector"),
                             NAMESPACE_LABEL_PREFIX),
                None, _map(pods.get("podSelector"), (*at, "pods", "podSelector")),
                (*at, "pods"))))
        elif "networks" in peer and egress:
            for j, c in enumerate(_list(peer["networks"], (*at, "networks"))):
                out += _cidr_peers(c, [], (*at, "networks", j))
        else:
            what = next(iter(peer), "an empty peer")
            warn.append((at, f"peer {what!r} is not supported here; it matches nothing"))
    return out


def _finish_rules(
    drafts: list[_RuleDraft],
    egress: bool,
    workloads: Sequence[tuple[_WorkloadDraft, Mapping[str, str]]],
    subjects: Sequence[_WorkloadDraft],
) -> tuple[Rule, ...]:
    """Resolve named ports and build the rules (numbered by position). Ingress named ports
    resolve against ``subjects`` (all of which resolve them the same way: the caller split
    the policy), egress ones against the peer pods (split into one rule per resolution)."""
    rules: list[Rule] = []

    def emit(action: Action, peers: list[Peer] | None, services: list[ServicePort],
             description: str | None) -> None:
        if peers is not None and not peers:
            return  # matches no peer
        rules.append(Rule(action, len(rules), tuple(peers or ()),
                          tuple(sorted(set(services), key=str)), description=description))

    for d in drafts:
        if d.any_port:
            emit(d.action, d.peers, [], d.description)
            continue
        if d.numbered:
            emit(d.action, d.peers, d.numbered, d.description)
        if not d.named:
            continue
        if not egress:
            resolved = {r for n in d.named if subjects
                        for r in [_resolve(subjects[0], n)] if r is not None}
            if resolved:
                emit(d.action, d.peers, sorted(resolved, key=str), d.description)
            continue
        # egress: the destination is the peer; group peer pods by what the names resolve to
        groups: dict[ServicePort, list[str]] = defaultdict(list)
        for w, _ in workloads:
            for n in d.named:
                r = _resolve(w, n)
                if r is not None:
                    groups[r].append(w.name)
        for port, names in sorted(groups.items(), key=lambda kv: str(kv[0])):
            member = f"{NAME_LABEL} in {{{', '.join(_quote(x) for x in sorted(set(names)))}}}"
            peers = [
                Peer(PeerKind.SELECTOR, selector=parse_selector(f"({p.selector.text}) && "
                                                                f"({member})"))
                for p in (d.peers if d.peers is not None else
                          [Peer(PeerKind.SELECTOR, selector=parse_selector("all()"))])
                if p.kind is PeerKind.SELECTOR and p.selector is not None
            ]
            emit(d.action, peers, [port], d.description)
    return tuple(rules)


def _split_by_named_ports(
    subjects: list[_WorkloadDraft], ingress: list[_RuleDraft] | None
) -> list[list[_WorkloadDraft]]:
    """Subjects grouped by how they resolve every named port of the ingress rules."""
    names = sorted({n for d in ingress or () for n in d.named}, key=lambda n: (n.name,
                                                                              str(n.protocol)))
    if not names:
        return [subjects]
    groups: dict[tuple[ServicePort | None, ...], list[_WorkloadDraft]] = defaultdict(list)
    for w in subjects:
        groups[tuple(_resolve(w, n) for n in names)].append(w)
    return [groups[k] for k in sorted(groups, key=lambda k: tuple(str(x) for x in k))]


# -------------------------------------------------------------------------------- mapping


class _Mapper:
    def __init__(self, docs: Sequence[SourceDocument]) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.objs = list(_objects(docs))

    def run(self) -> KubernetesCluster:
        namespaces: dict[str, dict[str, str]] = {}
        workload_objs: list[_Obj] = []
        policies: list[_Obj] = []
        services: list[_Obj] = []
        exposers: list[_Obj] = []
        for o in self.objs:
            try:
                if o.kind == "Namespace":
                    labels = _labels(o.meta.get("labels"), ("metadata", "labels"))
                    labels[METADATA_NAME] = o.name
                    namespaces[o.name] = labels
                elif o.kind == "Pod" or o.kind in _OWNER_KINDS:
                    workload_objs.append(o)
                elif o.kind in ("NetworkPolicy", "AdminNetworkPolicy",
                                "BaselineAdminNetworkPolicy"):
                    policies.append(o)
                elif o.kind == "Service":
                    services.append(o)
                elif o.kind in ("Ingress", "Route"):
                    exposers.append(o)
            except _Bad as exc:
                self.problems.append(o.problem(exc.where, exc.message))

        drafts = self._guarded_workloads(workload_objs)
        for d in drafts:
            namespaces.setdefault(d.namespace, {METADATA_NAME: d.namespace})
        exposures = self._exposures(drafts, services, exposers) if exposers else []
        controllers: list[_WorkloadDraft] = []
        if exposures:
            for ns, labels in _CONTROLLER_NAMESPACES:
                namespaces.setdefault(ns, dict(labels))
                controllers.append(_WorkloadDraft(_septum_name("ingress-controller", ns),
                                                  INGRESS_CONTROLLER, ns, {}, [], exposers[0]))
        everything = [*drafts, *controllers]
        labelled = [(d, self._workload_labels(d, namespaces)) for d in everything]
        tiers: list[Tier] = []
        out_policies: list[Policy] = []
        for o in policies:
            try:
                out_policies += self._policy(o, labelled)
            except _Bad as exc:
                self.problems.append(o.problem(exc.where, exc.message))
        kinds = {o.kind for o in policies}
        if "AdminNetworkPolicy" in kinds:
            tiers.append(Tier(ADMIN_TIER, 0, TierDefault.PASS))
        if "NetworkPolicy" in kinds:
            tiers.append(Tier(NETWORKPOLICY_TIER, 1, TierDefault.DENY))
        if "BaselineAdminNetworkPolicy" in kinds:
            tiers.append(Tier(BASELINE_TIER, 2, TierDefault.PASS))
        if self.problems:
            raise ValidationError(self.problems)
        workloads = tuple(
            Workload(
                name=d.name,
                kind=WorkloadKind.POD,
                labels=MappingProxyType(dict(labels)),
                addresses=(AddressBinding(IPv4Address(int(POD_NETWORK.network_address) + i + 1)),),
                enforcer=ENFORCER,
                mode=Mode.ENFORCED,
                namespace=d.namespace,
            )
            for i, (d, labels) in enumerate(labelled)
        )
        repo = Repository(
            workloads=tuple(sorted(workloads, key=lambda w: w.name)),
            tiers=tuple(sorted(tiers, key=lambda t: t.name)),
            policies=tuple(sorted(out_policies, key=lambda p: p.name)),
            settings=Settings(default_action=RepositoryDefault.ALLOW,
                              cidr_matches_workloads=False),
        )
        display = MappingProxyType({d.name: d.display for d in everything})
        return KubernetesCluster(repo, tuple(exposures), tuple(c.name for c in controllers),
                                 tuple(self.warnings), display)

    def _guarded_workloads(self, objs: list[_Obj]) -> list[_WorkloadDraft]:
        good: list[_Obj] = []
        for o in objs:
            try:
                _template(o)
                _owner(o)
                good.append(o)
            except _Bad as exc:
                self.problems.append(o.problem(exc.where, exc.message))
        try:
            return _workloads(good)
        except _Bad as exc:  # pragma: no cover - template errors are caught above
            self.problems.append(good[0].problem(exc.where, exc.message))
            return []

    @staticmethod
    def _workload_labels(d: _WorkloadDraft, namespaces: Mapping[str, Mapping[str, str]]
                         ) -> dict[str, str]:
        labels = dict(d.labels)
        labels.setdefault(KIND_LABEL, WorkloadKind.POD.value)
        labels.setdefault(NAME_LABEL, d.name)
        labels[NAMESPACE_LABEL] = d.namespace
        for k, v in namespaces.get(d.namespace, {}).items():
            labels[NAMESPACE_LABEL_PREFIX + k] = v
        return labels

    # ------------------------------------------------------------------------- policies

    def _policy(self, o: _Obj, labelled: Sequence[tuple[_WorkloadDraft, Mapping[str, str]]]
                ) -> list[Policy]:
        spec = _map(o.value.get("spec"), ("spec",))
        warn: list[tuple[Path, str]] = []
        if o.kind == "NetworkPolicy":
            tier, order = NETWORKPOLICY_TIER, 0.0
            name = _septum_name("np", o.namespace, o.name)
            applies = _pods(None, o.namespace, _map(spec.get("podSelector"), ("spec",
                                                                              "podSelector")),
                            ("spec",))
            types = spec.get("policyTypes")
            if types is None:
                wanted = {"Ingress"} | ({"Egress"} if "egress" in spec else set())
            else:
                wanted = {str(t) for t in _list(types, ("spec", "policyTypes"))}
            ingress = egress = None
            if "Ingress" in wanted:
                ingress = [self._np_rule(r, o.namespace, ("spec", "ingress", i), "from")
                           for i, r in enumerate(_list(spec.get("ingress"), ("spec", "ingress")))]
            if "Egress" in wanted:
                egress = [self._np_rule(r, o.namespace, ("spec", "egress", i), "to")
                          for i, r in enumerate(_list(spec.get("egress"), ("spec", "egress")))]
        else:
            admin = o.kind == "AdminNetworkPolicy"
            tier = ADMIN_TIER if admin else BASELINE_TIER
            name = _septum_name("anp" if admin else "banp", o.name)
            if admin:
                prio = spec.get("priority")
                if not isinstance(prio, int) or isinstance(prio, bool) or not 0 <= prio <= 1000:
                    raise _Bad(("spec", "priority"), "priority must be a number 0-1000")
                order = float(prio)
            else:
                order = 0.0
            applies = self._subject(_map(spec.get("subject"), ("spec", "subject")))
            allowed = {"Allow", "Deny", "Pass"} if admin else {"Allow", "Deny"}
            ingress = [self._anp_rule(r, ("spec", "ingress", i), "from", False, allowed, warn)
                       for i, r in enumerate(_list(spec.get("ingress"), ("spec", "ingress")))]
            egress = [self._anp_rule(r, ("spec", "egress", i), "to", True, allowed, warn)
                      for i, r in enumerate(_list(spec.get("egress"), ("spec", "egress")))]
            ingress = ingress or None
            egress = egress or None
        for where, message in warn:
            self.warnings.append(o.problem(where, message))
        subjects = [w for w, labels in labelled if applies.matches(labels)]
        parts = _split_by_named_ports(subjects, ingress)
        out: list[Policy] = []
        for k, part in enumerate(parts):
            part_applies = applies
            suffix = ""
            if len(parts) > 1:
                member = ", ".join(_quote(w.name) for w in part)
                part_applies = parse_selector(f"({applies.text}) && ({NAME_LABEL} in {{{member}}})")
                suffix = f"_part{k + 1}"
            out.append(Policy(
                name=f"{name}{suffix}",
                tier=tier,
                order=order,
                applies_to=part_applies,
                ingress=None if ingress is None else _finish_rules(ingress, False, labelled,
                                                                   part),
                egress=None if egress is None else _finish_rules(egress, True, labelled, part),
                description=(f"{o.kind} {o.namespace}/{o.name}" if o.kind == "NetworkPolicy"
                             else f"{o.kind} {o.name}"),
            ))
        return out

    @staticmethod
    def _np_rule(r: object, ns: str, where: Path, peers_key: str) -> _RuleDraft:
        rule = _map(r, where)
        raw_peers = rule.get(peers_key)
        peers = (None if not raw_peers else
                 _np_peers(_list(raw_peers, (*where, peers_key)), ns, (*where, peers_key)))
        raw_ports = _list(rule.get("ports"), (*where, "ports"))
        numbered, named = _np_ports(raw_ports, (*where, "ports"))
        return _RuleDraft(Action.ALLOW, peers, numbered, named, not raw_ports)

    @staticmethod
    def _anp_rule(r: object, where: Path, peers_key: str, egress: bool, allowed: set[str],
                  warn: list[tuple[Path, str]]) -> _RuleDraft:
        rule = _map(r, where)
        action = str(rule.get("action", ""))
        if action not in allowed:
            raise _Bad((*where, "action"),
                       f"action must be one of {', '.join(sorted(allowed))}, not {action!r}")
        peers = _anp_peers(_list(rule.get(peers_key), (*where, peers_key)), (*where, peers_key),
                           egress, warn)
        raw_ports = _list(rule.get("ports"), (*where, "ports"))
        numbered, named = _anp_ports(raw_ports, (*where, "ports"))
        return _RuleDraft(Action(action.lower()), peers, numbered, named, not raw_ports,
                          str(rule["name"]) if rule.get("name") else None)

    @staticmethod
    def _subject(subject: Mapping[str, object]) -> Selector:
        where: Path = ("spec", "subject")
        if "namespaces" in subject:
            sel = _map(subject["namespaces"], (*where, "namespaces"))
            return _pods(_label_terms(sel, (*where, "namespaces"), NAMESPACE_LABEL_PREFIX),
                         None, None, where)
        if "pods" in subject:
            pods = _map(subject["pods"], (*where, "pods"))
            return _pods(
                _label_terms(_map(pods.get("namespaceSelector"),
                                  (*where, "pods", "namespaceSelector")),
                             (*where, "pods", "namespaceSelector"), NAMESPACE_LABEL_PREFIX),
                None, _map(pods.get("podSelector"), (*where, "pods", "podSelector")),
                (*where, "pods"))
        raise _Bad(where, "subject needs namespaces or pods")

    # ------------------------------------------------------------------------- exposure

    def _exposures(self, drafts: Sequence[_WorkloadDraft], services: Sequence[_Obj],
                   exposers: Sequence[_Obj]) -> list[Exposure]:
        by_service = {(s.namespace, s.name): s for s in services}
        found: dict[str, set[ServicePort]] = defaultdict(set)
        for o in exposers:
            try:
                for svc_name, port in self._backends(o):
                    svc = by_service.get((o.namespace, svc_name))
                    if svc is None:
                        self.warnings.append(o.problem(("spec",),
                                                       f"service {svc_name!r} is not defined"))
                        continue
                    for w, sp in self._service_targets(svc, port, drafts):
                        found[w].add(sp)
            except _Bad as exc:
                self.problems.append(o.problem(exc.where, exc.message))
        return [Exposure(w, tuple(sorted(p, key=str))) for w, p in sorted(found.items()) if p]

    @staticmethod
    def _backends(o: _Obj) -> Iterator[tuple[str, object]]:
        """(service name, port: number, name, or None for every port) per backend."""
        spec = _map(o.value.get("spec"), ("spec",))
        if o.kind == "Route":
            port = _map(spec.get("port"), ("spec", "port")).get("targetPort")
            targets = [_map(spec.get("to"), ("spec", "to")),
                       *(_map(b, ("spec", "alternateBackends", i)) for i, b in
                         enumerate(_list(spec.get("alternateBackends"),
                                         ("spec", "alternateBackends"))))]
            for t in targets:
                if t.get("name") and t.get("kind", "Service") == "Service":
                    yield str(t["name"]), ("route", port)
            return
        backends: list[Mapping[str, object]] = []
        if "defaultBackend" in spec:
            backends.append(_map(spec["defaultBackend"], ("spec", "defaultBackend")))
        for i, r in enumerate(_list(spec.get("rules"), ("spec", "rules"))):
            http = _map(_map(r, ("spec", "rules", i)).get("http"), ("spec", "rules", i, "http"))
            for j, p in enumerate(_list(http.get("paths"), ("spec", "rules", i, "http",
                                                             "paths"))):
                backends.append(_map(_map(p, ("spec", "rules", i, "http", "paths", j))
                                     .get("backend"), ("spec", "rules", i, "http", "paths", j)))
        for b in backends:
            svc = _map(b.get("service"), ("spec",))
            if svc.get("name"):
                port = _map(svc.get("port"), ("spec",))
                yield str(svc["name"]), ("ingress", port.get("number", port.get("name")))

    @staticmethod
    def _service_targets(svc: _Obj, port: object, drafts: Sequence[_WorkloadDraft]
                         ) -> Iterator[tuple[str, ServicePort]]:
        spec = _map(svc.value.get("spec"), ("spec",))
        selector = _labels(spec.get("selector"), ("spec", "selector"))
        if not selector:
            return
        how, value = port if isinstance(port, tuple) else ("ingress", None)
        chosen: list[Mapping[str, object]] = []
        for i, p in enumerate(_list(spec.get("ports"), ("spec", "ports"))):
            sp = _map(p, ("spec", "ports", i))
            if str(sp.get("protocol", "TCP")).upper() != "TCP":
                continue
            keys = ("port", "name") if how == "ingress" else ("targetPort", "name", "port")
            if value is None or any(sp.get(k) == value for k in keys):
                chosen.append(sp)
        for d in drafts:
            if d.namespace != svc.namespace or any(d.labels.get(k) != v
                                                   for k, v in selector.items()):
                continue
            for sp in chosen:
                target = sp.get("targetPort", sp.get("port"))
                if isinstance(target, str) and not target.isdigit():
                    r = _resolve(d, _Named(target, Protocol.TCP))
                    if r is not None:
                        yield d.name, r
                elif target is not None:
                    n = int(target)  # type: ignore[call-overload]
                    yield d.name, ServicePort(Protocol.TCP, PortRange(n, n))


def map_cluster(docs: Sequence[SourceDocument]) -> KubernetesCluster:
    """Map Kubernetes manifests onto Septum's model (module docstring). Kinds other than the
    ones listed there are ignored. Raises ValidationError with file:line:column for objects
    that cannot be read. Cost: O(objects + policies · workloads) (selector matching for
    named-port resolution and subjects)."""
    return _Mapper(docs).run()

