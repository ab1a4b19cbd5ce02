"""Benchmark of the host agent's transactions against plain nft and a naive iptables peer.

    python bench/agent.py [--seed N] [--workloads 40000 --policies 300 --enforcers 320]
                          [--target-elements 100000] [--enforcer NAME] [--delta 1000]
                          [--runs 5] [--peer-budget 60] [--json]

Everything runs inside a network namespace the bench creates (``septum-bench-<hex>-agent``,
entered in-process with setns(2) so that every nft and iptables process inherits it, and
deleted on the way out even on failure): the host's own ruleset is never touched.

The ruleset. A generated estate (``generate_estate(seed, workloads, policies, enforcers)``)
is resolved and every enforcer's ruleset built; the bench takes the enforcer whose ruleset's
set and map elements are closest to ``--target-elements`` (or ``--enforcer``). With the
defaults (40,000 workloads, 300 policies, 320 enforcers, seed 1), that is one enforcer of
~125 local workloads whose ruleset holds ~100k elements (selector sets hold the addresses of
every workload in the estate that a peer selector selects, not only local ones) in ~1.2k
rules; the exact counts are printed. One enforcer's ruleset is used as is: rulesets of
several enforcers are not combinable (they share chain and set names).

Figures, each the median of ``--runs`` samples, agent and plain runs interleaved:

1. Full apply (a structural change): the agent's ``apply_ruleset`` alternates between the
   ruleset and a copy with one extra rule, so every call diffs, renders the whole table,
   applies it with ``nft -f -`` and saves it on disk (fsync); against ``nft -f FILE`` of the
   same two scripts (written beforehand). Target: agent <= 1.25x plain nft. The agent's time
   is broken down (diff, render, nft, state save) by wrapping the functions it calls and its
   backend and store; nothing in the agent changes.
2. Element delta: the ruleset and a copy with ``--delta`` more set elements (fresh addresses
   of the address plan's free range, each put in the sets an existing workload address is
   in, as a new workload's would be), added and removed alternately (the table does not
   grow) three ways: through the agent given the element deltas (``apply_element_delta``,
   as from ``IncrementalCompiler``: render, nft, journal, update of its copy of the
   ruleset), through the agent given the next ruleset (``apply_ruleset``: a diff of the
   whole table first, as ``sync`` does), and, for reference, the same delta scripts with
   plain ``nft -f FILE``. Target: agent <= 20 ms.
3. Naive peer: the same estate as one iptables rule per (local address, remote address,
   protocol, port range): every rule of a workload or tier chain is expanded over the local
   workload addresses that reach the chain (through the dispatch maps and jumps) and the
   elements of its positive remote-side sets. Negated exclusions (``!= @attributed_v4``) and
   log statements are dropped, which favours the peer. IPv4 rules are loaded with
   ``iptables-restore`` (a ``*filter`` table with one custom chain) in doubling sizes until
   the ``--peer-budget`` (seconds, for the whole step) runs out; when the expansion does not
   fit, the total is EXTRAPOLATED from the rate of the largest load and says so. The same
   with ``iptables-legacy-restore`` when the kernel has legacy iptables.
4. libnftables: when Debian's python3-nftables is installed (its ctypes wrapper, imported
   from /usr/lib/python3/dist-packages by this bench only), the same full and delta scripts
   applied in-process against the nft CLI (the agent uses libnftables when it is installed,
   the CLI otherwise; the output names the agent's backend).

``gc.freeze()`` runs after setup (the estate and the rulesets), as in ``bench/compile.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path
from random import Random
from types import FrameType
from typing import Any

import septum.agent.agent as agent_module
from septum.agent.agent import Agent, AgentSettings, SyncOutcome
from septum.agent.backend import NftBackend, NftCli, default_backend
from septum.agent.source import SourceUnavailable
from septum.agent.state import AppliedMeta, StateStore
from septum.engine.resolve import resolve_policy
from septum.model.resources import PortRange, Protocol, Repository
from septum.render.compile import build_all
from septum.render.hostruleset import (
    AddrMatch,
    ElementDelta,
    Family,
    HostRuleset,
    MapElement,
    NftRule,
    PortMatch,
    ProtoMatch,
    Provenance,
    Verdict,
    diff_rulesets,
    element_sort_key,
)
from septum.render.nft import render_nft, render_set_delta
from septum.testing.estate import ADDRESS_PLAN, generate_estate

AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TARGET_FULL_RATIO = 1.25
TARGET_DELTA_MS = 20.0
CLONE_NEWNET = 0x40000000
LIBNFTABLES_PATH = "/usr/lib/python3/dist-packages"
PEER_CHAIN = "SEPTUM-BENCH"


# --------------------------------------------------------------------------- namespace


@contextmanager
def _netns() -> Iterator[str]:
    """A fresh network namespace, entered by this thread (so by every process it starts)
    and left and deleted on the way out, even on failure or SIGTERM."""
    name = f"septum-bench-{uuid.uuid4().hex[:8]}-agent"
    libc = ctypes.CDLL(None, use_errno=True)
    previous_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    created = False
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        created = True
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        finally:
            os.close(fd)
        if os.stat("/proc/thread-self/ns/net").st_ino == os.fstat(home).st_ino:
            raise RuntimeError(f"still in the host's network namespace after entering {name}")
        try:
            yield name
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover
                print(f"warning: could not leave {name}", file=sys.stderr)
    finally:
        os.close(home)
        if created:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        signal.signal(signal.SIGTERM, previous_term)


# --------------------------------------------------------------------------- rulesets


@dataclass(frozen=True, slots=True)
class _Counts:
    elements: int
    set_elements: int
    map_elements: int
    rules: int
    chains: int
    sets: int
    maps: int
    local_workloads: int
    script_bytes: int


def _counts(rs: HostRuleset, script: str) -> _Counts:
    set_elements = sum(len(s.elements) for s in rs.sets)
    map_elements = sum(len(m.elements) for m in rs.maps)
    return _Counts(
        elements=set_elements + map_elements,
        set_elements=set_elements,
        map_elements=map_elements,
        rules=sum(len(c.rules) for c in rs.chains),
        chains=len(rs.chains),
        sets=len(rs.sets),
        maps=len(rs.maps),
        local_workloads=sum(1 for c in rs.chains if c.name.startswith("w_")) // 2,
        script_bytes=len(script.encode()),
    )


def _elements(rs: HostRuleset) -> int:
    return sum(len(s.elements) for s in rs.sets) + sum(len(m.elements) for m in rs.maps)


def _choose_ruleset(
    repo: Repository, target: int, enforcer: str | None
) -> tuple[HostRuleset, dict[str, int]]:
    """The ruleset of ``enforcer``, or of the enforcer whose element count is closest to
    ``target`` (ties: by name); with the spread of element counts over all enforcers."""
    rulesets = build_all(resolve_policy(repo, AT), repo.enforcers())
    if not rulesets:
        raise SystemExit("the estate has no enforcer")
    sizes = {name: _elements(rs) for name, rs in rulesets.items()}
    if enforcer is None:
        enforcer = min(sizes, key=lambda n: (abs(sizes[n] - target), n))
    elif enforcer not in rulesets:
        raise SystemExit(f"no enforcer {enforcer!r} in the estate")
    ordered = sorted(sizes.values())
    spread = {
        "enforcers": len(ordered),
        "min": ordered[0],
        "median": int(statistics.median(ordered)),
        "max": ordered[-1],
    }
    return rulesets[enforcer], spread


def _structural_variant(rs: HostRuleset) -> HostRuleset:
    """``rs`` with one more rule (an ingress allow of tcp/65000) at the top of its first
    ingress tier chain, or of its first chain without a hook: a structural change."""
    chains = list(rs.chains)
    candidates = [
        i for i, c in enumerate(chains) if c.name.startswith("t_") and c.name[-3:] == "_in"
    ]
    candidates += [i for i, c in enumerate(chains) if c.hook is None]
    i = candidates[0]
    extra = NftRule(
        (PortMatch(((Protocol.TCP, PortRange(65000, 65000)),)),),
        Verdict.ACCEPT,
        Provenance(note="bench-structural-change"),
    )
    chains[i] = replace(chains[i], rules=(extra, *chains[i].rules))
    return replace(rs, chains=tuple(chains))


def _with_more_elements(rs: HostRuleset, count: int, seed: int) -> HostRuleset:
    """``rs`` with ``count`` more set elements: fresh addresses from the address plan's free
    range, each added to the sets that a randomly chosen existing IPv4 element is in (as a
    new workload's address would be), the last one to only as many as complete ``count``."""
    membership: dict[IPv4Network, list[str]] = {}
    used: set[object] = set()
    for s in rs.sets:
        used.update(s.elements)
        if s.interval:
            continue
        for e in s.elements:
            if isinstance(e, IPv4Network):
                membership.setdefault(e, []).append(s.name)
    for m in rs.maps:
        used.update(e.key for e in m.elements)
    if not membership:
        raise SystemExit("the ruleset has no IPv4 set element to model new addresses on")
    templates = sorted(membership, key=element_sort_key)
    rng = Random(seed)
    free = ADDRESS_PLAN["free-v4"]
    next_host = int(free.network_address) + 1
    added: dict[str, list[IPv4Network]] = {}
    done = 0
    while done < count:
        while IPv4Network(next_host) in used:
            next_host += 1
        if next_host >= int(free.broadcast_address):
            raise SystemExit("the free IPv4 range of the address plan is exhausted")
        address = IPv4Network(next_host)
        used.add(address)
        for name in membership[rng.choice(templates)]:
            if done == count:
                break
            added.setdefault(name, []).append(address)
            done += 1
    sets = tuple(
        replace(s, elements=tuple(sorted((*s.elements, *added[s.name]), key=element_sort_key)))
        if s.name in added
        else s
        for s in rs.sets
    )
    return replace(rs, sets=sets)


# --------------------------------------------------------------------------- timing


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _median_ms(samples: Sequence[float]) -> float:
    return _ms(statistics.median(samples)) if samples else 0.0


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "median_ms": _median_ms(samples),
        "min_ms": _ms(min(samples)) if samples else 0.0,
        "max_ms": _ms(max(samples)) if samples else 0.0,
        "samples_ms": [round(_ms(s), 3) for s in samples],
    }


