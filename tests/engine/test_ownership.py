"""Ownership intervals: resolution against brute force, history snapshots, rebinding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.attribution import Attributor, EndpointKind
from septum.engine.ownership import (
    OwnershipInterval,
    record_snapshot,
    resolve_ownership,
    with_ownership,
)
from septum.model.resources import Repository
from septum.testing.builders import repo, user, workload

T0 = datetime(2026, 11, 24, tzinfo=UTC)
ADDRESSES = ["198.18.0.1", "198.18.0.2", "2001:db8::1"]


def hours(n: int) -> datetime:
    return T0 + timedelta(hours=n)


def owner_at(intervals: tuple[OwnershipInterval, ...], address: str, at: datetime) -> str | None:
    found = [i for i in intervals if str(i.address) == address and i.covers(at)]
    assert len(found) <= 1, found
    return found[0].owner if found else None


# A binding: (address index, start hour or None, end hour or None)
binding = st.tuples(
    st.integers(0, len(ADDRESSES) - 1),
    st.one_of(st.none(), st.integers(0, 20)),
    st.one_of(st.none(), st.integers(1, 24)),
).filter(lambda b: b[1] is None or b[2] is None or b[1] < b[2])


@st.composite
def estates(draw: st.DrawFn) -> Repository:
    """Workloads and users with overlapping bindings (resolution must cope with overlaps
    the parser would refuse, deterministically)."""
    objects: list[object] = []
    for i in range(draw(st.integers(0, 4))):
        bindings = draw(st.lists(binding, max_size=3))
        objects.append(
            workload(
                f"w{i}",
                *[
                    (
                        ADDRESSES[a],
                        hours(s) if s is not None else None,
                        hours(e) if e is not None else None,
                    )
                    for a, s, e in bindings
                ],
            )
        )
    for i in range(draw(st.integers(0, 2))):
        bindings = draw(st.lists(binding, max_size=2))
        objects.append(
            user(
                f"u{i}",
                *[
                    (
                        ADDRESSES[a],
                        hours(s) if s is not None else None,
                        hours(e) if e is not None else None,
                    )
                    for a, s, e in bindings
                ],
            )
        )
    return repo(*objects)  # type: ignore[arg-type]


def brute_force(
    model: Repository, history: tuple[OwnershipInterval, ...], address: str, at: datetime
) -> str | None:
    """The precedence of ``resolve_ownership``'s docstring, evaluated directly."""
    candidates: list[tuple[int, str]] = []
    for w in model.workloads:
        for b in w.addresses:
            if str(b.address) == address and b.valid_at(at):
                timed = b.valid_from is not None or b.valid_until is not None
                candidates.append((0 if timed else 2, w.name))
    for u in model.users:
        for b in u.sessions:
            if str(b.address) == address and b.valid_at(at):
                timed = b.valid_from is not None or b.valid_until is not None
                candidates.append((3 if timed else 5, u.name))
    for i in history:
        if str(i.address) == address and i.covers(at):
            candidates.append((1 if i.kind is EndpointKind.WORKLOAD else 4, i.owner))
    return min(candidates)[1] if candidates else None


PROBES = [hours(h) + timedelta(minutes=m) for h in range(-1, 26) for m in (0, 30)]


@settings(max_examples=150, deadline=None)
@given(estates(), estates(), st.integers(0, 24))
def test_resolution_is_disjoint_and_follows_precedence(
    model: Repository, earlier: Repository, snapshot_hour: int
) -> None:
    history = record_snapshot((), earlier, hours(snapshot_hour))
    history = record_snapshot(history, model, hours(snapshot_hour + 1))
    resolved = resolve_ownership(model, history)
    for address in ADDRESSES:
        for at in PROBES:
            assert owner_at(resolved, address, at) == brute_force(model, history, address, at)


@settings(max_examples=150, deadline=None)
@given(estates())
def test_without_history_rebinding_attributes_like_the_attributor(model: Repository) -> None:
    """Where the repository is unambiguous (no two holders of one address at one time),
    the rebound repository attributes exactly as the original."""
    resolved = resolve_ownership(model)
    rebound = Attributor(with_ownership(model, resolved))
    original = Attributor(model)
    for address in ADDRESSES:
        for at in PROBES:
            holders = {
                w.name
                for w in model.workloads
                for b in w.addresses
                if str(b.address) == address and b.valid_at(at)
            }
            users = {
                u.name
                for u in model.users
                for b in u.sessions
                if str(b.address) == address and b.valid_at(at)
            }
            if len(holders) > 1 or (not holders and len(users) > 1):
                continue  # ambiguous: the parser refuses such repositories
            a, b = (
                rebound.attribute(ip_address(address), at),
                original.attribute(ip_address(address), at),
            )
            assert (a.kind, a.name) == (b.kind, b.name)


def test_snapshots_open_keep_and_close_intervals() -> None:
    first = repo(workload("a", "198.18.0.1"), workload("b", "198.18.0.2"))
    second = repo(workload("c", "198.18.0.1"), workload("b", "198.18.0.2"))
    history = record_snapshot((), first, hours(0))
    history = record_snapshot(history, first, hours(1))  # nothing changes
    history = record_snapshot(history, second, hours(2))
    assert [(str(i.address), i.owner, i.start, i.end) for i in history] == [
        ("198.18.0.1", "a", hours(0), hours(2)),
        ("198.18.0.1", "c", hours(2), None),
        ("198.18.0.2", "b", hours(0), None),
    ]
    # an address held again later opens a new interval
    history = record_snapshot(history, first, hours(3))
    assert [(i.owner, i.start, i.end) for i in history if str(i.address) == "198.18.0.1"] == [
        ("a", hours(0), hours(2)),
        ("c", hours(2), hours(3)),
        ("a", hours(3), None),
    ]


def test_history_beats_a_timeless_binding_but_not_a_timed_one() -> None:
    history = record_snapshot((), repo(workload("old", "198.18.0.1")), hours(0))
    now = repo(
        workload("new", "198.18.0.1"),
        workload("exact", ("198.18.0.1", hours(5), hours(6))),
    )
    history = record_snapshot(history, now, hours(10))
    resolved = resolve_ownership(now, history)
    assert owner_at(resolved, "198.18.0.1", hours(-5)) == "new"  # before any record
    assert owner_at(resolved, "198.18.0.1", hours(3)) == "old"
    assert owner_at(resolved, "198.18.0.1", hours(5)) == "exact"
    assert owner_at(resolved, "198.18.0.1", hours(11)) == "new"
