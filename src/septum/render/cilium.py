"""Septum → Cilium: CiliumClusterwideNetworkPolicy, CiliumCIDRGroup (and audit mode).

Cilium has no tiers and no order: an endpoint selected by some policy for a direction drops
what no allow rule allows, and a deny rule wins over every allow. Septum's ordered tiers are
mapped onto that honestly::

    allow rule  → ``ingress``/``egress`` spec for appliesTo ∧ ¬(subjects of earlier tiers
                  whose default is deny: those flows never reach this tier)
    deny rule   → ``ingressDeny``/``egressDeny``, narrowed by every earlier allow (and pass
                  of its tier) that shadows it in Septum; when the narrowing has no exact
                  Cilium form the deny is kept whole and reported (it denies more)
    tier default deny      → nothing to write: Cilium's default deny, once selected
    repository default     → one policy selecting every enforced endpoint with an empty rule
                             per direction (so each is selected); plus, for ``allow``, an
                             allow-all for endpoints no deny-default tier applies to
    Network                → CiliumCIDRGroup, referenced by ``cidrGroupRef``

Label keys: pod labels as written; the namespace (``septum.io/namespace``) is
``k8s:io.kubernetes.pod.namespace``; namespace labels ``namespace.septum.io/<key>`` are
``k8s:io.cilium.k8s.namespace.labels.<key>``. Clusterwide policies are used throughout, so a
selector without a namespace term means every namespace, as in Septum.

Modes: idle, visibility and test workloads are left out of every subject (their verdict is
always "allowed"); when every evaluated workload is in test or visibility mode, Cilium's
agent-wide ``policy-audit-mode`` is enabled instead (a ``cilium-config`` ConfigMap fragment)
and they are rendered as enforced, so Cilium logs their would-be drops. Selective workloads
get an allow-all besides the deny rules. Everything approximated is a Limitation.

Pure: no I/O. Cost: O(resolve) + O(rules² · peers) for the shadowing checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from septum.engine.resolve import ResolvedPolicyRules, ResolvedTier, resolve_policy
from septum.model.resources import (
    NAME_LABEL,
    Action,
    Direction,
    Mode,
    PeerKind,
    Repository,
    RepositoryDefault,
    Rule,
    ServicePort,
    TierDefault,
)
from septum.model.selector import Selector, parse_selector
from septum.render.enforced import enforced_tiers, mode_exclusions
from septum.render.kubernetes import (
    Inventory,
    dns_label,
    expand,
    loss,
    port_bounds,
    rule_source,
    split_ports,
)
from septum.render.labelselector import (
    DEFAULT_MAX_TERMS,
    NAMESPACE_NAME_LABEL,
    Bias,
    LabelSelector,
    Operator,
    Requirement,
    SelectorTranslation,
    Translations,
    label_value_problem,
)
from septum.render.manifests import Approximation, Limitation, Manifest, Rendering

__all__ = ["CiliumRenderSettings", "render_cilium"]

CILIUM_API_VERSION = "cilium.io/v2"
CIDR_GROUP_API_VERSION = "cilium.io/v2alpha1"
POD_NAMESPACE_KEY = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_LABELS_KEY = "k8s:io.cilium.k8s.namespace.labels."


@dataclass(frozen=True, slots=True)
class CiliumRenderSettings:
    """Options of :func:`render_cilium`.

    ``default_namespace``: where a workload without namespace lives. ``audit_mode``: enable
    Cilium's agent-wide policy audit mode when every evaluated workload is in test or
    visibility mode. ``cilium_namespace``: where the ``cilium-config`` ConfigMap lives.
    """

    default_namespace: str = "default"
    name_prefix: str = "septum"
    audit_mode: bool = True
    cilium_namespace: str = "kube-system"
    closed_world_patterns: bool = True
    max_selector_terms: int = DEFAULT_MAX_TERMS


def _namespace_key(key: str) -> str:
    if key == NAMESPACE_NAME_LABEL:
        return POD_NAMESPACE_KEY
    return NAMESPACE_LABELS_KEY + key


def _pod_key(key: str) -> str:
    return key


def _conj(*texts: str) -> Selector:
    """The conjunction of selector texts, parsed (canonical texts always parse)."""
    return parse_selector(" && ".join(f"({t})" for t in texts))


class _CiliumRenderer:
    """One rendering; not reused across calls."""

    def __init__(self, repo: Repository, at: datetime, settings: CiliumRenderSettings) -> None:
        self.repo = repo
        self.at = at
        self.s = settings
        self.inv = Inventory.of(repo, at, settings.default_namespace)
        self.limits: list[Limitation] = list(self.inv.limitations)
        self.policies: list[Manifest] = []
        self.extra: list[Manifest] = []
        self.groups: dict[str, str] = {}  # network name -> CIDR group name
        evaluated = [w for w in repo.workloads if w.mode is not Mode.IDLE]
        auditing = [w for w in evaluated if w.mode in (Mode.TEST, Mode.VISIBILITY)]
        self.audit = bool(
            settings.audit_mode
            and auditing
            and len(auditing) == len(evaluated)
            and any(w.mode is Mode.TEST for w in auditing)
        )
        unenforced_modes = (Mode.IDLE,) if self.audit else (Mode.IDLE, Mode.VISIBILITY, Mode.TEST)
        modes = mode_exclusions(
            repo,
            unenforced_modes,
            "left out of every policy subject (nothing enforced); Cilium's audit "
            "mode is per agent or per endpoint (`cilium-dbg endpoint config <id> "
            "PolicyAuditMode=Enabled`), and other workloads are enforced",
        )
        self.unenforced, self.selective = modes.unenforced, modes.selective
        self.limits.extend(modes.limitations)
        self._translations = Translations(
            self.inv.known_values if self.s.closed_world_patterns else None,
            self.s.max_selector_terms,
        )
        #: per direction, the subjects of deny-default tiers (flows there never go further)
        self.closed: dict[Direction, list[str]] = {}

    # ------------------------------------------------------------------ selectors

    def translate(self, selector: Selector, bias: Bias) -> SelectorTranslation:
        return self._translations(selector, bias)

    def endpoint_selectors(
        self, source: str, selector: Selector, bias: Bias, exclude: Sequence[str]
    ) -> list[dict[str, Any]]:
        t = self.translate(selector, bias)
        if not t.exact:
            self.limits.append(
                Limitation(
                    source,
                    f"selector {selector.text!r} not exactly expressible",
                    Approximation.WIDENED if bias is Bias.SUPERSET else Approximation.NARROWED,
                    "; ".join(t.problems),
                )
            )
        if t.closed_world:
            self.limits.append(
                Limitation(
                    source,
                    f"selector {selector.text!r} rewritten over the inventory's label values",
                    Approximation.REWRITTEN,
                    "exact for the current inventory; re-render when labels change",
                )
            )
        out: list[dict[str, Any]] = []
        for term in t.terms:
            merged = term.merged(_pod_key, _namespace_key)
            if exclude:
                merged = merged.with_requirements(
                    (Requirement(NAME_LABEL, Operator.NOT_IN, tuple(sorted(exclude))),)
                )
            out.append(merged.to_manifest())
        return out

    def group(self, network: str) -> str | None:
        if network not in self.groups:
            cidrs = expand(self.inv.network_ranges(network))
            if not cidrs:
                return None
            name = dns_label(f"{self.s.name_prefix}-net-{network}", 253)
            self.groups[network] = name
            self.extra.append(
                {
                    "apiVersion": CIDR_GROUP_API_VERSION,
                    "kind": "CiliumCIDRGroup",
                    "metadata": {
                        "name": name,
                        "annotations": {"septum.io/source": f"network/{network}"},
                    },
                    "spec": {"externalCIDRs": [str(c) for c in cidrs]},
                }
            )
        return self.groups.get(network)

    # ------------------------------------------------------------------ rules

    def peers(self, source: str, rule: Rule, direction: Direction) -> dict[str, Any] | None:
        """The peer fields of a Cilium rule (``{}``: every peer); None: matches nothing."""
        side = "from" if direction is Direction.INGRESS else "to"
        if not rule.peers or any(
            p.selector is not None and p.selector.is_all and p.kind is not PeerKind.USERS
            for p in rule.peers
        ):
            return {f"{side}Entities": ["all"]}
        bias = Bias.SUPERSET if rule.action is Action.DENY else Bias.SUBSET
        endpoints: list[dict[str, Any]] = []
        cidr_set: list[dict[str, Any]] = []
        for peer in rule.peers:
            if peer.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT):
                assert peer.selector is not None
                endpoints.extend(self.endpoint_selectors(source, peer.selector, bias, ()))
                for n in self.repo.networks:
                    if peer.selector.matches(n.labels) and (g := self.group(n.name)):
                        cidr_set.append({"cidrGroupRef": g})
            elif peer.kind is PeerKind.NETWORK:
                assert peer.ref is not None
                if g := self.group(peer.ref):
                    cidr_set.append({"cidrGroupRef": g})
            elif peer.kind is PeerKind.CIDR:
                assert peer.cidr is not None
                cidr_set.append({"cidr": str(peer.cidr)})
                holders = self.inv.holders((peer.cidr,))
                if holders and self.repo.settings.cidr_matches_workloads:
                    names = [n for n in holders if not label_value_problem(n)]
                    if names:
                        endpoints.append(
                            LabelSelector(
                                (), (Requirement(NAME_LABEL, Operator.IN, tuple(names)),)
                            ).to_manifest()
                        )
                    self.limits.append(
                        Limitation(
                            source,
                            f"cidr {peer.cidr} also matches managed workloads",
                            Approximation.REWRITTEN
                            if len(names) == len(holders)
                            else loss(rule.action, True),
                            f"CIDR rules never select endpoints: rendered as endpoint selectors "
                            f"for {holders} (their addresses at the render time)",
                        )
                    )
            else:  # users
                assert peer.selector is not None
                held = sorted(
                    {
                        str(b.address) + ("/32" if b.address.version == 4 else "/128")
                        for u in self.repo.users
                        if peer.selector.matches(u.labels)
                        for b in u.sessions
                        if b.valid_at(self.at)
                    }
                )
                cidr_set.extend({"cidr": c} for c in held)
                self.limits.append(
                    Limitation(
                        source,
                        f"users peer {peer}",
                        Approximation.REWRITTEN,
                        "rendered as the addresses its users' sessions hold at the render "
                        "time; re-render when sessions change",
                    )
                )
        out: dict[str, Any] = {}
        if endpoints:
            out[f"{side}Endpoints"] = list({repr(e): e for e in endpoints}.values())
        if cidr_set:
            out[f"{side}CIDRSet"] = list({repr(c): c for c in cidr_set}.values())
        return out or None

    def ports(self, source: str, rule: Rule) -> list[dict[str, Any]] | bool | None:
        kept, lost = split_ports(rule.services)
        if lost:
            self.limits.append(
                Limitation(
                    source,
                    f"services {[str(s) for s in lost]} not rendered",
                    loss(rule.action, True),
                    "Cilium matches ICMP by type only; a whole ICMP protocol has no form",
                )
            )
        if kept is None:
            return None
        if not kept:
            return False
        return [{"ports": [_port(s) for s in kept]}]

    def cilium_rule(self, source: str, rule: Rule, direction: Direction) -> dict[str, Any] | None:
        ports = self.ports(source, rule)
        if ports is False:
            return None
        peers = self.peers(source, rule, direction)
        if peers is None:
            return None
        if ports:
            assert isinstance(ports, list)
            peers["toPorts"] = ports
        return peers

    # ------------------------------------------------------------------ ordering

    def render(self) -> Rendering:
        tiers, staged = enforced_tiers(resolve_policy(self.repo, self.at))
        self.limits.extend(staged)
        for d in Direction:
            self.direction(d, tiers)
        self.repository_default(tiers)
        manifests: list[Manifest] = []
        if self.audit:
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "cilium-config", "namespace": self.s.cilium_namespace},
                    "data": {"policy-audit-mode": "true"},
                }
            )
            self.limits.append(
                Limitation(
                    "settings",
                    "test/visibility modes rendered as Cilium policy audit mode",
                    Approximation.REWRITTEN,
                    f"every evaluated workload is in test or visibility mode: the ConfigMap "
                    f"{self.s.cilium_namespace}/cilium-config key policy-audit-mode=true is "
                    "emitted; merge it into the existing ConfigMap (kubectl patch), do not "
                    "replace it, and restart the agents",
                )
            )
        manifests.extend(sorted(self.extra, key=lambda m: str(m["metadata"]["name"])))
        merged: dict[str, Manifest] = {}
        for m in self.policies:  # one CCNP per source policy, specs in rendering order
            name = m["metadata"]["name"]
            if name in merged:
                merged[name]["specs"].extend(m["specs"])
            else:
                merged[name] = m
        manifests.extend(merged[k] for k in sorted(merged))
        limits = sorted(dict.fromkeys(self.limits), key=lambda x: (x.source, x.what, x.detail))
        return Rendering("cilium", tuple(manifests), tuple(limits))

    def emit(self, name: str, source: str, specs: list[dict[str, Any]]) -> None:
        if specs:
            self.policies.append(
                {
                    "apiVersion": CILIUM_API_VERSION,
                    "kind": "CiliumClusterwideNetworkPolicy",
                    "metadata": {
                        "name": dns_label(f"{self.s.name_prefix}-{name}", 253),
                        "annotations": {"septum.io/source": source},
                    },
                    "specs": specs,
                }
            )

    def direction(
        self, d: Direction, tiers: Sequence[tuple[ResolvedTier, Sequence[ResolvedPolicyRules]]]
    ) -> None:
        allow_key = d.value
        deny_key = f"{d.value}Deny"
        #: earlier rules that decide before a later deny: (subject, rule) of allows and
        #: of passes of the current tier
        shadows: list[tuple[Selector, Rule, str]] = []
        closed: list[str] = []  # subjects of earlier deny-default tiers (for direction d)
        passed_through: list[str] = []  # tiers whose passes are lost by `closed`
        for rt, policies in tiers:
            tier_passes: list[tuple[Selector, Rule, str]] = []
            for rp in policies:
                rules = rp.rules(d)
                if rules is None:
                    continue
                p = rp.policy
                for rule in rules:
                    source = rule_source(p.name, d, rule)
                    if rule.expires is not None:
                        self.limits.append(
                            Limitation(
                                source,
                                f"rule expires at {rule.expires.isoformat()}",
                                Approximation.REWRITTEN,
                                "Cilium has no expiry: exact until then; re-render after it",
                            )
                        )
                    if rule.action is Action.LOG:
                        self.limits.append(
                            Limitation(source, "log rule", Approximation.REWRITTEN, "left out")
                        )
                        continue
                    if rule.action is Action.PASS:
                        tier_passes.append((p.applies_to, rule, source))
                        self.limits.append(
                            Limitation(
                                source,
                                "pass rule",
                                Approximation.REWRITTEN,
                                "no Cilium form: later denies of the tier are narrowed by it",
                            )
                        )
                        if any(
                            r.action is Action.ALLOW
                            for later in policies
                            for r in later.rules(d) or ()
                            if (later is not rp or r.index > rule.index)
                        ):
                            self.limits.append(
                                Limitation(
                                    source,
                                    "pass before allow rules of its tier",
                                    Approximation.WIDENED,
                                    "Cilium allows what the later allow rules match even when "
                                    "this pass would have sent the flow to the next tier",
                                )
                            )
                        continue
                    body = self.cilium_rule(source, rule, d)
                    if body is None:
                        continue
                    if rule.action is Action.ALLOW:
                        subject = _conj(p.applies_to.text, *(f"!({c})" for c in closed))
                        if passed_through:
                            self.limits.append(
                                Limitation(
                                    source,
                                    "allow after tiers with pass rules and a deny default",
                                    Approximation.NARROWED,
                                    f"rendered only for workloads tiers {passed_through} do "
                                    "not apply to; flows passed by them are not allowed here",
                                )
                            )
                        selectors = self.endpoint_selectors(
                            f"policy/{p.name}", subject, Bias.SUBSET, self.unenforced
                        )
                        specs = [{"endpointSelector": s, allow_key: [body]} for s in selectors]
                        shadows.append((p.applies_to, rule, source))
                    else:  # deny
                        body = self.narrow(
                            source, p.applies_to, rule, body, d, [*shadows, *tier_passes]
                        )
                        if body is None:
                            continue
                        selectors = self.endpoint_selectors(
                            f"policy/{p.name}", p.applies_to, Bias.SUPERSET, self.unenforced
                        )
                        specs = [{"endpointSelector": s, deny_key: [body]} for s in selectors]
                    self.emit(f"{rt.tier.name}-{p.name}", f"policy/{p.name}", specs)
            applied = [rp.policy.applies_to.text for rp in policies if rp.rules(d) is not None]
            if rt.tier.default_action is TierDefault.DENY and applied:
                closed.append(" || ".join(f"({a})" for a in applied))
                if tier_passes:
                    passed_through.append(rt.tier.name)
        self.closed[d] = closed

    def narrow(
        self,
        source: str,
        subject: Selector,
        rule: Rule,
        body: dict[str, Any],
        d: Direction,
        shadows: Sequence[tuple[Selector, Rule, str]],
    ) -> dict[str, Any] | None:
        """The deny rule without what earlier allows/passes decide first (Septum order).

        Exact cases: the earlier rule applies to every workload this deny applies to (or to
        none of them), and either matches every peer with ports covering the deny's (the
        deny is shadowed: dropped) or covers the deny's ports and has selector peers only
        (the deny's selector peers get ``&& !(earlier)``). Otherwise the deny is kept whole
        and reported. O(shadows · workloads)."""
        mine = [w for w in self.repo.workloads if subject.matches(w.labels)]
        extra_not: list[str] = []
        for other_subject, other, other_source in shadows:
            both = [w for w in mine if other_subject.matches(w.labels)]
            if not both or not _services_overlap(rule.services, other.services):
                continue
            uniform = len(both) == len(mine)
            covers_ports = _services_cover(other.services, rule.services)
            every_peer = not other.peers or any(
                p.selector is not None and p.selector.is_all and p.kind is not PeerKind.USERS
                for p in other.peers
            )
            if uniform and covers_ports and every_peer:
                self.limits.append(
                    Limitation(
                        source,
                        f"deny shadowed by {other_source}",
                        Approximation.REWRITTEN,
                        "never decides in Septum's order: left out",
                    )
                )
                return None
            selector_only = all(
                p.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT) for p in other.peers
            ) and not any(
                p.selector is not None and p.selector.matches(n.labels)
                for p in other.peers
                for n in self.repo.networks
            )
            mine_selectors = bool(rule.peers) and all(
                p.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT) for p in rule.peers
            )
            if uniform and covers_ports and selector_only and mine_selectors:
                extra_not.append(
                    " || ".join(f"({p.selector.text})" for p in other.peers if p.selector)
                )
                continue
            self.limits.append(
                Limitation(
                    source,
                    f"deny overlaps the earlier {other_source}",
                    Approximation.NARROWED,
                    "Cilium's deny wins over every allow: flows the earlier rule decides first "
                    "in Septum are denied here",
                )
            )
        if not extra_not:
            return body
        side = "from" if d is Direction.INGRESS else "to"
        endpoints: list[dict[str, Any]] = []
        for p in rule.peers:
            assert p.selector is not None
            narrowed = _conj(p.selector.text, *(f"!({x})" for x in extra_not))
            endpoints.extend(self.endpoint_selectors(source, narrowed, Bias.SUPERSET, ()))
        out = {k: v for k, v in body.items() if k != f"{side}Endpoints"}
        if endpoints:
            out[f"{side}Endpoints"] = list({repr(e): e for e in endpoints}.values())
        if not any(k.startswith(side) for k in out):
            return None
        self.limits.append(
            Limitation(
                source,
                "deny narrowed by earlier allow rules",
                Approximation.REWRITTEN,
                "Cilium denies win regardless of order: the peers earlier rules decide first "
                "are taken out",
            )
        )
        return out

    def repository_default(
        self, tiers: Sequence[tuple[ResolvedTier, Sequence[ResolvedPolicyRules]]]
    ) -> None:
        exclude = [*self.unenforced, *self.selective]
        everyone = LabelSelector()
        if exclude:
            everyone = everyone.with_requirements(
                (Requirement(NAME_LABEL, Operator.NOT_IN, tuple(sorted(exclude))),)
            )
        self.emit(
            "default-select",
            "settings",
            [{"endpointSelector": everyone.to_manifest(), "ingress": [{}], "egress": [{}]}],
        )
        closed = self.closed
        specs: list[dict[str, Any]] = []
        for d in Direction:
            entity = {"fromEntities" if d is Direction.INGRESS else "toEntities": ["all"]}
            if self.repo.settings.default_action is RepositoryDefault.ALLOW:
                subject = _conj("all()", *(f"!({c})" for c in closed.get(d, [])))
                for s in self.endpoint_selectors("settings", subject, Bias.SUBSET, self.unenforced):
                    specs.append({"endpointSelector": s, d.value: [entity]})
            if self.selective:
                sel = LabelSelector(
                    (), (Requirement(NAME_LABEL, Operator.IN, tuple(self.selective)),)
                )
                specs.append({"endpointSelector": sel.to_manifest(), d.value: [entity]})
        if self.selective and any(c for c in closed.values()):
            self.limits.append(
                Limitation(
                    "settings",
                    "selective workloads under tiers with a deny default",
                    Approximation.NARROWED,
                    "a tier default ends Septum's evaluation (unenforced for selective "
                    "workloads), but deny rules of later tiers still apply in Cilium",
                )
            )
        self.emit("default-allow", "settings", specs)


def _port(s: ServicePort) -> dict[str, Any]:
    assert s.protocol is not None
    first, last = port_bounds(s)
    out: dict[str, Any] = {"port": str(first), "protocol": s.protocol.value.upper()}
    if last > first:
        out["endPort"] = last
    return out


def _services_overlap(a: Sequence[ServicePort], b: Sequence[ServicePort]) -> bool:
    if not a or not b:
        return True
    return any(
        x.protocol is None
        or y.protocol is None
        or (
            x.protocol is y.protocol
            and (
                not x.protocol.has_ports
                or (x.ports.first <= y.ports.last and y.ports.first <= x.ports.last)
            )
        )
        for x in a
        for y in b
    )


def _services_cover(outer: Sequence[ServicePort], inner: Sequence[ServicePort]) -> bool:
    """Whether every (protocol, port) of ``inner`` is in ``outer`` (empty: everything)."""
    if not outer or any(o.protocol is None for o in outer):
        return True
    if not inner or any(i.protocol is None for i in inner):
        return False
    return all(
        any(
            o.protocol is i.protocol
            and i.protocol is not None
            and (
                not i.protocol.has_ports
                or (o.ports.first <= i.ports.first and i.ports.last <= o.ports.last)
            )
            for o in outer
        )
        for i in inner
    )


def render_cilium(
    repo: Repository, at: datetime, settings: CiliumRenderSettings | None = None
) -> Rendering:
    """Render ``repo`` at time ``at`` for Cilium: (audit-mode ConfigMap,) CIDR groups, then
    clusterwide policies sorted by name, with every limitation met. Pure, deterministic; see
    the module docstring for the mapping and its cost."""
    return _CiliumRenderer(repo, at, settings or CiliumRenderSettings()).render()
