"""Flow capture: what crossed (or was refused at) this enforcer, as JSON lines per interval.

::

    NflogReader (groups deny / would-deny / log) ──┐  packets, at read time
                                                   ├─► FlowAggregator ──drain()──► FlowRecord
    ConntrackEvents (NEW, DESTROY) ────────────────┘  events, at their timestamp     │
                               explain_accepted(FlowKey) ─► provenance of "allowed" ─┘
                                                                  └─► sink: one JSON object a line

:class:`FlowAggregator` is pure (no I/O, no clock): observations come in with their times, and
``drain`` turns one interval's worth into records. :class:`FlowRecorder` runs the readers in
threads and flushes the aggregator to the sink every ``interval`` seconds.

One record per (source, destination, protocol, destination port, verdict, provenance) and
interval:

- ``allowed`` comes from conntrack: a NEW event is one connection (it is emitted once the
  first packet passed every hook, so dropped packets never show up here); a DESTROY event
  adds the connection's final packet and byte counters, both directions summed. A
  long-lived connection therefore contributes its bytes when its entry goes, which for a
  closed TCP connection is after TIME_WAIT (120 s by default) plus up to the kernel's
  conntrack GC period (seconds); counters are 0 when accounting (``nf_conntrack_acct``,
  per network namespace) was off when the connection started. Provenance is what the
  agent's ``explain_accepted`` callback says (called once per flow key and flush, at flush
  time; nothing is cached across intervals). Loopback connections are left out: the
  ruleset accepts them without evaluation.
- ``denied``, ``would-deny`` and ``logged`` come from NFLOG, by group. ``connections`` is the
  number of distinct source ports seen (1 for protocols without ports), ``packets`` the
  logged packets and ``bytes`` their IP lengths. Provenance is parsed from the log prefix the
  compiler writes: ``"septum deny <tier>/<policy>/<direction>/<rule> "`` (also
  ``would-deny`` and ``log``; default denies end in ``default`` instead of a rule index).
  A would-be denied flow is accepted, so it also appears as ``allowed``. Sides in
  ``visibility`` mode install no rules, so nothing logs their would-be denies: the agent's
  ``unlogged_would_deny`` callback evaluates each accepted flow and, where such a side
  denies it, a ``would-deny`` record with the connection's counts is added.

``start`` and ``end`` are the first and last observation of the record's flow in the
interval (ISO 8601, UTC); ``port`` is 0 for protocols without ports.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Protocol

from septum.agent.conntrack import ConntrackEvent, ConntrackEventKind, ConntrackEvents
from septum.agent.nflog import LoggedPacket, NflogReader
from septum.errors import SeptumError

__all__ = [
    "CaptureError",
    "EventSource",
    "FlowAggregator",
    "FlowKey",
    "FlowRecord",
    "FlowRecorder",
    "FlowVerdict",
    "PacketSource",
    "RecorderStats",
    "parse_log_prefix",
]

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address


class CaptureError(SeptumError):
    """Flow capture is misconfigured (for example two verdicts sharing an nflog group)."""


class FlowVerdict(Enum):
    """What happened to a recorded flow, and so where the observation came from."""

    ALLOWED = "allowed"  # conntrack NEW/DESTROY: the connection was accepted
    DENIED = "denied"  # nflog deny group: dropped by an enforced deny
    WOULD_DENY = "would-deny"  # nflog would-deny group: denied by policy, accepted by mode
    LOGGED = "logged"  # nflog log group: matched a ``log`` rule


_PREFIX_WORDS = {
    "deny": FlowVerdict.DENIED,
    "would-deny": FlowVerdict.WOULD_DENY,
    "log": FlowVerdict.LOGGED,
}


def parse_log_prefix(prefix: str) -> tuple[FlowVerdict, str] | None:
    """``"septum deny t/p/ingress/0 "`` → ``(DENIED, "t/p/ingress/0")``; None for a prefix
    that Septum's compiler did not write. Pure. Tolerates the truncation nft applies to
    long prefixes (the trailing space, or more, may be missing)."""
    parts = prefix.split()
    if len(parts) < 3 or parts[0] != "septum" or parts[1] not in _PREFIX_WORDS:
        return None
    return _PREFIX_WORDS[parts[1]], parts[2]


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A flow as policy sees it: ``port`` is the destination port (0 without ports)."""

    source: IPAddress
    destination: IPAddress
    protocol: str
    port: int

    def _sort_key(self) -> tuple[int, int, int, int, str, int]:
        s, d = self.source, self.destination
        return (s.version, int(s), d.version, int(d), self.protocol, self.port)


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One line of the flow log. ``provenance`` lists ``tier/policy/direction/rule``."""

    start: datetime
    end: datetime
    enforcer: str
    source: IPAddress
    destination: IPAddress
    protocol: str
    port: int
    verdict: FlowVerdict
    provenance: tuple[str, ...]
    connections: int
    packets: int
    bytes: int

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.source, self.destination, self.protocol, self.port)

    def to_json(self) -> dict[str, object]:
        """The JSON object written to the sink (keys in this order)."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "enforcer": self.enforcer,
            "source": str(self.source),
            "destination": str(self.destination),
            "protocol": self.protocol,
            "port": self.port,
            "verdict": self.verdict.value,
            "provenance": list(self.provenance),
            "connections": self.connections,
            "packets": self.packets,
            "bytes": self.bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FlowRecord:
        """The inverse of :meth:`to_json`, for readers of the flow log. Raises
        :class:`CaptureError` when a field is missing or has the wrong type."""
        try:
            provenance = data["provenance"]
            assert isinstance(provenance, list)
            return cls(
                start=_utc(datetime.fromisoformat(str(data["start"]))),
                end=_utc(datetime.fromisoformat(str(data["end"]))),
                enforcer=str(data["enforcer"]),
                source=ip_address(str(data["source"])),
                destination=ip_address(str(data["destination"])),
                protocol=str(data["protocol"]),
                port=_int(data["port"]),
                verdict=FlowVerdict(data["verdict"]),
                provenance=tuple(str(p) for p in provenance),
                connections=_int(data["connections"]),
                packets=_int(data["packets"]),
                bytes=_int(data["bytes"]),
            )
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            raise CaptureError(f"not a flow record: {data!r} ({e})") from e


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@dataclass(slots=True)
class _Tally:
    start: datetime
    end: datetime
    connections: int = 0
    packets: int = 0
    bytes: int = 0
    source_ports: set[int] = field(default_factory=set)

    def seen(self, at: datetime) -> None:
        if at < self.start:
            self.start = at
        if at > self.end:
            self.end = at


