"""The label index: which endpoints does each selector select, kept up to date incrementally.

Design goals (after Calico Felix's label index):
- Adding a selector computes its members by set algebra over posting lists
  (``(key, value) → endpoints`` and ``key → endpoints``), never by testing every endpoint
  against the selector — except the few operators with no posting list (``starts with``,
  ``ends with``, ``contains``), which scan the *values* of one key, not the endpoints.
- Changing one endpoint's labels re-tests only the selectors that read a changed key
  (``Selector.keys``); a new endpoint is tested against every selector once.
- Every change returns disjoint ``SetDelta``s per selector whose membership changed, which is
  what downstream stages (address sets, nft set elements) consume. Full recomputation
  (:meth:`LabelIndex.recompute`) is the reference the tests compare against.

Endpoints are opaque string ids (the caller chooses, e.g. ``"workload:web-1"``). Selectors are
reference-counted, so that several users of one interned selector share one entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from septum.model.selector import All, And, Compare, Expr, Has, Not, Op, Or, Selector

__all__ = ["LabelIndex", "SetDelta"]


@dataclass(frozen=True, slots=True)
class SetDelta:
    """A change of one set: ``added`` and ``removed`` are disjoint."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class LabelIndex:
    """Selector membership over a changing set of labelled endpoints. Not thread-safe."""

    def __init__(self) -> None:
        self._labels: dict[str, Mapping[str, str]] = {}
        self._by_pair: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self._by_key: defaultdict[str, set[str]] = defaultdict(set)
        self._members: dict[Selector, set[str]] = {}
        self._refs: dict[Selector, int] = {}
        self._readers: defaultdict[str, set[Selector]] = defaultdict(set)  # key → selectors
        self._selected_by: defaultdict[str, set[Selector]] = defaultdict(set)  # reverse index
        # Finer readers, so that a label change re-tests only selectors with an atom whose
        # truth can change: ``k == v``/``!=``/``in``/``not in`` by (key, value); ``has(k)``
        # by key (presence changes only); other operators by key.
        self._atom_readers: defaultdict[tuple[str, str, str], set[Selector]] = defaultdict(set)
        # Anchors (after Calico's label index): a selector that is ``k == "v"`` or a
        # conjunction with such atoms can select only endpoints labelled k=v. It is anchored
        # on its rarest such pair and re-tested only for endpoints that have that pair before
        # or after a change, instead of for every endpoint whose value of a read key changed.
        # Selectors without an equality conjunct stay in ``_atom_readers``/``_unanchored``.
        self._anchor: dict[Selector, tuple[str, str]] = {}
        self._anchored: defaultdict[tuple[str, str], set[Selector]] = defaultdict(set)
        self._unanchored: set[Selector] = set()

    # ---------------------------------------------------------------- queries

    def members(self, selector: Selector) -> frozenset[str]:
        """Current members of a registered selector. Cost: O(members)."""
        return frozenset(self._members[selector])

    def selectors_of(self, endpoint: str) -> frozenset[Selector]:
        """The registered selectors that select ``endpoint``."""
        return frozenset(self._selected_by.get(endpoint, ()))

    def selects(self, selector: Selector, endpoint: str) -> bool:
        """Whether ``selector`` (registered) currently selects ``endpoint``. Cost: O(1)."""
        found = self._selected_by.get(endpoint)
        return found is not None and selector in found

    def labels(self, endpoint: str) -> Mapping[str, str] | None:
        return self._labels.get(endpoint)

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(self._labels)

    @property
    def selectors(self) -> frozenset[Selector]:
        return frozenset(self._members)

    def evaluate(self, selector: Selector) -> frozenset[str]:
        """Members of ``selector`` now, by set algebra, without registering it: no deltas
        will be tracked for it. For one-shot resolution, where registering (reverse index,
        readers, anchors) would be wasted work. Cost: as :meth:`add_selector`'s algebra."""
        found = self._members.get(selector)
        return frozenset(found if found is not None else self._evaluate(selector.expr))

    # ---------------------------------------------------------------- selectors

    def add_selector(self, selector: Selector) -> frozenset[str]:
        """Register (or add a reference to) a selector; returns its members.

        Cost: set algebra over the posting lists of the keys it reads.
        """
        if selector in self._members:
            self._refs[selector] += 1
            return frozenset(self._members[selector])
        members = self._evaluate(selector.expr)
        self._members[selector] = members
        self._refs[selector] = 1
        for key in selector.keys:
            self._readers[key].add(selector)
        if not selector.keys:
            self._readers[""].add(selector)  # all(): re-tested only when endpoints come/go
        anchor = self._choose_anchor(selector.expr)
        if anchor is not None:
            self._anchor[selector] = anchor
            self._anchored[anchor].add(selector)
        else:
            self._unanchored.add(selector)
            for atom in self._atoms(selector.expr):
                self._atom_readers[atom].add(selector)
        for endpoint in members:
            self._selected_by[endpoint].add(selector)
        return frozenset(members)

    def remove_selector(self, selector: Selector) -> None:
        """Drop one reference; the entry goes when the last reference does."""
        self._refs[selector] -= 1
        if self._refs[selector]:
            return
        del self._refs[selector]
        for endpoint in self._members.pop(selector):
            self._selected_by[endpoint].discard(selector)
        for key in selector.keys or ("",):
            self._readers[key].discard(selector)
        anchor = self._anchor.pop(selector, None)
        if anchor is not None:
            self._anchored[anchor].discard(selector)
        else:
            self._unanchored.discard(selector)
            for atom in self._atoms(selector.expr):
                self._atom_readers[atom].discard(selector)

    # ---------------------------------------------------------------- endpoints

    def upsert_endpoint(self, endpoint: str, labels: Mapping[str, str]) -> dict[Selector, SetDelta]:
        """Add an endpoint or replace its labels; returns the membership changes.

        Cost: a new endpoint is tested against every selector; a changed one only against the
        selectors with an atom whose truth can change (``k == v``, ``in`` ... reading the old
        or new value of a changed key; ``has(k)`` when k comes or goes; other operators on k).
        """
        old = self._labels.get(endpoint)
        labels = dict(labels)
        if old is None:
            # unanchored selectors, and anchored ones whose pair the new endpoint has
            found_new = set(self._unanchored)
            for pair in labels.items():
                found_new |= self._anchored.get(pair, set())
            candidates: Iterable[Selector] = found_new
        else:
            changed = {k for k in old.keys() | labels.keys() if old.get(k) != labels.get(k)}
            if not changed:
                return {}
            found: set[Selector] = set()
            readers = self._atom_readers
            for key in changed:
                was, now_value = old.get(key), labels.get(key)
                if was is not None:
                    found.update(readers.get(("value", key, was), ()))
                if now_value is not None:
                    found.update(readers.get(("value", key, now_value), ()))
                if (was is None) != (now_value is None):
                    found.update(readers.get(("has", key, ""), ()))
                found.update(readers.get(("other", key, ""), ()))
            anchored = self._anchored
            for pair in {*old.items(), *labels.items()}:
                for selector in anchored.get(pair, ()):
                    if not selector.keys.isdisjoint(changed):
                        found.add(selector)
            candidates = found
            self._unpost(endpoint, old)
        self._labels[endpoint] = labels
        for key, value in labels.items():
            self._by_pair[(key, value)].add(endpoint)
            self._by_key[key].add(endpoint)
        deltas: dict[Selector, SetDelta] = {}
        selected = self._selected_by[endpoint]
        for selector in candidates:
            now = selector.matches(labels)
            before = selector in selected
            if now and not before:
                self._members[selector].add(endpoint)
                selected.add(selector)
                deltas[selector] = SetDelta(added=frozenset((endpoint,)))
            elif before and not now:
                self._members[selector].discard(endpoint)
                selected.discard(selector)
                deltas[selector] = SetDelta(removed=frozenset((endpoint,)))
        return deltas

    def remove_endpoint(self, endpoint: str) -> dict[Selector, SetDelta]:
        """Remove an endpoint; returns the membership changes. Cost: O(selectors selecting it)."""
        old = self._labels.pop(endpoint, None)
        if old is None:
            return {}
        self._unpost(endpoint, old)
        deltas: dict[Selector, SetDelta] = {}
        for selector in self._selected_by.pop(endpoint, set()):
            self._members[selector].discard(endpoint)
            deltas[selector] = SetDelta(removed=frozenset((endpoint,)))
        return deltas

    # ---------------------------------------------------------------- reference

    def recompute(self) -> dict[Selector, frozenset[str]]:
        """Every selector's members tested from scratch: the reference for incremental tests.
        Cost: O(selectors × endpoints)."""
        return {
            s: frozenset(e for e, labels in self._labels.items() if s.matches(labels))
            for s in self._members
        }

    # ---------------------------------------------------------------- internals

    def _choose_anchor(self, expr: Expr) -> tuple[str, str] | None:
        """The rarest ``k == "v"`` pair that every member must carry, if any."""
        conjuncts = expr.operands if isinstance(expr, And) else (expr,)
        pairs = [
            (c.key, c.values[0]) for c in conjuncts if isinstance(c, Compare) and c.op == Op.EQ
        ]
        if not pairs:
            return None
        return min(pairs, key=lambda p: (len(self._by_pair.get(p, ())), p))

    @staticmethod
    def _atoms(expr: Expr) -> list[tuple[str, str, str]]:
        """The finer reader keys of every atom of ``expr`` (see ``_atom_readers``)."""
        out: list[tuple[str, str, str]] = []

        def walk(e: Expr) -> None:
            match e:
                case Has(key):
                    out.append(("has", key, ""))
                case Compare(key, Op.EQ | Op.NE | Op.IN | Op.NOT_IN, values):
                    out.extend(("value", key, v) for v in values)
                case Compare(key, _, _):
                    out.append(("other", key, ""))
                case Not(operand):
                    walk(operand)
                case And(operands) | Or(operands):
                    for o in operands:
                        walk(o)

        walk(expr)
        return out

    def _unpost(self, endpoint: str, labels: Mapping[str, str]) -> None:
        for key, value in labels.items():
            pair = self._by_pair[(key, value)]
            pair.discard(endpoint)
            if not pair:
                del self._by_pair[(key, value)]
            holders = self._by_key[key]
            holders.discard(endpoint)
            if not holders:
                del self._by_key[key]

    def _evaluate(self, expr: Expr) -> set[str]:
        """Members of ``expr`` by set algebra over posting lists."""
        match expr:
            case All():
                return set(self._labels)
            case Has(key):
                return set(self._by_key.get(key, ()))
            case Compare(key, Op.EQ, (value,)):
                return set(self._by_pair.get((key, value), ()))
            case Compare(key, Op.IN, values):
                return set().union(*(self._by_pair.get((key, v), ()) for v in values))
            case Compare(key, Op.NE | Op.NOT_IN, _):
                positive = Compare(key, Op.EQ if expr.op == Op.NE else Op.IN, expr.values)
                return set(self._labels) - self._evaluate(positive)
            case Compare(key, _, _):
                # starts with / ends with / contains: scan this key's holders' values.
                return {e for e in self._by_key.get(key, ()) if expr_matches(expr, self._labels[e])}
            case Not(operand):
                return set(self._labels) - self._evaluate(operand)
            case And(operands):
                # Start from the smallest positive operand to keep the intersection cheap.
                parts = sorted((self._evaluate(o) for o in operands), key=len)
                result = parts[0]
                for part in parts[1:]:
                    result &= part
                return result
            case Or(operands):
                return set().union(*(self._evaluate(o) for o in operands))
        raise AssertionError(f"unknown selector node {expr!r}")  # pragma: no cover


def expr_matches(expr: Compare, labels: Mapping[str, str]) -> bool:
    value = labels.get(expr.key)
    if value is None:
        return False
    (needle,) = expr.values
    if expr.op == Op.STARTS_WITH:
        return value.startswith(needle)
    if expr.op == Op.ENDS_WITH:
        return value.endswith(needle)
    return needle in value
