"""A repository back to documents: every resource as a YAML-ready dict in the policy
language, so that loading the dump gives an equal repository (origins aside). Used by
``septum k8s import --out`` and by the test estates. Pure (text out, nothing written)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import yaml

from septum.model.resources import (
    AddressBinding,
    Direction,
    FlowAssertion,
    Invariant,
    Peer,
    PeerKind,
    PolicyMode,
    Repository,
    Rule,
    Service,
)

__all__ = ["repository_documents", "repository_yaml"]



def _time(when: datetime) -> str:
    text = when.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _own(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if not k.startswith("septum.io/")}


def _binding(b: AddressBinding) -> str | dict[str, str]:
    if b.valid_from is None and b.valid_until is None:
        return str(b.address)
    entry = {"address": str(b.address)}
    if b.valid_from is not None:
        entry["from"] = _time(b.valid_from)
    if b.valid_until is not None:
        entry["until"] = _time(b.valid_until)
    return entry


def _peer(p: Peer) -> str | dict[str, str]:
    if p.kind is PeerKind.SELECTOR:
        assert p.selector is not None
        return p.selector.text
    if p.kind is PeerKind.USERS:
        assert p.selector is not None
        return {"users": p.selector.text}
    if p.kind is PeerKind.CIDR:
        return {"cidr": str(p.cidr)}
    assert p.ref is not None
    return {p.kind.value: p.ref}


def _rule(rule: Rule, direction: Direction, services: Mapping[str, Service]) -> dict[str, Any]:
    out: dict[str, Any] = {"action": rule.action.value}
    if rule.peers:
        out["from" if direction is Direction.INGRESS else "to"] = [_peer(p) for p in rule.peers]
    if rule.service_refs:
        out["services"] = list(rule.service_refs)
    named = {p for ref in rule.service_refs if ref in services for p in services[ref].ports}
    inline = [str(p) for p in rule.services if p not in named]
    if inline:
        out["ports"] = inline
    if rule.expires is not None:
        out["expires"] = _time(rule.expires)
    if rule.description is not None:
        out["description"] = rule.description
    return out


def _doc(kind: str, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    meta.update({k: v for k, v in metadata.items() if v})
    return {"apiVersion": "septum/v1", "kind": kind, "metadata": meta, "spec": spec}


def repository_documents(repo: Repository) -> list[dict[str, Any]]:
    """Every resource of ``repo`` as a YAML-ready dict, in the README's policy language.

    Loading the dumped documents gives a Repository equal to ``repo`` (origins aside), for
    any repository the parser could have produced. Cost: linear in the repository's size.
    """
    services = {s.name: s for s in repo.services}
    docs: list[dict[str, Any]] = []
    st = repo.settings
    failsafe: list[dict[str, Any]] = []
    for f in st.failsafe:
        entry: dict[str, Any] = {}
        if f.direction is not None:
            entry["direction"] = f.direction.value
        entry["ports"] = [str(p) for p in f.services]
        if f.cidrs:
            entry["cidrs"] = [str(c) for c in f.cidrs]
        if f.description is not None:
            entry["description"] = f.description
        failsafe.append(entry)
    docs.append(
        _doc(
            "Settings",
            "settings",
            {
                "defaultAction": st.default_action.value,
                "defaultMode": st.default_mode.value,
                "cidrMatchesWorkloads": st.cidr_matches_workloads,
                "failsafe": failsafe,
            },
        )
    )
    for s in repo.services:
        docs.append(
            _doc("Service", s.name, {"ports": [str(p) for p in s.ports]},
                 description=s.description)
        )  # fmt: skip
    for seg in repo.segments:
        docs.append(
            _doc("Segment", seg.name, {"selector": seg.selector.text}, description=seg.description)
        )
    for n in repo.networks:
        spec: dict[str, Any] = {"cidrs": [str(c) for c in n.cidrs]}
        if n.excepts:
            spec["except"] = [str(c) for c in n.excepts]
        docs.append(_doc("Network", n.name, spec, labels=_own(n.labels), description=n.description))
    for t in repo.tiers:
        spec = {"order": _number(t.order), "defaultAction": t.default_action.value}
        if t.owners:
            spec["owners"] = list(t.owners)
        docs.append(_doc("Tier", t.name, spec, description=t.description))
    for w in repo.workloads:
        spec = {"kind": w.kind.value, "addresses": [_binding(b) for b in w.addresses]}
        if w.enforcer is not None:
            spec["enforcer"] = w.enforcer
        if w.mode is not st.default_mode:
            spec["mode"] = w.mode.value
        docs.append(
            _doc("Workload", w.name, spec, namespace=w.namespace, labels=_own(w.labels),
                 description=w.description)
        )  # fmt: skip
    for g in repo.user_groups:
        spec = {"members": list(g.members)}
        if g.labels:
            spec["labels"] = dict(g.labels)
        docs.append(_doc("UserGroup", g.name, spec, description=g.description))
    for u in repo.users:
        spec = {"sessions": [_binding(b) for b in u.sessions]} if u.sessions else {}
        docs.append(_doc("User", u.name, spec, labels=_own(u.labels), description=u.description))
    for p in repo.policies:
        spec = {"tier": p.tier, "order": _number(p.order)}
        if not p.applies_to.is_all:
            spec["appliesTo"] = p.applies_to.text
        if p.mode is not PolicyMode.ENFORCE:
            spec["mode"] = p.mode.value
        for direction in Direction:
            rules = p.rules(direction)
            if rules is not None:
                spec[direction.value] = [_rule(r, direction, services) for r in rules]
        docs.append(_doc("Policy", p.name, spec, description=p.description))
    for a in repo.assertions:
        check = a.check
        if isinstance(check, FlowAssertion):
            spec = {
                "from": check.source,
                "to": check.target,
                "port": str(check.service),
                "expect": check.expect.value,
            }
            if check.at is not None:
                spec["at"] = _time(check.at)
        else:
            assert isinstance(check, Invariant)
            inner: dict[str, Any] = {"from": check.source.text, "to": check.target.text}
            if check.services:
                inner["ports"] = [str(s) for s in check.services]
            spec = {check.kind.value: inner}
        docs.append(_doc("Assertion", a.name, spec, description=a.description))
    return docs


def repository_yaml(repo: Repository) -> str:
    """:func:`repository_documents` as one multi-document YAML text (``---`` separated)."""
    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump_all(
        repository_documents(repo), Dumper=dumper, sort_keys=False, default_flow_style=None,
        width=100,
    )  # fmt: skip