class FlowAggregator:
    """Aggregates observations into per-interval flow records. Pure: no I/O, no clock.

    Not thread-safe (the recorder serializes access). Memory is O(distinct flows in the
    interval) plus, for nflog flows, their distinct source ports; :meth:`drain` empties it.
    """

    def __init__(
        self, *, deny_group: int = 1, would_deny_group: int = 2, log_group: int = 3
    ) -> None:
        groups = {
            deny_group: FlowVerdict.DENIED,
            would_deny_group: FlowVerdict.WOULD_DENY,
            log_group: FlowVerdict.LOGGED,
        }
        if len(groups) != 3:
            raise CaptureError(
                f"nflog groups must differ: deny {deny_group}, would-deny {would_deny_group}, "
                f"log {log_group}"
            )
        self.groups: Mapping[int, FlowVerdict] = groups
        #: Observations left out (other nflog groups, loopback connections) since creation.
        self.ignored = 0
        self._logged: dict[tuple[FlowKey, FlowVerdict, tuple[str, ...]], _Tally] = {}
        self._allowed: dict[FlowKey, _Tally] = {}

    def __len__(self) -> int:
        """Flows pending (records the next drain will produce)."""
        return len(self._logged) + len(self._allowed)

    def add_packet(self, packet: LoggedPacket, at: datetime) -> bool:
        """Count one nflog packet seen at ``at``; False when its group is not ours."""
        verdict = self.groups.get(packet.group)
        if verdict is None:
            self.ignored += 1
            return False
        parsed = parse_log_prefix(packet.prefix)
        provenance = (parsed[1],) if parsed is not None else ()
        key = FlowKey(packet.source, packet.destination, packet.protocol, packet.destination_port)
        tally = self._logged.get((key, verdict, provenance))
        if tally is None:
            tally = self._logged[(key, verdict, provenance)] = _Tally(at, at)
        tally.seen(at)
        tally.packets += 1
        tally.bytes += packet.length
        tally.source_ports.add(packet.source_port)
        tally.connections = len(tally.source_ports)
        return True

    def add_event(self, event: ConntrackEvent) -> bool:
        """Count one conntrack event; False when it is left out (loopback)."""
        e = event.entry
        if e.source.is_loopback or e.destination.is_loopback:
            self.ignored += 1
            return False
        key = FlowKey(e.source, e.destination, e.protocol, e.destination_port)
        tally = self._allowed.get(key)
        if tally is None:
            tally = self._allowed[key] = _Tally(event.at, event.at)
        tally.seen(event.at)
        if event.kind is ConntrackEventKind.NEW:
            tally.connections += 1
        else:
            tally.packets += e.packets + e.reply_packets
            tally.bytes += e.bytes + e.reply_bytes
        return True

    def drain(
        self,
        *,
        enforcer: str,
        explain_accepted: Callable[[FlowKey], tuple[str, ...]],
        unlogged_would_deny: Callable[[FlowKey], tuple[str, ...]] | None = None,
    ) -> list[FlowRecord]:
        """The records of everything added since the last drain, sorted by start time then
        flow; empties the aggregator. Calls ``explain_accepted`` once per allowed flow key;
        when it raises, the record's provenance is empty and the error is logged.

        ``unlogged_would_deny`` names the denies no kernel rule logs (sides in visibility
        mode install no rules): when it returns provenance for an allowed flow, a
        ``would-deny`` record with the same counts is added."""
        logged, self._logged = self._logged, {}
        allowed, self._allowed = self._allowed, {}
        out: list[FlowRecord] = []
        for (key, verdict, provenance), t in logged.items():
            out.append(_record(enforcer, key, verdict, provenance, t))
        for key, t in allowed.items():
            try:
                provenance = tuple(explain_accepted(key))
            except Exception:
                log.exception("explaining accepted flow %s failed", key)
                provenance = ()
            out.append(_record(enforcer, key, FlowVerdict.ALLOWED, provenance, t))
            if unlogged_would_deny is not None:
                try:
                    would = tuple(unlogged_would_deny(key))
                except Exception:
                    log.exception("evaluating accepted flow %s failed", key)
                    would = ()
                if would:
                    out.append(_record(enforcer, key, FlowVerdict.WOULD_DENY, would, t))
        out.sort(key=lambda r: (r.start, r.key._sort_key(), r.verdict.value, r.provenance))
        return out