def _run_nft_file(nft: str, path: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([nft, "-f", str(path)], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"nft -f {path} failed: {proc.stderr.strip()[:2000]}")
    return elapsed


@dataclass
class _Steps:
    """Time spent in each step of the agent's apply, recorded per call."""

    diff: list[float] = field(default_factory=list)
    render: list[float] = field(default_factory=list)
    nft: list[float] = field(default_factory=list)
    save: list[float] = field(default_factory=list)
    update: list[float] = field(default_factory=list)  # apply_delta: the agent's own copy

    def clear(self) -> None:
        for samples in (self.diff, self.render, self.nft, self.save, self.update):
            samples.clear()


class _TimedBackend:
    """The agent's real backend (``default_backend()``: libnftables when Debian's
    python3-nftables is installed, else the nft CLI), timed."""

    def __init__(self, inner: NftBackend, steps: _Steps) -> None:
        self.inner = inner
        self.steps = steps

    def apply(self, script: str) -> None:
        start = time.perf_counter()
        try:
            self.inner.apply(script)
        finally:
            self.steps.nft.append(time.perf_counter() - start)

    def table_exists(self, family: str, table: str) -> bool:
        return self.inner.table_exists(family, table)


class _TimedStore(StateStore):
    """The agent's real state store, timed."""

    def __init__(self, directory: Path, steps: _Steps) -> None:
        super().__init__(directory)
        self.steps = steps

    def save_full(self, script: str, meta: AppliedMeta) -> None:
        start = time.perf_counter()
        super().save_full(script, meta)
        self.steps.save.append(time.perf_counter() - start)

    def append_delta(self, script: str, source_digest: str | None, applied_at: str) -> None:
        start = time.perf_counter()
        super().append_delta(script, source_digest, applied_at)
        self.steps.save.append(time.perf_counter() - start)


def _timed(fn: Callable[..., Any], samples: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            samples.append(time.perf_counter() - start)

    return wrapper


@contextmanager
def _instrumented(steps: _Steps) -> Iterator[None]:
    """Time the pure steps the agent's apply methods call. The agent module imports
    ``diff_rulesets``, ``render_nft``, ``render_set_delta`` and ``apply_delta`` by name; they
    are wrapped there for the duration, so the agent's own code runs unchanged."""
    names = {
        "diff_rulesets": steps.diff,
        "render_nft": steps.render,
        "render_set_delta": steps.render,
        "apply_delta": steps.update,
    }
    saved = {name: getattr(agent_module, name) for name in names}
    try:
        for name, samples in names.items():
            setattr(agent_module, name, _timed(saved[name], samples))
        yield
    finally:
        for name, fn in saved.items():
            setattr(agent_module, name, fn)


class _NoSource:
    """The bench calls the agent's apply methods directly; it never asks its source."""

    def digest(self) -> str:
        raise SourceUnavailable("bench: no source")

    def fetch(self) -> tuple[Repository, str]:
        raise SourceUnavailable("bench: no source")


def _agent_apply(
    agent: Agent,
    change: HostRuleset | Sequence[ElementDelta],
    expect: SyncOutcome,
    steps: _Steps,
) -> tuple[float, dict[str, float]]:
    """One ``apply_ruleset`` call (given a ruleset) or ``apply_element_delta`` call (given
    element deltas): its time, and its steps' times (seconds)."""
    steps.clear()
    start = time.perf_counter()
    if isinstance(change, HostRuleset):
        result = agent.apply_ruleset(change, None, AT)
    else:
        result = agent.apply_element_delta(change, None, AT)
    elapsed = time.perf_counter() - start
    if result.outcome is not expect:
        raise RuntimeError(f"agent: expected {expect.value}, got {result.outcome.value}: {result}")
    parts = {
        "diff": sum(steps.diff),
        "render": sum(steps.render),
        "nft": sum(steps.nft),
        "save": sum(steps.save),
        "update": sum(steps.update),
    }
    parts["other"] = max(0.0, elapsed - sum(parts.values()))
    return elapsed, parts


def _breakdown(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = ("diff", "render", "nft", "save", "update", "other")
    return {f"{k}_ms": _median_ms([p[k] for p in parts]) for k in keys}


# --------------------------------------------------------------------------- figures


def _full_apply(
    agent: Agent,
    steps: _Steps,
    nft: str,
    variants: Sequence[tuple[HostRuleset, Path]],
    runs: int,
    fresh: Callable[[], Agent] | None = None,
) -> dict[str, Any]:
    """Figure 1: each run applies the other variant (a structural change) through the agent
    and with plain ``nft -f FILE``; which of the two goes first alternates. With ``fresh``,
    every run uses a new agent (as after a restart: no table known, nothing rendered to
    reuse, so every set is rendered)."""
    agent_s: list[float] = []
    plain_s: list[float] = []
    parts: list[dict[str, float]] = []
    for i in range(runs):
        if fresh is not None:
            agent = fresh()
        rs, path = variants[(i + 1) % 2]
        if i % 2 == 0:
            elapsed, p = _agent_apply(agent, rs, SyncOutcome.FULL, steps)
            plain_s.append(_run_nft_file(nft, path))
        else:
            plain_s.append(_run_nft_file(nft, path))
            elapsed, p = _agent_apply(agent, rs, SyncOutcome.FULL, steps)
        agent_s.append(elapsed)
        parts.append(p)
    agent_ms, plain_ms = _median_ms(agent_s), _median_ms(plain_s)
    return {
        "agent": _summary(agent_s),
        "plain_nft": _summary(plain_s),
        "ratio": agent_ms / plain_ms if plain_ms else 0.0,
        "agent_breakdown": _breakdown(parts),
    }


def _element_delta(
    agent: Agent,
    steps: _Steps,
    nft: str,
    rulesets: tuple[HostRuleset, HostRuleset],
    deltas: tuple[Sequence[ElementDelta], Sequence[ElementDelta]],
    paths: tuple[Path, Path],
    runs: int,
) -> dict[str, Any]:
    """Figure 2, from the base ruleset to the one with more elements (add) and back
    (remove), three ways per run: the agent given the next ruleset (``apply_ruleset``: it
    diffs the whole table), plain ``nft -f FILE``, and the agent given the element deltas
    (``apply_element_delta``). Each transaction finds the kernel as it expects."""
    base, more = rulesets
    samples: dict[str, dict[str, list[float]]] = {
        key: {"add": [], "remove": []} for key in ("diffed", "plain", "received")
    }
    parts: dict[str, list[dict[str, float]]] = {"diffed": [], "received": []}
    for i in range(runs):
        order = ("diffed", "plain", "received")
        for how in order[i % 3 :] + order[: i % 3]:
            for op, target, delta, path in (
                ("add", more, deltas[0], paths[0]),
                ("remove", base, deltas[1], paths[1]),
            ):
                if how == "plain":
                    samples[how][op].append(_run_nft_file(nft, path))
                    continue
                change = target if how == "diffed" else delta
                elapsed, p = _agent_apply(agent, change, SyncOutcome.DELTA, steps)
                samples[how][op].append(elapsed)
                parts[how].append(p)
    out: dict[str, Any] = {}
    for how, by_op in samples.items():
        out[how] = {
            **_summary(by_op["add"] + by_op["remove"]),
            "add_median_ms": _median_ms(by_op["add"]),
            "remove_median_ms": _median_ms(by_op["remove"]),
        }
        if how in parts:
            out[how]["breakdown"] = _breakdown(parts[how])
    return out


def _nft_floor(nft: str, directory: Path, runs: int) -> dict[str, Any]:
    """``nft -f`` of a script that changes nothing visible (a table declared and deleted):
    the cost of the process and of an (almost) empty transaction."""
    path = directory / "floor.nft"
    path.write_text("table inet septum_bench_floor\ndelete table inet septum_bench_floor\n")
    return _summary([_run_nft_file(nft, path) for _ in range(max(3, runs))])


def _libnftables(
    nft: str,
    full: Sequence[tuple[str, Path]],
    delta: Sequence[tuple[str, Path]],
    runs: int,
) -> dict[str, Any]:
    """Figure 4: the same scripts through libnftables in-process against the nft CLI.
    ``full`` and ``delta`` are (script, file) pairs applied alternately."""
    if LIBNFTABLES_PATH not in sys.path:
        sys.path.append(LIBNFTABLES_PATH)
    try:
        from nftables import Nftables  # type: ignore[import-not-found]
    except ImportError as exc:
        return {"installed": False, "reason": str(exc)}
    try:
        lib = Nftables()  # after setns: its netlink socket is in the bench namespace
    except OSError as exc:
        return {"installed": False, "reason": f"libnftables.so.1: {exc}"}

    def in_process(script: str) -> float:
        start = time.perf_counter()
        rc, _, error = lib.cmd(script)
        elapsed = time.perf_counter() - start
        if rc != 0:
            raise RuntimeError(f"libnftables: {error.strip()[:2000]}")
        return elapsed

    out: dict[str, Any] = {"installed": True}
    # The delta first: the kernel holds the base ruleset, which its first script expects.
    for label, pairs in (("delta", delta), ("full", full)):
        lib_s: list[float] = []
        cli_s: list[float] = []
        applied = 0  # scripts alternate: each transaction expects what the previous left
        for i in range(runs):
            for who in ("lib", "cli") if i % 2 == 0 else ("cli", "lib"):
                script, path = pairs[applied % 2]
                applied += 1
                if who == "lib":
                    lib_s.append(in_process(script))
                else:
                    cli_s.append(_run_nft_file(nft, path))
        lib_ms, cli_ms = _median_ms(lib_s), _median_ms(cli_s)
        out[label] = {
            "libnftables": _summary(lib_s),
            "cli": _summary(cli_s),
            "cli_minus_libnftables_ms": cli_ms - lib_ms,
        }
    return out


# --------------------------------------------------------------------------- naive peer


@dataclass(frozen=True, slots=True)
class _PeerRule:
    """One nft rule of a local chain, as the naive peer expands it (IPv4 only)."""

    remote: tuple[str, ...] | None  # None: any remote address
    services: tuple[str, ...]  # iptables protocol/port options, one per alternative
    target: str  # "-j ACCEPT" ... or "" (a log rule: no target)


@dataclass(frozen=True, slots=True)
class _PeerChain:
    direction: str  # "in" | "eg"
    local: tuple[str, ...]  # the local IPv4 addresses that reach the chain
    rules: tuple[_PeerRule, ...]


@dataclass(frozen=True, slots=True)
class _PeerPlan:
    chains: tuple[_PeerChain, ...]
    pairs_v4: int
    pairs_v6: int  # counted like the IPv4 ones; loaded by neither restore (see the docstring)


def _text(n: IPv4Network) -> str:
    return str(n.network_address) if n.prefixlen == 32 else str(n)


def _chain_locals(rs: HostRuleset) -> dict[str, dict[Family, int | list[str]]]:
    """Chain name → the local addresses reaching it, by family (IPv4 as text, IPv6 counted):
    a workload chain through the dispatch maps, a tier chain through the jumps to it."""
    v4: dict[str, set[str]] = {}
    v6: dict[str, set[str]] = {}
    for m in rs.maps:
        for e in m.elements:
            assert isinstance(e, MapElement)
            if isinstance(e.key, IPv4Network):
                v4.setdefault(e.chain, set()).add(_text(e.key))
            else:
                v6.setdefault(e.chain, set()).add(str(e.key))
    for c in rs.chains:
        if not c.name.startswith("w_"):
            continue
        for r in c.rules:
            if r.verdict is Verdict.JUMP and r.target is not None:
                v4.setdefault(r.target, set()).update(v4.get(c.name, ()))
                v6.setdefault(r.target, set()).update(v6.get(c.name, ()))
    return {
        name: {Family.IP: sorted(v4.get(name, ())), Family.IP6: len(v6.get(name, ()))}
        for name in v4.keys() | v6.keys()
    }


_IPT_PROTO = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}


def _services(r: NftRule, family: Family) -> tuple[str, ...]:
    out: list[str] = []
    has_service = False
    for m in r.matches:
        if isinstance(m, PortMatch):
            has_service = True
            for proto, ports in m.entries:
                span = (
                    str(ports.first) if ports.first == ports.last else f"{ports.first}:{ports.last}"
                )
                out.append(f"-p {_IPT_PROTO[proto]} --dport {span}")
        elif isinstance(m, ProtoMatch):
            has_service = True
            for proto in m.protocols:
                if proto is Protocol.ICMPV6 and family is Family.IP:
                    continue  # not an IPv4 protocol
                if proto is Protocol.ICMP and family is Family.IP6:
                    continue
                out.append(f"-p {'ipv6-icmp' if proto is Protocol.ICMPV6 else proto.value}")
    return tuple(out) if has_service else ("",)


def _target(r: NftRule) -> str:
    if r.verdict is Verdict.DROP:
        return "-j DROP"
    if r.verdict is Verdict.RETURN:
        return "-j RETURN"
    if r.verdict in (Verdict.ACCEPT, Verdict.GOTO):  # egress allow: goto ingress_dispatch
        return "-j ACCEPT"
    return ""  # log (continue)


def _peer_plan(rs: HostRuleset) -> _PeerPlan:
    """The naive expansion of ``rs`` (see the module docstring), with its pair counts."""
    sets = {s.name: s for s in rs.sets}
    locals_ = _chain_locals(rs)
    chains: list[_PeerChain] = []
    pairs_v4 = pairs_v6 = 0
    for c in rs.chains:
        if not c.name.startswith(("w_", "t_")):
            continue
        here = locals_.get(c.name, {Family.IP: [], Family.IP6: 0})
        local4 = here[Family.IP]
        assert isinstance(local4, list)
        local6 = here[Family.IP6]
        assert isinstance(local6, int)
        peer_rules: list[_PeerRule] = []
        for r in c.rules:
            if r.verdict is Verdict.JUMP:
                continue  # the expansion puts the tier's rules under the local addresses
            positive = [m for m in r.matches if isinstance(m, AddrMatch) and not m.negate]
            family = positive[0].family if positive else None
            remote4: list[str] | None = None
            remote6 = 1
            if positive:
                m = positive[0]
                ranges = sets[m.set_name].elements if m.set_name is not None else m.ranges
                if family is Family.IP:
                    remote4 = [_text(n) for n in ranges if isinstance(n, IPv4Network)]
                else:
                    remote6 = len(ranges)
            if family in (None, Family.IP):
                services = _services(r, Family.IP)
                n_remote = 1 if remote4 is None else len(remote4)
                pairs_v4 += len(local4) * n_remote * len(services)
                if services and local4 and n_remote:
                    remote = None if remote4 is None else tuple(remote4)
                    peer_rules.append(_PeerRule(remote, services, _target(r)))
            if family in (None, Family.IP6):
                pairs_v6 += local6 * remote6 * len(_services(r, Family.IP6))
        if peer_rules and local4:
            chains.append(_PeerChain(c.name[-2:], tuple(local4), tuple(peer_rules)))
    return _PeerPlan(tuple(chains), pairs_v4, pairs_v6)


def _peer_lines(plan: _PeerPlan, limit: int) -> Iterator[str]:
    """The first ``limit`` rule lines of the expansion, in chain order."""
    n = 0
    for c in plan.chains:
        local_opt = "-d" if c.direction == "in" else "-s"
        remote_opt = "-s" if c.direction == "in" else "-d"
        for local in c.local:
            head = f"-A {PEER_CHAIN} {local_opt} {local}"
            for r in c.rules:
                remotes = r.remote if r.remote is not None else ("",)
                for remote in remotes:
                    peer = f" {remote_opt} {remote}" if remote else ""
                    for svc in r.services:
                        parts = [head + peer]
                        if svc:
                            parts.append(svc)
                        if r.target:
                            parts.append(r.target)
                        yield " ".join(parts)
                        n += 1
                        if n >= limit:
                            return


def _write_restore(path: Path, plan: _PeerPlan, n: int) -> int:
    """An iptables-restore input with the first ``n`` rules; the number written."""
    written = 0
    with open(path, "w") as f:
        f.write(f"*filter\n:{PEER_CHAIN} - [0:0]\n")
        batch: list[str] = []
        for line in _peer_lines(plan, n):
            batch.append(line)
            if len(batch) >= 65536:
                f.write("\n".join(batch) + "\n")
                written += len(batch)
                batch.clear()
        if batch:
            f.write("\n".join(batch) + "\n")
            written += len(batch)
        f.write("COMMIT\n")
    return written


def _restore(binary: str, path: Path | None, text: str | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [binary, "-w", "5"] if path is None else [binary, "-w", "5", str(path)],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{binary}: {proc.stderr.strip()[:2000]}")
    return elapsed


def _peer_load(binary: str, plan: _PeerPlan, directory: Path, budget: float) -> dict[str, Any]:
    """Load the expansion's first 1000, 2000, 4000, ... rules (each load replaces the filter
    table) while the next one is expected to fit the budget; the rate of the largest load."""
    total = plan.pairs_v4
    empty = "*filter\nCOMMIT\n"
    try:
        _restore(binary, None, empty)
    except (RuntimeError, OSError) as exc:
        return {"available": False, "reason": str(exc)}
    began = time.perf_counter()
    trials: list[dict[str, float]] = []
    n = min(1000, total)
    path = directory / "peer.rules"
    try:
        while n > 0:
            start = time.perf_counter()
            written = _write_restore(path, plan, n)
            write_s = time.perf_counter() - start
            load_s = _restore(binary, path)
            trials.append({"rules": written, "load_s": load_s, "rate_per_s": written / load_s})
            _restore(binary, None, empty)
            if written >= total:
                break
            spent = time.perf_counter() - began
            nxt = min(total, 2 * n)
            expected = (write_s + load_s) * nxt / written * 1.5  # and the flush after it
            if spent + expected > budget:
                break
            n = nxt
    finally:
        path.unlink(missing_ok=True)
        _restore(binary, None, empty)
    if not trials:
        return {"available": True, "rules_total": 0, "loaded": 0, "extrapolated": False}
    last = trials[-1]
    complete = last["rules"] >= total
    return {
        "available": True,
        "rules_total": total,
        "loaded": int(last["rules"]),
        "load_s": last["load_s"],
        "rate_per_s": last["rate_per_s"],
        "extrapolated": not complete,
        "total_s": last["load_s"] if complete else total / last["rate_per_s"],
        "trials": trials,
        "budget_s": budget,
        "spent_s": time.perf_counter() - began,
    }


def _naive_peer(
    rs: HostRuleset, directory: Path, budget: float, agent_full_ms: float
) -> dict[str, Any]:
    """Figure 3 (see the module docstring)."""
    start = time.perf_counter()
    plan = _peer_plan(rs)
    out: dict[str, Any] = {
        "pairs_v4": plan.pairs_v4,
        "pairs_v6": plan.pairs_v6,
        "plan_s": time.perf_counter() - start,
    }
    remaining = max(0.0, budget - out["plan_s"])
    # iptables-nft first, with two thirds of what is left; legacy with the rest.
    for key, binary, share in (
        ("iptables_restore", "iptables-restore", 2 / 3),
        ("iptables_legacy_restore", "iptables-legacy-restore", 1.0),
    ):
        began = time.perf_counter()
        result = _peer_load(binary, plan, directory, remaining * share)
        remaining = max(0.0, remaining - (time.perf_counter() - began))
        if result.get("available") and result.get("total_s") is not None and agent_full_ms:
            result["ratio_to_agent_full"] = _ms(result["total_s"]) / agent_full_ms
        out[key] = result
    return out


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "estate": {
            "seed": args.seed,
            "workloads": args.workloads,
            "policies": args.policies,
            "enforcers": args.enforcers,
        },
        "runs": args.runs,
    }
    nft = NftCli().binary
    # ---- setup (outside the namespace: pure)
    start = time.perf_counter()
    repo = generate_estate(args.seed, args.workloads, args.policies, args.enforcers)
    base, spread = _choose_ruleset(repo, args.target_elements, args.enforcer)
    del repo
    variant = _structural_variant(base)
    more = _with_more_elements(base, args.delta, args.seed)
    delta = diff_rulesets(base, more)
    if delta.structure_changed:  # pragma: no cover - by construction
        raise RuntimeError("the element delta changed the structure")
    back = diff_rulesets(more, base)
    add_script = render_set_delta(base, delta)
    remove_script = render_set_delta(more, back)
    base_script = render_nft(base)
    variant_script = render_nft(variant)
    out["setup_s"] = time.perf_counter() - start
    counts = _counts(base, base_script)
    out["ruleset"] = {
        "enforcer": base.enforcer,
        **asdict(counts),
        "elements_over_enforcers": spread,
        "delta_elements": sum(len(d.added) + len(d.removed) for d in delta.elements),
        "delta_sets": len(delta.elements),
        "delta_script_bytes": len(add_script.encode()),
    }
    gc.collect()
    gc.freeze()
    out["gc_freeze_after_setup"] = True

    with tempfile.TemporaryDirectory(prefix="septum-bench-agent-") as tmp, _netns() as ns:
        directory = Path(tmp)
        out["netns"] = ns
        out["state_dir"] = str(directory / "state")
        files = {}
        for name, text in (
            ("base.nft", base_script),
            ("variant.nft", variant_script),
            ("add.nft", add_script),
            ("remove.nft", remove_script),
        ):
            files[name] = directory / name
            files[name].write_text(text)
        steps = _Steps()
        backend = default_backend()
        out["agent_backend"] = type(backend).__name__

        def new_agent() -> Agent:
            made = Agent(
                AgentSettings(base.enforcer, directory / "state"),
                _NoSource(),
                _TimedBackend(backend, steps),
                clock=lambda: AT,
            )
            made.state = _TimedStore(directory / "state", steps)
            return made

        agent = new_agent()
        out["nft_floor"] = _nft_floor(nft, directory, args.runs)
        with _instrumented(steps):
            # warm-up: the first apply of each (file caches, the kernel's first table)
            _run_nft_file(nft, files["base.nft"])
            _agent_apply(agent, base, SyncOutcome.FULL, steps)
            variants = ((base, files["base.nft"]), (variant, files["variant.nft"]))
            out["full"] = _full_apply(agent, steps, nft, variants, args.runs)
            out["full_cold"] = _full_apply(agent, steps, nft, variants, args.runs, new_agent)
            if agent.ruleset is not base:
                _agent_apply(agent, base, SyncOutcome.FULL, steps)
            _run_nft_file(nft, files["add.nft"])  # warm-up
            _run_nft_file(nft, files["remove.nft"])
            out["delta"] = _element_delta(
                agent,
                steps,
                nft,
                (base, more),
                (delta.elements, back.elements),
                (files["add.nft"], files["remove.nft"]),
                args.runs,
            )
        out["libnftables"] = _libnftables(
            nft,
            ((base_script, files["base.nft"]), (variant_script, files["variant.nft"])),
            ((add_script, files["add.nft"]), (remove_script, files["remove.nft"])),
            args.runs,
        )
        subprocess.run([nft, "delete", "table", "inet", base.table], check=False)
        out["naive_peer"] = _naive_peer(
            base, directory, args.peer_budget, out["full"]["agent"]["median_ms"]
        )
    return out


# --------------------------------------------------------------------------- output


def _print(out: dict[str, Any]) -> None:
    est = out["estate"]
    ok = {True: "ok", False: "MISSED"}

    def line(label: str, value: str, target: str = "") -> None:
        print(f"{label:<40} {value:>14}   {target}".rstrip())

    def runs(s: dict[str, Any]) -> str:
        return "runs: " + " ".join(f"{x:.1f}" for x in s["samples_ms"])

    print(f"agent's nftables backend: {out.get('agent_backend', '?')}")
    print(
        f"septum agent benchmark: seed {est['seed']}, {est['workloads']} workloads, "
        f"{est['policies']} policies, {est['enforcers']} enforcers; median of "
        f"{out['runs']} runs, agent and plain interleaved (python {sys.version.split()[0]})"
    )
    print(f"network namespace: {out['netns']} (deleted at exit); state dir: {out['state_dir']}")
    print("gc.freeze() after setup: yes (the estate and the rulesets)")
    rs = out["ruleset"]
    sp = rs["elements_over_enforcers"]
    print(
        f"ruleset of {rs['enforcer']}: {rs['elements']} elements ({rs['set_elements']} in "
        f"{rs['sets']} sets, {rs['map_elements']} in {rs['maps']} maps), {rs['rules']} rules "
        f"in {rs['chains']} chains, {rs['local_workloads']} local workloads, script "
        f"{rs['script_bytes'] / 2**20:.1f} MB"
    )
    print(
        f"  elements over all {sp['enforcers']} enforcers: min {sp['min']}, median "
        f"{sp['median']}, max {sp['max']}; setup {out['setup_s']:.1f} s"
    )
    line("nft process floor (empty transaction)", f"{out['nft_floor']['median_ms']:.1f} ms")

    full = out["full"]
    ratio = full["ratio"]
    line(
        "full apply via the agent",
        f"{full['agent']['median_ms']:.1f} ms",
        runs(full["agent"]),
    )
    line(
        "full apply, plain nft -f FILE",
        f"{full['plain_nft']['median_ms']:.1f} ms",
        runs(full["plain_nft"]),
    )
    line(
        "agent / plain nft (full apply)",
        f"{ratio:.2f}x",
        f"target <= {TARGET_FULL_RATIO}x {ok[ratio <= TARGET_FULL_RATIO]}",
    )
    b = full["agent_breakdown"]
    line(
        "  breakdown (medians)",
        "",
        f"diff {b['diff_ms']:.1f} ms, render {b['render_ms']:.1f} ms, nft {b['nft_ms']:.1f} ms, "
        f"state save {b['save_ms']:.1f} ms, other {b['other_ms']:.1f} ms",
    )
    cold = out["full_cold"]
    line(
        "full apply via a restarted agent",
        f"{cold['agent']['median_ms']:.1f} ms",
        "every set rendered (nothing to reuse); " + runs(cold["agent"]),
    )
    line(
        "restarted agent / plain nft (full apply)",
        f"{cold['ratio']:.2f}x",
        f"target <= {TARGET_FULL_RATIO}x {ok[cold['ratio'] <= TARGET_FULL_RATIO]} "
        f"(plain nft in these runs: {cold['plain_nft']['median_ms']:.1f} ms)",
    )
    b = cold["agent_breakdown"]
    line(
        "  breakdown (medians)",
        "",
        f"diff {b['diff_ms']:.1f} ms, render {b['render_ms']:.1f} ms, nft {b['nft_ms']:.1f} ms, "
        f"state save {b['save_ms']:.1f} ms, other {b['other_ms']:.1f} ms",
    )

    d = out["delta"]
    print(
        f"element delta: {rs['delta_elements']} elements in {rs['delta_sets']} sets, added and "
        f"removed alternately (median of both)"
    )
    for how, label in (
        ("received", "element delta via the agent, as deltas"),
        ("diffed", "element delta via the agent, as ruleset"),
    ):
        ms = d[how]["median_ms"]
        # The target is for a delta the agent receives as such (from the incremental
        # compiler or a control plane); "as ruleset" also diffs the whole table first.
        verdict = (
            f"target <= {TARGET_DELTA_MS:.0f} ms {ok[ms <= TARGET_DELTA_MS]}"
            if how == "received"
            else "no target: diffs the whole table first"
        )
        line(
            label,
            f"{ms:.1f} ms",
            f"{verdict}  "
            f"(add {d[how]['add_median_ms']:.1f}, remove {d[how]['remove_median_ms']:.1f})",
        )
        b = d[how]["breakdown"]
        first = f"diff {b['diff_ms']:.1f} ms, " if how == "diffed" else ""
        last = f", ruleset update {b['update_ms']:.1f} ms" if how == "received" else ""
        line(
            "  breakdown (medians)",
            "",
            f"{first}render {b['render_ms']:.1f} ms, nft {b['nft_ms']:.1f} ms, journal "
            f"{b['save_ms']:.1f} ms{last}, other {b['other_ms']:.1f} ms",
        )
    line("element delta, plain nft -f FILE", f"{d['plain']['median_ms']:.1f} ms", runs(d["plain"]))

    peer = out["naive_peer"]
    print(
        f"naive peer: {peer['pairs_v4']} IPv4 rules (one per local address, remote address, "
        f"protocol, port range) + {peer['pairs_v6']} IPv6 (ip6tables: neither loaded nor in "
        f"the totals); expansion {peer['plan_s']:.1f} s"
    )
    for key, label in (
        ("iptables_restore", "naive peer: iptables-restore"),
        ("iptables_legacy_restore", "naive peer: iptables-legacy-restore"),
    ):
        p = peer[key]
        if not p.get("available"):
            line(label, "unavailable", p.get("reason", ""))
            continue
        if not p["rules_total"]:
            line(label, "no rules")
            continue
        how = (
            f"EXTRAPOLATED from {p['loaded']} rules in {p['load_s']:.2f} s"
            if p["extrapolated"]
            else f"all {p['loaded']} rules loaded"
        )
        ratio_text = (
            f"{p['ratio_to_agent_full']:.0f}x the agent's full apply; "
            if "ratio_to_agent_full" in p
            else ""
        )
        line(
            label,
            f"{p['total_s']:.1f} s",
            f"{ratio_text}{how}, {p['rate_per_s']:.0f} rules/s",
        )

    lib = out["libnftables"]
    if not lib["installed"]:
        line("libnftables in-process", "not installed", "(python3-nftables; figure skipped)")
    else:
        for key in ("full", "delta"):
            f = lib[key]
            line(
                f"libnftables in-process, {key}",
                f"{f['libnftables']['median_ms']:.1f} ms",
                f"nft CLI {f['cli']['median_ms']:.1f} ms; the process costs "
                f"{f['cli_minus_libnftables_ms']:.1f} ms",
            )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workloads", type=int, default=40_000)
    p.add_argument("--policies", type=int, default=300)
    p.add_argument("--enforcers", type=int, default=320)
    p.add_argument(
        "--target-elements",
        type=int,
        default=100_000,
        help="take the enforcer whose ruleset has about this many set and map elements",
    )
    p.add_argument("--enforcer", help="take this enforcer's ruleset instead")
    p.add_argument("--delta", type=int, default=1_000, help="elements in the element delta")
    p.add_argument("--runs", type=int, default=5, help="samples per figure (median)")
    p.add_argument(
        "--peer-budget",
        type=float,
        default=60.0,
        help="seconds for the naive iptables peer (both restores); beyond, extrapolate",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.runs < 1 or args.delta < 1:
        p.error("--runs and --delta must be at least 1")
    if os.geteuid() != 0:
        p.error("needs root (network namespaces, nftables)")
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        _print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
