"""Lowering stage 4: host ruleset → nft script text (pure; the agent applies it).

:func:`render_nft` produces ONE script, applied by ``nft -f`` as one transaction, that
replaces the table it owns and nothing else::

    table inet septum          # create it if absent (no-op otherwise) ...
    delete table inet septum   # ... so that this never fails ...
    table inet septum { ... }  # ... then the full definition

:func:`render_set_delta` renders element deltas (``delete element`` first, then
``add element``) for address churn, which never changes rules.

Output is deterministic: the ruleset is sorted already and rendering adds no time or
randomness. Names are safe nft identifiers by construction (``hostruleset`` derives them);
comments and log prefixes have ``"`` replaced and are truncated to nft's limits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from ipaddress import IPv4Network
from typing import cast

from septum.errors import RenderError
from septum.model.resources import IPNetwork, Protocol
from septum.render.hostruleset import (
    AddrMatch,
    Chain,
    CtStateMatch,
    Element,
    ElementDelta,
    HostRuleset,
    IfaceMatch,
    MapElement,
    Match,
    NamedSet,
    NeighborDiscoveryMatch,
    NftRule,
    PortMatch,
    ProtoMatch,
    RulesetDelta,
    Verdict,
    VerdictMap,
)

__all__ = [
    "RenderCache",
    "element_text",
    "render_all",
    "render_declarations",
    "render_element_delta",
    "render_nft",
    "render_rule",
    "render_set_delta",
    "rules_text",
]

_PROTO = {
    Protocol.TCP: "tcp",
    Protocol.UDP: "udp",
    Protocol.SCTP: "sctp",
    Protocol.ICMP: "icmp",
    Protocol.ICMPV6: "ipv6-icmp",
}
_MAX_COMMENT = 127
_MAX_PREFIX = 127


def _quoted(text: str, limit: int) -> str:
    return '"' + text.replace('"', "'").replace("\n", " ")[:limit] + '"'


_OCTETS = tuple(str(i) for i in range(256))


def _net(n: IPNetwork) -> str:
    # A large ruleset renders hundreds of thousands of addresses, so both families avoid
    # ipaddress' own __str__: IPv4 is a dotted quad from the integer through a table of octet
    # texts (~2x cheaper), IPv6 is built by ``ipv6_text`` (~2.5x cheaper).
    i = int(n.network_address)
    length = n.prefixlen
    if n.__class__ is IPv4Network:  # cheaper than the ``version`` property
        o = _OCTETS
        text = f"{o[i >> 24]}.{o[(i >> 16) & 255]}.{o[(i >> 8) & 255]}.{o[i & 255]}"
        return text if length == 32 else f"{text}/{length}"
    text = ipv6_text(i)
    return text if length == 128 else f"{text}/{length}"


def ipv6_text(i: int) -> str:
    """RFC 5952 text of an IPv6 address given as an integer: hextets in lower-case hex
    without leading zeros, the first longest run of two or more zero hextets as ``::``
    (what ``str(IPv6Address(i))`` writes on Python 3.11, in fewer steps)."""
    h = (
        i >> 112, (i >> 96) & 0xFFFF, (i >> 80) & 0xFFFF, (i >> 64) & 0xFFFF,
        (i >> 48) & 0xFFFF, (i >> 32) & 0xFFFF, (i >> 16) & 0xFFFF, i & 0xFFFF,
    )  # fmt: skip
    best_at, best_len, at, run = -1, 1, 0, 0
    for k in range(8):
        if h[k] == 0:
            if run == 0:
                at = k
            run += 1
            if run > best_len:
                best_at, best_len = at, run
        else:
            run = 0
    if best_at < 0:
        return ":".join([f"{x:x}" for x in h])
    left = ":".join([f"{x:x}" for x in h[:best_at]])
    right = ":".join([f"{x:x}" for x in h[best_at + best_len :]])
    return f"{left}::{right}"


def _element(e: Element, *, key_only: bool = False) -> str:
    if isinstance(e, MapElement):
        return _net(e.key) if key_only else f"{_net(e.key)} : goto {e.chain}"
    return _net(e)


def element_text(e: Element) -> str:
    """One set or map element as nft writes it in an ``elements = { ... }`` block."""
    return _element(e)


def _match(m: Match) -> str:
    if isinstance(m, AddrMatch):
        op = "!= " if m.negate else ""
        head = f"{m.family.value} {m.field.value} {op}"
        if m.set_name is not None:
            return f"{head}@{m.set_name}"
        if len(m.ranges) == 1:
            return head + _net(m.ranges[0])
        return head + "{ " + ", ".join(_net(r) for r in m.ranges) + " }"
    if isinstance(m, PortMatch):
        if len(m.entries) == 1:
            ((proto, ports),) = m.entries
            return f"meta l4proto {_PROTO[proto]} th dport {ports}"
        items = ", ".join(f"{_PROTO[p]} . {r}" for p, r in m.entries)
        return "meta l4proto . th dport { " + items + " }"
    if isinstance(m, ProtoMatch):
        if len(m.protocols) == 1:
            return f"meta l4proto {_PROTO[m.protocols[0]]}"
        return "meta l4proto { " + ", ".join(_PROTO[p] for p in m.protocols) + " }"
    if isinstance(m, CtStateMatch):
        return "ct state " + ",".join(m.states)
    if isinstance(m, IfaceMatch):
        return f"{m.field} {m.name}"
    if isinstance(m, NeighborDiscoveryMatch):
        return (
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
            "nd-neighbor-advert, nd-redirect } ip6 hoplimit 255"
        )
    raise RenderError(f"unknown match {m!r}")  # pragma: no cover


def _rule(r: NftRule) -> str:
    parts = [_match(m) for m in r.matches]
    if r.counter:
        parts.append("counter")
    if r.log is not None:
        parts.append(f"log prefix {_quoted(r.log.prefix, _MAX_PREFIX)} group {r.log.group}")
    if r.dispatch is not None:
        d = r.dispatch
        parts.append(f"{d.family.value} {d.field.value} vmap @{d.map_name}")
    elif r.verdict in (Verdict.JUMP, Verdict.GOTO):
        parts.append(f"{r.verdict.value} {r.target}")
    elif r.verdict is not Verdict.CONTINUE:
        parts.append(r.verdict.value)
    parts.append(f"comment {_quoted(str(r.provenance), _MAX_COMMENT)}")
    return " ".join(parts)


def render_rule(r: NftRule) -> str:
    """One rule as the text after ``add rule <family> <table> <chain>``."""
    return _rule(r)


def _elements_block(items: list[str], indent: str) -> list[str]:
    if not items:
        return []
    inner = f",\n{indent}\t".join(items)  # one join: the blocks of big sets are long
    return [f"{indent}elements = {{", f"{indent}\t{inner}", f"{indent}}}"]


class RenderCache:
    """Memo of rendered sets, chains and rules by object identity, shared by the scripts of
    several enforcers (their rulesets share NamedSet and Chain objects through one
    ``RuleCache``). Holds the objects it memoizes, so an id is never reused while memoized.
    Not thread-safe.

    ``previous``: the cache of an earlier render (an agent's last applied table). A set equal
    to the set of the same name there reuses its text: when rules change, most sets do not,
    and comparing a set (a C loop over its elements, by identity where compiles share
    address objects) costs a fraction of rendering it. Only ``previous``'s own sets are
    consulted (no chain of older caches is kept)."""

    __slots__ = (
        "_address_text",
        "_alive",
        "_by_name",
        "_chains",
        "_net_texts",
        "_previous",
        "_rules",
        "_sets",
    )

    def __init__(
        self,
        previous: RenderCache | None = None,
        *,
        address_text: Callable[[IPNetwork], str] | None = None,
    ) -> None:
        # ``address_text``: how a set element is written (default: this module's pure
        # formatter). An edge may pass a C-backed one (the agent uses inet_ntop, which the
        # pure core may not import); it must write what ``element_text`` writes.
        self._address_text = address_text or _net
        self._previous: dict[str, tuple[NamedSet, str]] = (
            previous._by_name if previous is not None else {}
        )
        self._by_name: dict[str, tuple[NamedSet, str]] = {}
        self._sets: dict[int, tuple[NamedSet, str]] = {}
        self._chains: dict[int, tuple[Chain, str]] = {}
        self._rules: dict[int, tuple[NftRule, str]] = {}
        # One address object stands in many selector sets (resolve shares them), so its
        # text is made once per render pass. Keyed by id, with the objects kept alive in
        # ``_alive`` so that no id is reused (and no per-entry tuple burdens the GC).
        self._net_texts: dict[int, str] = {}
        self._alive: list[IPNetwork] = []

    def net_text(self, n: IPNetwork) -> str:
        text = self._net_texts.get(id(n))
        if text is None:
            text = self._net_texts[id(n)] = self._address_text(n)
            self._alive.append(n)
        return text

    def set_text(self, s: NamedSet) -> str:
        hit = self._sets.get(id(s))
        if hit is not None and hit[0] is s:
            return hit[1]
        before = self._previous.get(s.name)
        if before is not None and (before[0] is s or before[0] == s):
            self._sets[id(s)] = self._by_name[s.name] = (s, before[1])
            return before[1]
        # At 100k elements a Python-level step per element costs as much as formatting the
        # address, so hits are looked up in C (map over the dict's get), and only the misses
        # (each address's first appearance) are found (list.index, also in C) and formatted.
        nets, alive, elements, fmt = self._net_texts, self._alive, s.elements, self._address_text
        texts: list[str | None] = list(map(nets.get, map(id, elements)))
        k = 0
        try:
            while True:
                k = texts.index(None, k)  # ValueError: no miss left
                e = elements[k]
                texts[k] = nets[id(e)] = fmt(e)
                alive.append(e)
                k += 1
        except ValueError:
            pass
        text = "\n".join(_set(s, cast("list[str]", texts)))
        self._sets[id(s)] = self._by_name[s.name] = (s, text)
        return text

    def forget_previous(self) -> None:
        """Drop the reference to the earlier render's sets (keep only this render's)."""
        self._previous = {}

    def rule_text(self, r: NftRule) -> str:
        hit = self._rules.get(id(r))
        if hit is not None and hit[0] is r:
            return hit[1]
        text = _rule(r)
        self._rules[id(r)] = (r, text)
        return text

    def chain_text(self, c: Chain) -> str:
        hit = self._chains.get(id(c))
        if hit is not None and hit[0] is c:
            return hit[1]
        text = "\n".join(_chain(c, self))
        self._chains[id(c)] = (c, text)
        return text


def _set(s: NamedSet, texts: Collection[str] | None = None) -> list[str]:
    lines = [f"\tset {s.name} {{", f"\t\ttype {s.type.value}"]
    if s.interval:
        lines.append("\t\tflags interval")
    if s.comment:
        lines.append(f"\t\tcomment {_quoted(s.comment, _MAX_COMMENT)}")
    items = [_element(e) for e in s.elements] if texts is None else list(texts)
    lines.extend(_elements_block(items, "\t\t"))
    lines.append("\t}")
    return lines


def _map(m: VerdictMap) -> list[str]:
    lines = [f"\tmap {m.name} {{", f"\t\ttype {m.type.value} : verdict"]
    if m.comment:
        lines.append(f"\t\tcomment {_quoted(m.comment, _MAX_COMMENT)}")
    lines.extend(_elements_block([_element(e) for e in m.elements], "\t\t"))
    lines.append("\t}")
    return lines


def _chain(c: Chain, cache: RenderCache | None = None) -> list[str]:
    lines = [f"\tchain {c.name} {{"]
    if c.hook is not None:
        prio = (
            "filter"
            if c.priority == 0
            else f"filter {'+' if c.priority > 0 else '-'} {abs(c.priority)}"
        )
        lines.append(f"\t\ttype filter hook {c.hook.value} priority {prio}; policy accept;")
    if c.comment:
        lines.append(f"\t\tcomment {_quoted(c.comment, _MAX_COMMENT)}")
    if cache is None:
        lines.extend(f"\t\t{_rule(r)}" for r in c.rules)
    else:
        lines.extend(f"\t\t{cache.rule_text(r)}" for r in c.rules)
    lines.append("\t}")
    return lines


def render_nft(ruleset: HostRuleset, cache: RenderCache | None = None) -> str:
    """The whole table as one atomic nft script. Cost: O(rules + elements), less what
    ``cache`` already holds (pass one to share the work between enforcers)."""
    t = f"{ruleset.family} {ruleset.table}"
    lines = [
        f"# septum ruleset for enforcer {ruleset.enforcer}, resolved at {ruleset.at.isoformat()}",
        "# generated: do not edit. Applied atomically with `nft -f`.",
        f"table {t}",
        f"delete table {t}",
        f"table {t} {{",
    ]
    if cache is None:
        for s in ruleset.sets:
            lines.extend(_set(s))
    else:
        lines.extend(cache.set_text(s) for s in ruleset.sets)
    for m in ruleset.maps:
        lines.extend(_map(m))
    if cache is None:
        for c in ruleset.chains:
            lines.extend(_chain(c))
    else:
        lines.extend(cache.chain_text(c) for c in ruleset.chains)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_all(rulesets: Iterable[HostRuleset]) -> dict[str, str]:
    """The scripts of several enforcers (by enforcer), sharing one :class:`RenderCache`."""
    cache = RenderCache()
    return {rs.enforcer: render_nft(rs, cache) for rs in rulesets}


def render_declarations(
    sets: Iterable[NamedSet],
    chains: Iterable[Chain],
    *,
    elements: Mapping[str, Collection[str]] | None = None,
    table: str = "septum",
    family: str = "inet",
) -> str:
    """A ``table`` block that adds sets (with their elements) and chains (with their rules)
    to an existing table, for an incremental transaction. ``elements`` may give a set's
    elements as already rendered texts (see :func:`element_text`), in any order, instead
    of ``NamedSet.elements``. Cost: O(elements + rules)."""
    lines = [f"table {family} {table} {{"]
    for s in sets:
        lines.extend(_set(s, None if elements is None else elements.get(s.name)))
    for c in chains:
        lines.extend(_chain(c))
    lines.append("}")
    return "\n".join(lines) + "\n"


def rules_text(ruleset: HostRuleset) -> str:
    """The static part rendered (sets and maps without elements): unchanged by churn."""
    return render_nft(ruleset.structure())


def render_set_delta(
    ruleset_or_names: HostRuleset | Collection[str],
    deltas: RulesetDelta | Iterable[ElementDelta],
    *,
    table: str = "septum",
    family: str = "inet",
) -> str:
    """``delete element`` then ``add element`` statements for element deltas, one
    transaction when applied with ``nft -f``. The first argument names the sets and maps that
    exist (a ruleset: its table is used); a delta for any other name is a ``RenderError``.
    Raises ``RenderError`` too for a ``RulesetDelta`` whose static part changed."""
    if isinstance(deltas, RulesetDelta):
        if deltas.structure_changed:
            raise RenderError("rules or set declarations changed: render the whole table")
        items = deltas.elements
    else:
        items = tuple(deltas)
    if isinstance(ruleset_or_names, HostRuleset):
        rs = ruleset_or_names
        known = {s.name for s in rs.sets} | {m.name for m in rs.maps}
        table, family = rs.table, rs.family
    else:
        known = set(ruleset_or_names)
    unknown = sorted(d.name for d in items if d.name not in known)
    if unknown:
        raise RenderError(f"no such set or map: {', '.join(unknown)}")
    ordered = [render_element_delta(d, table=table, family=family) for d in items]
    ordered.sort(key=lambda pair_name: pair_name[2])
    lines = [deletion for deletion, _, _ in ordered if deletion]
    lines.extend(addition for _, addition, _ in ordered if addition)
    return "\n".join(lines) + "\n" if lines else ""


def render_element_delta(
    delta: ElementDelta, *, table: str = "septum", family: str = "inet"
) -> tuple[str, str, str]:
    """``(delete line, add line, name)`` of one element delta (a line is ``""`` when there is
    nothing to delete or add; lines carry no newline). Deletions must run before additions."""
    t = f"{family} {table}"
    deletion = addition = ""
    if delta.removed:
        els = ", ".join(_element(e, key_only=True) for e in delta.removed)
        deletion = f"delete element {t} {delta.name} {{ {els} }}"
    if delta.added:
        els = ", ".join(_element(e) for e in delta.added)
        addition = f"add element {t} {delta.name} {{ {els} }}"
    return deletion, addition, delta.name