def _record(
    enforcer: str,
    key: FlowKey,
    verdict: FlowVerdict,
    provenance: tuple[str, ...],
    t: _Tally,
) -> FlowRecord:
    return FlowRecord(
        start=t.start,
        end=t.end,
        enforcer=enforcer,
        source=key.source,
        destination=key.destination,
        protocol=key.protocol,
        port=key.port,
        verdict=verdict,
        provenance=provenance,
        connections=t.connections,
        packets=t.packets,
        bytes=t.bytes,
    )


# ----------------------------------------------------------------------------- recorder


class PacketSource(Protocol):
    """What the recorder needs of an nflog reader (:class:`~septum.agent.nflog.NflogReader`)."""

    def read(self, timeout: float | None = None) -> list[LoggedPacket]: ...

    def close(self) -> None: ...


class EventSource(Protocol):
    """What the recorder needs of a conntrack event stream, opened already
    (:class:`~septum.agent.conntrack.ConntrackEvents`). ``close`` from another thread
    ends an iteration in progress."""

    def __iter__(self) -> Iterator[ConntrackEvent]: ...

    def close(self) -> None: ...


def _open_conntrack_events() -> EventSource:
    events = ConntrackEvents()
    events.open()
    return events


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters since ``start``, for the agent's status. ``failures`` are errors that
    stopped a reader thread (its observations are missing from then on)."""

    packets: int
    events: int
    ignored: int
    records: int
    flushes: int
    write_errors: int
    dropped_records: int
    nflog_overruns: int
    conntrack_overruns: int
    failures: tuple[str, ...]


class FlowRecorder:
    """Runs the flow readers in threads and appends one interval's records to ``sink``.

    Design goals: the agent's enforcement never waits for capture (readers and the flusher
    are daemon threads of their own); a failing reader or callback degrades capture, it does
    not stop it; each flush is durable (written, flushed and fsynced before the next
    interval) and the sink is reopened per flush, so log rotation by renaming just works.
    A write that fails keeps its lines for the next flush, up to ``max_backlog`` lines.

    The sources are opened in :meth:`start`, in the calling thread, so they belong to that
    thread's network namespace; ``packet_source``, ``event_source`` and ``clock`` are ports
    for tests (defaults: :class:`NflogReader`, ``conntrack -E``, the system clock in UTC).
    Preconditions: root (``CAP_NET_ADMIN``); the nflog groups are free.
    """

    def __init__(
        self,
        *,
        enforcer: str,
        sink: Path,
        interval: float,
        deny_group: int = 1,
        would_deny_group: int = 2,
        log_group: int = 3,
        explain_accepted: Callable[[FlowKey], tuple[str, ...]],
        unlogged_would_deny: Callable[[FlowKey], tuple[str, ...]] | None = None,
        conntrack_events: bool = True,
        packet_source: Callable[[Sequence[int]], PacketSource] = NflogReader,
        event_source: Callable[[], EventSource] = _open_conntrack_events,
        clock: Callable[[], datetime] = _utcnow,
        max_backlog: int = 100_000,
    ) -> None:
        if interval <= 0:
            raise CaptureError(f"flow interval must be positive, not {interval}")
        self.enforcer = enforcer
        self.sink = sink
        self.interval = interval
        self.explain_accepted = explain_accepted
        self.unlogged_would_deny = unlogged_would_deny
        self.conntrack_events = conntrack_events
        self.max_backlog = max_backlog
        self._aggregator = FlowAggregator(
            deny_group=deny_group, would_deny_group=would_deny_group, log_group=log_group
        )
        self._groups = (deny_group, would_deny_group, log_group)
        self._open_packets = packet_source
        self._open_events = event_source
        self._clock = clock
        self._lock = threading.Lock()  # the aggregator and counters
        self._flush_lock = threading.Lock()  # one flush at a time, lines in order
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._packets: PacketSource | None = None
        self._events: EventSource | None = None
        self._backlog: list[str] = []
        self._counts = {"packets": 0, "events": 0, "records": 0, "flushes": 0}
        self._write_errors = 0
        self._dropped = 0
        self._failures: list[str] = []
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Check the sink, open the sources and start the threads. Raises what opening
        raises (:class:`~septum.agent.nflog.NflogError`,
        :class:`~septum.agent.conntrack.ConntrackError`, ``OSError`` for the sink)."""
        if self._started:
            raise CaptureError("the flow recorder is started already")
        self.sink.parent.mkdir(parents=True, exist_ok=True)
        with self.sink.open("a", encoding="utf-8"):
            pass
        self._packets = self._open_packets(self._groups)
        try:
            if self.conntrack_events:
                self._events = self._open_events()
        except BaseException:
            self._packets.close()
            raise
        self._started = True
        self._spawn("septum-flows-nflog", self._read_packets, self._packets)
        if self._events is not None:
            self._spawn("septum-flows-conntrack", self._read_events, self._events)
        self._spawn("septum-flows-flush", self._flush_loop, None)

    def _spawn(self, name: str, target: Callable[..., None], arg: object) -> None:
        args = (arg,) if arg is not None else ()
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop the threads, flush what is pending and close the sources. Idempotent.
        Cost: up to a reader's poll period (0.25 s) plus one flush."""
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        if self._events is not None:
            self._events.close()  # ends the conntrack reader's iteration
        for t in self._threads:
            t.join(timeout=10)
        try:
            self.flush()
        finally:
            if self._packets is not None:
                self._packets.close()

    def __enter__(self) -> FlowRecorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ threads

    def _read_packets(self, source: PacketSource) -> None:
        try:
            while not self._stopping.is_set():
                packets = source.read(0.25)
                if not packets:
                    continue
                at = self._clock()
                with self._lock:
                    for p in packets:
                        self._aggregator.add_packet(p, at)
                    self._counts["packets"] += len(packets)
        except Exception as e:
            self._failed("nflog reader", e)

    def _read_events(self, source: EventSource) -> None:
        try:
            for event in source:
                with self._lock:
                    self._aggregator.add_event(event)
                    self._counts["events"] += 1
        except Exception as e:
            if not self._stopping.is_set():
                self._failed("conntrack event reader", e)
            return
        if not self._stopping.is_set():
            self._failed("conntrack event reader", RuntimeError("the event stream ended"))

    def _flush_loop(self, _: None = None) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.flush()
            except Exception as e:  # flush() handles write errors; this is a bug
                self._failed("flusher", e)
                return

    def _failed(self, what: str, e: Exception) -> None:
        log.exception("flow capture: %s failed", what)
        with self._lock:
            self._failures.append(f"{what}: {e}")

    # ------------------------------------------------------------------ flushing

    def flush(self) -> int:
        """Drain the aggregator and append its records to the sink (written, flushed,
        fsynced). Returns the number of records written. Cost: one ``explain_accepted``
        call per allowed flow of the interval, one open/write/fsync of the sink."""
        with self._flush_lock:
            with self._lock:
                pending = self._take_pending()
            records = pending.drain(
                enforcer=self.enforcer,
                explain_accepted=self.explain_accepted,
                unlogged_would_deny=self.unlogged_would_deny,
            )
            lines = self._backlog + [
                json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in records
            ]
            if not lines:
                return 0
            try:
                with self.sink.open("a", encoding="utf-8") as f:
                    f.write("".join(lines))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                log.exception("flow capture: cannot write %s", self.sink)
                keep = lines[-self.max_backlog :]
                with self._lock:
                    self._write_errors += 1
                    self._dropped += len(lines) - len(keep)
                self._backlog = keep
                return 0
            self._backlog = []
            with self._lock:
                self._counts["records"] += len(lines)
                self._counts["flushes"] += 1
            return len(lines)

    def _take_pending(self) -> FlowAggregator:
        """Swap in an empty aggregator (under the lock) so that explaining and writing the
        old one's records happen outside it: readers never wait for the policy engine."""
        old = self._aggregator
        fresh = FlowAggregator(
            deny_group=self._groups[0], would_deny_group=self._groups[1], log_group=self._groups[2]
        )
        fresh.ignored = old.ignored
        self._aggregator = fresh
        return old

    # ------------------------------------------------------------------ status

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(
                packets=self._counts["packets"],
                events=self._counts["events"],
                ignored=self._aggregator.ignored,
                records=self._counts["records"],
                flushes=self._counts["flushes"],
                write_errors=self._write_errors,
                dropped_records=self._dropped,
                nflog_overruns=int(getattr(self._packets, "overruns", 0)),
                conntrack_overruns=int(getattr(self._events, "overruns", 0)),
                failures=tuple(self._failures),
            )
