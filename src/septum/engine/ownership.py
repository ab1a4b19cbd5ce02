"""Who held which address when: address-ownership intervals, from the repository and history.

Ephemeral addresses (containers, DHCP, VPN sessions) belong to different workloads and users
at different times, so a flow is attributed by its time (``semantics.md``, attribution
paragraph). Ownership comes from two places:

- the repository: a workload's or user session's ``AddressBinding``, with or without
  validity times;
- the **history**: inventory snapshots recorded over time (:func:`record_snapshot`). A
  binding seen at snapshot t₁ and gone at snapshot t₂ becomes the interval [t₁, t₂), so an
  address keeps its past owner after the repository has moved on.

:func:`resolve_ownership` merges both into **disjoint** intervals per address, so each
(address, time) has at most one owner. Precedence where they overlap, first wins:

1. workload bindings with validity times (someone wrote down exactly when),
2. workload intervals from the history,
3. workload bindings without times (true "now", assumed for all time otherwise),
4. the same three for user sessions (workloads come before users, as in attribution).

Ties within a level go to the first name, as :class:`~septum.engine.attribution.Attributor`
breaks them. :func:`with_ownership` rebinds a repository's workloads and users to the
resolved intervals, so that ``explain`` over the rebound repository attributes exactly as the
flow store did. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import pairwise

from septum.engine.attribution import EndpointKind
from septum.model.resources import AddressBinding, IPAddress, Repository

__all__ = [
    "OwnershipInterval",
    "record_snapshot",
    "repository_intervals",
    "resolve_ownership",
    "with_ownership",
]

#: precedence level of an interval's origin (lower wins); see the module docstring
_TIMED, _HISTORY, _TIMELESS = 0, 1, 2


@dataclass(frozen=True, slots=True)
class OwnershipInterval:
    """``owner`` (a workload or user, by ``kind``) held ``address`` in [start, end).

    ``start`` None: since ever; ``end`` None: still holds it."""

    address: IPAddress
    kind: EndpointKind
    owner: str
    start: datetime | None = None
    end: datetime | None = None

    def covers(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)

    def sort_key(self) -> tuple[int, int, float, float, str, str]:
        """Address, then time; deterministic for any mix of open and closed intervals."""
        return (
            self.address.version,
            int(self.address),
            self.start.timestamp() if self.start is not None else float("-inf"),
            self.end.timestamp() if self.end is not None else float("inf"),
            self.kind.value,
            self.owner,
        )


def _binding_intervals(repo: Repository) -> Iterable[tuple[int, OwnershipInterval]]:
    """(precedence, interval) for every binding in the repository."""
    for kind, holders in (
        (EndpointKind.WORKLOAD, ((w.name, w.addresses) for w in repo.workloads)),
        (EndpointKind.USER, ((u.name, u.sessions) for u in repo.users)),
    ):
        base = 0 if kind is EndpointKind.WORKLOAD else 3
        for name, bindings in holders:
            for b in bindings:
                timed = b.valid_from is not None or b.valid_until is not None
                yield (
                    base + (_TIMED if timed else _TIMELESS),
                    OwnershipInterval(b.address, kind, name, b.valid_from, b.valid_until),
                )


def repository_intervals(repo: Repository) -> tuple[OwnershipInterval, ...]:
    """Every binding of the repository as an interval (overlaps not resolved), sorted."""
    return tuple(sorted((i for _, i in _binding_intervals(repo)), key=OwnershipInterval.sort_key))


def record_snapshot(
    history: Sequence[OwnershipInterval], repo: Repository, at: datetime
) -> tuple[OwnershipInterval, ...]:
    """The history after observing ``repo``'s inventory at time ``at``.

    For every (address, kind, owner) whose binding is valid at ``at``: an open interval
    (``end`` None) is kept, else one is opened at ``at``. Every open interval whose owner no
    longer holds the address at ``at`` is closed at ``at``. Closed intervals never change,
    so recording snapshots in time order only ever appends or closes. Snapshots must come
    in time order; an ``at`` before an open interval's start closes nothing it cannot (that
    interval is kept open). Cost: O(history + bindings).
    """
    held = {(i.address, i.kind, i.owner) for _, i in _binding_intervals(repo) if i.covers(at)}
    out: list[OwnershipInterval] = []
    still_open: set[tuple[IPAddress, EndpointKind, str]] = set()
    for i in history:
        key = (i.address, i.kind, i.owner)
        if i.end is not None:
            out.append(i)
        elif key in held or (i.start is not None and at <= i.start):
            out.append(i)
            still_open.add(key)
        else:
            out.append(replace(i, end=at))
    for address, kind, owner in held - still_open:
        out.append(OwnershipInterval(address, kind, owner, at, None))
    return tuple(sorted(out, key=OwnershipInterval.sort_key))


def _history_precedence(i: OwnershipInterval) -> int:
    return (0 if i.kind is EndpointKind.WORKLOAD else 3) + _HISTORY


def resolve_ownership(
    repo: Repository, history: Sequence[OwnershipInterval] = ()
) -> tuple[OwnershipInterval, ...]:
    """Disjoint ownership intervals per address from the repository and the history.

    Per address, the time line is cut at every interval boundary; each piece goes to the
    covering interval of lowest precedence (module docstring), ties by name; adjacent pieces
    of one owner are joined. Cost: O(n log n) in the number of intervals, and per address
    O(boundaries × intervals of that address) (normally one or two).
    """
    by_address: dict[IPAddress, list[tuple[int, OwnershipInterval]]] = defaultdict(list)
    for precedence, interval in _binding_intervals(repo):
        by_address[interval.address].append((precedence, interval))
    for interval in history:
        by_address[interval.address].append((_history_precedence(interval), interval))

    out: list[OwnershipInterval] = []
    for candidates in by_address.values():
        if len(candidates) == 1:
            out.append(candidates[0][1])
            continue
        candidates.sort(key=lambda c: (c[0], c[1].owner))
        cuts = sorted({t for _, i in candidates for t in (i.start, i.end) if t is not None})
        # pieces: (None, c0), (c0, c1), ..., (cn, None)
        edges: list[datetime | None] = [None, *cuts, None]
        current: OwnershipInterval | None = None
        for lo, hi in pairwise(edges):
            winner = next((i for _, i in candidates if _covers_piece(i, lo, hi)), None)
            if (
                current is not None
                and winner is not None
                and (winner.kind, winner.owner) == (current.kind, current.owner)
                and current.end == lo
            ):
                current = replace(current, end=hi)
                continue
            if current is not None:
                out.append(current)
            current = (
                OwnershipInterval(winner.address, winner.kind, winner.owner, lo, hi)
                if winner is not None
                else None
            )
        if current is not None:
            out.append(current)
    return tuple(sorted(out, key=OwnershipInterval.sort_key))


def _covers_piece(i: OwnershipInterval, lo: datetime | None, hi: datetime | None) -> bool:
    """Whether interval ``i`` covers the whole piece [lo, hi) (pieces never straddle an
    interval boundary, so checking its ends suffices)."""
    if i.start is not None and (lo is None or lo < i.start):
        return False
    return not (i.end is not None and (hi is None or hi > i.end))


def with_ownership(repo: Repository, intervals: Sequence[OwnershipInterval]) -> Repository:
    """``repo`` with every workload's addresses and user's sessions replaced by the resolved
    ``intervals`` they own (owners absent from ``repo`` are dropped: nothing is known of
    their labels). Intervals must be disjoint per address (from :func:`resolve_ownership`).
    Cost: O(intervals + workloads + users)."""
    owned: dict[tuple[EndpointKind, str], list[AddressBinding]] = defaultdict(list)
    for i in intervals:
        owned[(i.kind, i.owner)].append(AddressBinding(i.address, i.start, i.end))
    return replace(
        repo,
        workloads=tuple(
            replace(w, addresses=tuple(owned.get((EndpointKind.WORKLOAD, w.name), ())))
            for w in repo.workloads
        ),
        users=tuple(
            replace(u, sessions=tuple(owned.get((EndpointKind.USER, u.name), ())))
            for u in repo.users
        ),
    )
