"""Incremental compilation: one workload's label or address change → one nft transaction per
affected enforcer, without resolving or building the estate again.

Design goals (``architecture.md``: "a label or address change touches only the sets that
contain it and only the enforcers that use them"; Calico Felix's calculation graph):

- Work per update is proportional to what changed: the label index re-tests only the
  selectors that read a changed key; element deltas follow from the old and new address sets
  of the one workload; only the enforcers that declare a changed set (or hold the workload)
  get a transaction.
- Sets are shared by name across enforcers (the name derives from the selector's canonical
  text), so there is ONE element state per set name, plus an index set name → enforcers
  that declare it. The text of one set's delta is rendered once and shared.
- When the policies that apply to the workload change (an ``appliesTo`` membership changed),
  only its own chains are rebuilt (with the shared :class:`RuleCache`): ``flush chain`` and
  ``add rule`` for them, ``add chain``/``add set`` for tier chains and sets its enforcer
  lacked, ``delete`` for those nothing references any more — never a reload of the table.
- Full recomputation is the reference: :meth:`IncrementalCompiler.snapshot` rebuilds a
  :class:`HostRuleset` from the incremental state, and the tests check it equals
  ``build_host_ruleset(resolve_policy(repo, at), enforcer)`` after every step.

Wiring::

    update_workload(new)
      ├─ labels ────► LabelIndex.upsert_endpoint ──► selectors whose membership changed
      ├─ addresses ─► old/new host prefixes, address → holders
      ▼
    element state (one per set name) ──► ElementDelta per changed set
      │                                        └──► enforcers declaring the set
      ├─ dispatch maps of the workload's enforcer (address → its chains)
      └─ appliesTo membership changed? ──► build_workload_chains (shared RuleCache)
                                             └──► tier chain / set reference counts
      ▼
    per enforcer: Update.enforcers[e].script (ONE transaction) + its ElementDeltas

Preconditions: the repository is valid (no two workloads hold one address); a change of a
workload's enforcer or mode, or an unknown workload, is handled by a full rebuild
(:attr:`Update.fallback` says why). Time-bounded addresses are evaluated at the fixed ``at``.
Not thread-safe. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from itertools import groupby
from types import MappingProxyType

from septum.engine.label_index import LabelIndex
from septum.engine.resolve import (
    AddressSet,
    LocalWorkload,
    ResolvedPolicy,
    ResolvedPolicyRules,
    TierApplication,
    resolve_policy,
)
from septum.model.resources import (
    Direction,
    IPNetwork,
    PeerKind,
    Repository,
    Workload,
)
from septum.model.selector import Selector
from septum.render.hostruleset import (
    FAMILIES,
    Chain,
    ElementDelta,
    Family,
    HostRuleset,
    MapElement,
    NamedSet,
    NftSettings,
    RuleCache,
    Verdict,
    VerdictMap,
    attributed_set_name,
    build_host_ruleset,
    build_workload_chains,
    diff_rulesets,
    dispatch_map_name,
    element_sort_key,
    selector_set_name,
    workload_chain_name,
    workloads_set_name,
)
from septum.render.nft import (
    element_text,
    render_declarations,
    render_element_delta,
    render_nft,
    render_rule,
    render_set_delta,
)

# Endpoint ids in this compiler's label index, which holds workloads and networks together.
WORKLOAD_ID = "w:"
NETWORK_ID = "n:"

__all__ = ["EnforcerUpdate", "IncrementalCompiler", "Update"]

_FAMILY = "inet"  # the table family every HostRuleset uses


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class EnforcerUpdate:
    """What one enforcer applies for one update.

    ``script`` is ONE nft transaction (apply with ``nft -f``). ``elements`` are the element
    deltas of its sets and maps. ``structural``: chains or set declarations changed too (the
    script then also adds/flushes/deletes chains and sets). ``full_table``: the script
    replaces the whole table (only on the fallback path).
    """

    enforcer: str
    script: str
    elements: tuple[ElementDelta, ...]
    structural: bool = False
    full_table: bool = False


@dataclass(frozen=True, slots=True)
class Update:
    """The result of one :meth:`IncrementalCompiler.update_workload`.

    ``revision`` increases by one per update. ``enforcers`` holds only the enforcers that
    have something to apply. ``fallback`` is None on the incremental path, else why a full
    rebuild was needed.
    """

    revision: int
    workload: str
    enforcers: Mapping[str, EnforcerUpdate]
    fallback: str | None = None

    @property
    def structural(self) -> tuple[str, ...]:
        """The enforcers whose chains or set declarations changed (sorted)."""
        return tuple(sorted(e for e, u in self.enforcers.items() if u.structural))

    @property
    def scripts(self) -> dict[str, str]:
        return {e: u.script for e, u in self.enforcers.items()}

    def __bool__(self) -> bool:
        return bool(self.enforcers)


# ------------------------------------------------------------------------------- helpers


def _host_prefixes(w: Workload, at: datetime) -> frozenset[IPNetwork]:
    out: set[IPNetwork] = set()
    for b in w.addresses:
        if b.valid_at(at):
            a = b.address
            if isinstance(a, IPv4Address):
                out.add(IPv4Network((int(a), 32)))
            else:
                out.add(IPv6Network((int(a), 128)))
    return frozenset(out)


def _family(n: IPNetwork) -> Family:
    return Family.IP if n.version == 4 else Family.IP6


def _jump_targets(chain: Chain) -> tuple[str, ...]:
    return tuple(r.target for r in chain.rules if r.verdict is Verdict.JUMP and r.target)


def _sorted(elements: Iterable[IPNetwork | MapElement]) -> tuple[IPNetwork | MapElement, ...]:
    return tuple(sorted(elements, key=element_sort_key))


def _is_local(w: Workload) -> bool:
    return w.enforcer is not None and w.mode.installs_rules


class _EnforcerState:
    """The static and dynamic parts of one enforcer's table, with reference counts."""

    __slots__ = (
        "base",
        "map_meta",
        "maps",
        "name",
        "set_refs",
        "tier_chains",
        "tier_refs",
        "workload_chains",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.base: list[Chain] = []  # base and dispatch chains, in build order
        self.workload_chains: dict[str, Chain] = {}
        self.tier_chains: dict[str, Chain] = {}
        self.tier_refs: dict[str, int] = {}  # tier chain → jumps to it from workload chains
        self.set_refs: dict[str, int] = {}  # set → tier chains referencing it
        self.maps: dict[str, dict[IPNetwork, MapElement]] = {}
        self.map_meta: dict[str, VerdictMap] = {}  # elements=()


@dataclass(slots=True)
class _Structural:
    """The static changes of one enforcer in one update."""

    new_sets: list[NamedSet]  # without elements: the current ones are in the state
    new_chains: list[Chain]
    replaced_chains: list[Chain]
    deleted_chains: list[str]
    deleted_sets: list[str]


# ------------------------------------------------------------------------------- compiler


class IncrementalCompiler:
    """Keeps every enforcer's ruleset up to date under single-workload changes.

    Construction resolves and builds everything once (cost of a full compile plus a label
    index over workloads and networks). :meth:`update_workload` then costs O(selectors
    reading a changed label key + changed elements × enforcers declaring them + the
    workload's applicable rules when its policies change).
    """

    def __init__(self, repo: Repository, at: datetime, settings: NftSettings | None = None) -> None:
        self.at = at
        self.settings = settings or NftSettings()
        self.revision = 0
        self._load(repo, repo.enforcers())

    # ------------------------------------------------------------ loading

    def _load(self, repo: Repository, enforcers: Iterable[str]) -> None:
        at = self.at
        self._base_repo = repo
        self._workloads: dict[str, Workload] = {w.name: w for w in repo.workloads}
        resolved = resolve_policy(repo, at)
        self._resolved: ResolvedPolicy = resolved
        self._cache = RuleCache(resolved, self.settings)

        index = LabelIndex()
        for w in repo.workloads:
            index.upsert_endpoint(WORKLOAD_ID + w.name, w.labels)
        for n in repo.networks:
            index.upsert_endpoint(NETWORK_ID + n.name, n.labels)
        for rsel in resolved.selectors.values():
            index.add_selector(rsel.selector)
        self._index = index

        self._addrs: dict[str, frozenset[IPNetwork]] = {
            w.name: _host_prefixes(w, at) for w in repo.workloads
        }
        self._holders: dict[IPNetwork, set[str]] = {}
        for name, addrs in self._addrs.items():
            for a in addrs:
                self._holders.setdefault(a, set()).add(name)
        sessions = AddressSet.of_addresses(
            b.address for u in repo.users for b in u.sessions if b.valid_at(at)
        )
        self._user_addrs: frozenset[IPNetwork] = frozenset((*sessions.v4, *sessions.v6))

        # One element state per set name. Sets that follow workloads are tracked from the
        # start; static ones (networks, users) are adopted when first declared.
        # set name → {element: its nft text}; texts are shared (one str per address), so that
        # declaring a big set in one more enforcer is a join, not a rendering.
        self._texts: dict[IPNetwork, str] = {}
        self._sets: dict[str, dict[IPNetwork, str]] = {}
        self._peer_sets: dict[Selector, tuple[str, str]] = {}
        for p in repo.policies:
            for rules in (p.ingress, p.egress):
                for r in rules or ():
                    for peer in r.peers:
                        s = peer.selector
                        if peer.kind in (PeerKind.SELECTOR, PeerKind.SEGMENT) and s is not None:
                            if s.is_all or s in self._peer_sets:
                                continue
                            names = (
                                selector_set_name(s.text, Family.IP),
                                selector_set_name(s.text, Family.IP6),
                            )
                            self._peer_sets[s] = names
                            members = resolved.selectors[s.text].addresses.workloads
                            self._sets[names[0]] = self._state(members.v4)
                            self._sets[names[1]] = self._state(members.v6)
        attributed, everywhere = resolved.attributed_addresses, resolved.workload_addresses
        self._sets[attributed_set_name(Family.IP)] = self._state(attributed.v4)
        self._sets[attributed_set_name(Family.IP6)] = self._state(attributed.v6)
        self._sets[workloads_set_name(Family.IP)] = self._state(everywhere.v4)
        self._sets[workloads_set_name(Family.IP6)] = self._state(everywhere.v6)
        self._set_meta: dict[str, NamedSet] = {}
        self._set_users: dict[str, set[str]] = {}

        # appliesTo selector → the (tier index, policy index, policy) it brings.
        self._applies: dict[Selector, list[tuple[int, int, ResolvedPolicyRules]]] = {}
        for ti, rt in enumerate(resolved.tiers):
            for pi, rp in enumerate(rt.policies):
                if rp.ingress is None and rp.egress is None:
                    continue
                self._applies.setdefault(rp.policy.applies_to, []).append((ti, pi, rp))

        rulesets = [
            build_host_ruleset(resolved, e, self.settings, cache=self._cache) for e in enforcers
        ]
        self._chain_sets: dict[str, tuple[str, ...]] = self._cache.tier_chain_sets()
        self._enforcers: dict[str, _EnforcerState] = {}
        for rs in rulesets:
            self._adopt(rs)

    def _adopt(self, rs: HostRuleset) -> None:
        st = _EnforcerState(rs.enforcer)
        local = {
            workload_chain_name(lw.name, d)
            for lw in self._resolved.enforcer(rs.enforcer).workloads
            for d in Direction
        }
        st.workload_chains = {c.name: c for c in rs.chains if c.name in local}
        for c in st.workload_chains.values():
            for t in _jump_targets(c):
                st.tier_refs[t] = st.tier_refs.get(t, 0) + 1
        for c in rs.chains:
            if c.name in st.tier_refs:
                st.tier_chains[c.name] = c
            elif c.name not in local:
                st.base.append(c)
        for c in st.tier_chains.values():
            for s in self._chain_sets[c.name]:
                st.set_refs[s] = st.set_refs.get(s, 0) + 1
        for ns in rs.sets:
            if ns.name not in self._sets:
                self._sets[ns.name] = self._state(ns.elements)
            self._set_meta.setdefault(ns.name, replace(ns, elements=()))
            self._set_users.setdefault(ns.name, set()).add(rs.enforcer)
        for m in rs.maps:
            st.maps[m.name] = {e.key: e for e in m.elements}
            st.map_meta[m.name] = replace(m, elements=())
        self._enforcers[rs.enforcer] = st

    def _text(self, e: IPNetwork) -> str:
        text = self._texts.get(e)
        if text is None:
            text = self._texts[e] = element_text(e)
        return text

    def _state(self, elements: Iterable[IPNetwork]) -> dict[IPNetwork, str]:
        return {e: self._text(e) for e in elements}

    # ------------------------------------------------------------ queries

    @property
    def repo(self) -> Repository:
        """The repository with every update applied. Cost: O(workloads)."""
        return replace(
            self._base_repo,
            workloads=tuple(self._workloads[n] for n in sorted(self._workloads)),
        )

    @property
    def enforcers(self) -> tuple[str, ...]:
        return tuple(sorted(self._enforcers))

    def snapshot(self, enforcer: str) -> HostRuleset:
        """The current ruleset of ``enforcer``, rebuilt from the incremental state; equal to
        a from-scratch ``build_host_ruleset``. Cost: O(its rules + elements · log)."""
        st = self._enforcers.get(enforcer)
        if st is None:  # no workload names it: only the static base chains
            return build_host_ruleset(self._resolved, enforcer, self.settings, cache=self._cache)
        chains = (
            *st.base,
            *sorted(st.workload_chains.values(), key=lambda c: c.name),
            *sorted(st.tier_chains.values(), key=lambda c: c.name),
        )
        sets = tuple(
            replace(self._set_meta[n], elements=tuple(sorted(self._sets[n])))
            for n in sorted(st.set_refs)
        )
        maps = tuple(
            replace(
                st.map_meta[n],
                elements=tuple(sorted(st.maps[n].values(), key=element_sort_key)),
            )
            for n in sorted(st.maps)
        )
        return HostRuleset(
            enforcer=enforcer,
            at=self.at,
            chains=chains,
            sets=sets,
            maps=maps,
            table=self.settings.table,
        )

    def named_set(self, name: str) -> NamedSet:
        """The current state of the shared set ``name`` (the same in every enforcer that
        declares it). Raises KeyError for a set no enforcer declares. Cost: O(n log n)."""
        return replace(self._set_meta[name], elements=tuple(sorted(self._sets[name])))

    def script(self, enforcer: str) -> str:
        """The whole current table of ``enforcer`` as one nft script."""
        return render_nft(self.snapshot(enforcer))

    # ------------------------------------------------------------ updates

    def update_workload(self, new: Workload) -> Update:
        """Apply one workload's new labels and/or addresses; return what to apply where.

        ``new`` names an existing workload with the same enforcer and mode; anything else is
        handled by a full rebuild (see :attr:`Update.fallback`).
        """
        old = self._workloads.get(new.name)
        if old is None:
            return self._rebuild(new, f"unknown workload {new.name!r}: full rebuild")
        if old.enforcer != new.enforcer:
            return self._rebuild(new, f"enforcer of {new.name!r} changed: full rebuild")
        if old.mode is not new.mode:
            return self._rebuild(new, f"mode of {new.name!r} changed: full rebuild")
        self.revision += 1
        name = new.name
        self._workloads[name] = new
        ep = WORKLOAD_ID + name
        index = self._index

        membership = index.upsert_endpoint(ep, new.labels)
        old_addrs = self._addrs[name]
        new_addrs = _host_prefixes(new, self.at)
        gained = new_addrs - old_addrs
        lost = old_addrs - new_addrs
        if gained or lost:
            self._addrs[name] = new_addrs
            for a in lost:
                holders = self._holders[a]
                holders.discard(name)
                if not holders:
                    del self._holders[a]
            for a in gained:
                self._holders.setdefault(a, set()).add(name)

        # ---- element deltas of shared sets
        changes: dict[str, tuple[set[IPNetwork], set[IPNetwork]]] = {}

        def settle(set_name: str, address: IPNetwork, present: bool) -> None:
            state = self._sets[set_name]
            if present == (address in state):
                return
            added, removed = changes.setdefault(set_name, (set(), set()))
            if present:
                state[address] = self._text(address)
                added.add(address)
            else:
                del state[address]
                removed.add(address)

        def held_by_member(selector: Selector, address: IPNetwork) -> bool:
            return any(
                index.selects(selector, WORKLOAD_ID + h) for h in self._holders.get(address, ())
            )

        moved = gained | lost
        for selector in membership:
            names = self._peer_sets.get(selector)
            if names is not None:
                for a in old_addrs | new_addrs:
                    name_f = names[0] if a.version == 4 else names[1]
                    settle(name_f, a, held_by_member(selector, a))
        if moved:
            for selector in index.selectors_of(ep):
                names = self._peer_sets.get(selector)
                if names is not None and selector not in membership:
                    for a in moved:
                        name_f = names[0] if a.version == 4 else names[1]
                        settle(name_f, a, held_by_member(selector, a))
            for a in moved:
                fam = _family(a)
                held = a in self._holders
                settle(workloads_set_name(fam), a, held)
                settle(attributed_set_name(fam), a, held or a in self._user_addrs)

        set_deltas = {
            n: ElementDelta(n, _sorted(added), _sorted(removed))
            for n, (added, removed) in sorted(changes.items())
            if added or removed
        }

        # ---- the workload's own enforcer: dispatch maps and chains
        own: str | None = new.enforcer if _is_local(new) else None
        map_deltas: list[ElementDelta] = []
        structural: _Structural | None = None
        if own is not None:
            st = self._enforcers[own]
            if moved:
                for d in Direction:
                    chain = workload_chain_name(name, d)
                    for fam in FAMILIES:
                        mname = dispatch_map_name(d, fam)
                        entries = st.maps[mname]
                        rem = [entries.pop(a) for a in lost if _family(a) is fam and a in entries]
                        add = [MapElement(a, chain) for a in gained if _family(a) is fam]
                        for el in add:
                            entries[el.key] = el
                        if rem or add:
                            map_deltas.append(ElementDelta(mname, _sorted(add), _sorted(rem)))
            if any(s in self._applies for s in membership):
                structural = self._restructure(st, new, ep)

        # ---- per enforcer: one transaction
        per: dict[str, list[str]] = {}
        for n in set_deltas:
            for e in self._set_users.get(n, ()):
                per.setdefault(e, []).append(n)
        if own is not None and (map_deltas or structural is not None):
            per.setdefault(own, [])
        rendered: dict[str, tuple[str, str, str]] = {}
        t = f"{_FAMILY} {self.settings.table}"
        out: dict[str, EnforcerUpdate] = {}
        for e in sorted(per):
            fresh = (
                {s.name for s in structural.new_sets}
                if structural is not None and e == own
                else set()
            )
            deltas = [set_deltas[n] for n in per[e] if n not in fresh]
            if e == own:
                deltas.extend(map_deltas)
                deltas.sort(key=lambda x: x.name)
            lines: list[str] = []
            if (
                e == own
                and structural is not None
                and (structural.new_sets or structural.new_chains)
            ):
                lines.append(
                    render_declarations(
                        structural.new_sets,
                        structural.new_chains,
                        elements={s.name: self._sets[s.name].values() for s in structural.new_sets},
                        table=self.settings.table,
                        family=_FAMILY,
                    ).rstrip("\n")
                )
            texts = []
            for delta in deltas:
                shared = delta.name in set_deltas  # the same text for every enforcer
                text = rendered.get(delta.name) if shared else None
                if text is None:
                    text = render_element_delta(delta, table=self.settings.table, family=_FAMILY)
                    if shared:
                        rendered[delta.name] = text
                texts.append(text)
            lines.extend(x[0] for x in texts if x[0])
            lines.extend(x[1] for x in texts if x[1])
            is_structural = False
            if e == own and structural is not None:
                for c in structural.replaced_chains:
                    lines.append(f"flush chain {t} {c.name}")
                    lines.extend(f"add rule {t} {c.name} {render_rule(r)}" for r in c.rules)
                for cname in structural.deleted_chains:
                    lines.append(f"flush chain {t} {cname}")
                    lines.append(f"delete chain {t} {cname}")
                lines.extend(f"delete set {t} {sname}" for sname in structural.deleted_sets)
                is_structural = bool(
                    structural.new_sets
                    or structural.new_chains
                    or structural.replaced_chains
                    or structural.deleted_chains
                    or structural.deleted_sets
                )
            if not lines:
                continue
            out[e] = EnforcerUpdate(e, "\n".join(lines) + "\n", tuple(deltas), is_structural)
        return Update(self.revision, name, MappingProxyType(out))

    def _applications(
        self, ep: str
    ) -> tuple[tuple[TierApplication, ...], tuple[TierApplication, ...]]:
        """The workload's TierApplications per direction, as ``resolve_policy`` computes them,
        from the appliesTo selectors that select it now. Cost: O(its policies · log)."""
        entries: list[tuple[int, int, ResolvedPolicyRules]] = []
        for s in self._index.selectors_of(ep):
            found = self._applies.get(s)
            if found:
                entries.extend(found)
        entries.sort(key=lambda x: (x[0], x[1]))
        ingress: list[TierApplication] = []
        egress: list[TierApplication] = []
        for ti, group in groupby(entries, key=lambda x: x[0]):
            rps = [rp for _, _, rp in group]
            tier = self._resolved.tiers[ti].tier
            for d, apps in ((Direction.INGRESS, ingress), (Direction.EGRESS, egress)):
                chosen = tuple(rp for rp in rps if rp.rules(d) is not None)
                if chosen:
                    apps.append(TierApplication.of(tier, chosen))
        return tuple(ingress), tuple(egress)

    def _restructure(self, st: _EnforcerState, new: Workload, ep: str) -> _Structural | None:
        """Rebuild the workload's chains; adjust tier chain and set references."""
        ingress, egress = self._applications(ep)
        lw = LocalWorkload(new, AddressSet(), ingress, egress)
        built = build_workload_chains(self._cache, lw, self.settings)
        result = _Structural([], [], [], [], [])
        dropped: list[Chain] = []
        for chain in built.chains.values():
            before = st.workload_chains[chain.name]
            if before.rules == chain.rules and before.comment == chain.comment:
                continue
            result.replaced_chains.append(chain)
            st.workload_chains[chain.name] = chain
            dropped.append(before)
            for target in _jump_targets(chain):
                refs = st.tier_refs.get(target, 0)
                st.tier_refs[target] = refs + 1
                if refs:
                    continue
                tier_chain = built.tier_chains[target]
                st.tier_chains[target] = tier_chain
                result.new_chains.append(tier_chain)
                self._chain_sets[target] = built.tier_chain_sets[target]
                for sname in sorted(self._chain_sets[target]):
                    srefs = st.set_refs.get(sname, 0)
                    st.set_refs[sname] = srefs + 1
                    if srefs:
                        continue
                    declared = built.sets[sname]
                    if sname not in self._sets:  # a static set (networks, users)
                        self._sets[sname] = self._state(declared.elements)
                    self._set_meta.setdefault(sname, replace(declared, elements=()))
                    self._set_users.setdefault(sname, set()).add(st.name)
                    result.new_sets.append(self._set_meta[sname])
        for before in dropped:
            for target in _jump_targets(before):
                refs = st.tier_refs[target] - 1
                if refs:
                    st.tier_refs[target] = refs
                    continue
                del st.tier_refs[target]
                del st.tier_chains[target]
                result.deleted_chains.append(target)
                for sname in sorted(self._chain_sets[target]):
                    srefs = st.set_refs[sname] - 1
                    if srefs:
                        st.set_refs[sname] = srefs
                        continue
                    del st.set_refs[sname]
                    self._set_users[sname].discard(st.name)
                    result.deleted_sets.append(sname)
        if not result.replaced_chains:
            return None
        return result

    def _rebuild(self, new: Workload, reason: str) -> Update:
        """The fallback: resolve and build everything again, diff every enforcer."""
        self.revision += 1
        before = {e: self.snapshot(e) for e in self._enforcers}
        workloads = dict(self._workloads)
        workloads[new.name] = new
        repo = replace(self._base_repo, workloads=tuple(workloads[n] for n in sorted(workloads)))
        enforcers = sorted(set(self._enforcers) | set(repo.enforcers()))
        self._load(repo, enforcers)
        out: dict[str, EnforcerUpdate] = {}
        for e in enforcers:
            after = self.snapshot(e)
            old = before.get(e)
            if old is None:
                out[e] = EnforcerUpdate(e, render_nft(after), (), True, True)
                continue
            delta = diff_rulesets(old, after)
            if not delta:
                continue
            if delta.structure_changed:
                out[e] = EnforcerUpdate(e, render_nft(after), delta.elements, True, True)
            else:
                out[e] = EnforcerUpdate(e, render_set_delta(after, delta), delta.elements)
        return Update(self.revision, new.name, MappingProxyType(out), fallback=reason)
