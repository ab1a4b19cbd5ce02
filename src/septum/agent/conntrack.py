"""The conntrack port: list and delete connection-tracking entries, and follow their events.

The real implementation drives the ``conntrack`` command of conntrack-tools (Debian package
``conntrack``): it is the maintained client of the kernel's ctnetlink interface, its
``-o extended`` text is stable across versions, and deleting by 5-tuple is one command. The
cost is a process per call, which is fine for an agent that lists the table after a policy
change and deletes the few entries the change revoked.

Output format (conntrack-tools 1.4.7, kernel 6.x), as parsed by :func:`parse_conntrack_line`::

    ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=40488
        dport=8080 packets=4 bytes=5216 src=198.18.0.2 dst=198.18.0.1 sport=8080 dport=40488
        packets=3 bytes=3164 [ASSURED] mark=0 use=1
    [1795600628.827666]	[DESTROY] ipv4     2 tcp      6 TIME_WAIT src=... [USERSPACE] portid=38

The first ``src``/``dst``/``sport``/``dport``/``packets``/``bytes`` are the original
direction, the second the reply direction. ``packets``/``bytes`` appear only when
accounting (``nf_conntrack_acct``) was on when the entry was created. Event lines start with
``[seconds.micro]`` (``-o timestamp``) and ``[NEW]``/``[DESTROY]``; a DESTROY of an expired
entry has no timeout field, and ``delta-time=`` appears when ``nf_conntrack_timestamp`` is
on. ICMP entries carry ``type``/``code``/``id`` instead of ports (ports are then 0).

Everything here acts on the network namespace of the calling thread (the subprocesses and
``/proc/sys/net`` follow it), or of ``command``'s prefix such as ``ip netns exec NS``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from types import TracebackType
from typing import Protocol

from septum.agent.nflog import protocol_name
from septum.errors import SeptumError

__all__ = [
    "ACCOUNTING_SYSCTL",
    "ConntrackCli",
    "ConntrackEntry",
    "ConntrackError",
    "ConntrackEvent",
    "ConntrackEventKind",
    "ConntrackEvents",
    "ConntrackParseError",
    "ConntrackTable",
    "conntrack_command",
    "enable_accounting",
    "parse_conntrack_event",
    "parse_conntrack_line",
]

log = logging.getLogger(__name__)

#: Per network namespace: each namespace has its own value (0 unless set there).
ACCOUNTING_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")

_PORTED = frozenset({"tcp", "udp", "sctp", "dccp", "udplite"})
_L3 = {"ipv4": 4, "ipv6": 6}
_EVENT = re.compile(r"^\s*(?:\[(?P<ts>\d+)\.(?P<us>\d+)\])?\s*\[(?P<kind>NEW|DESTROY)\]\s+")
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


class ConntrackError(SeptumError):
    """The conntrack command is missing or failed."""


class ConntrackParseError(ConntrackError):
    """A line of conntrack output did not have the expected shape."""


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One connection-tracking entry, seen in its original direction.

    ``packets``/``bytes`` count the original direction and ``reply_packets``/
    ``reply_bytes`` the reply direction (IP lengths, headers included); all are 0 when
    accounting was off when the entry was created. ``state`` is the protocol state for TCP
    (and SCTP, DCCP), None otherwise. Ports are 0 for protocols without ports."""

    family: int  # 4 or 6
    protocol: str  # as nflog.protocol_name: "tcp", "udp", "icmp", "icmpv6", "sctp" or a number
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    source_port: int
    destination_port: int
    state: str | None = None
    packets: int = 0
    bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0

    @property
    def key(
        self,
    ) -> tuple[int, str, IPv4Address | IPv6Address, IPv4Address | IPv6Address, int, int]:
        """What identifies the connection (its original tuple), without state or counters."""
        return (
            self.family,
            self.protocol,
            self.source,
            self.destination,
            self.source_port,
            self.destination_port,
        )


class ConntrackEventKind(Enum):
    NEW = "new"
    DESTROY = "destroy"


@dataclass(frozen=True, slots=True)
class ConntrackEvent:
    """A connection was confirmed (NEW: its first packet passed every hook) or removed
    (DESTROY: expired, closed or deleted; counters are final). ``at`` is when the
    conntrack tool received the event, in UTC."""

    kind: ConntrackEventKind
    at: datetime
    entry: ConntrackEntry


class ConntrackTable(Protocol):
    """The port: what the agent needs of the kernel's connection table."""

    def entries(self) -> list[ConntrackEntry]:
        """Every entry (IPv4 and IPv6) of the namespace."""
        ...

    def delete(self, entries: Iterable[ConntrackEntry]) -> int:
        """Delete these connections (matched by :attr:`ConntrackEntry.key`); the number
        deleted. An entry already gone is not an error (it is not counted)."""
        ...


# ---------------------------------------------------------------------------- parsing


def parse_conntrack_line(line: str) -> ConntrackEntry:
    """Parse one line of ``conntrack -L -o extended`` or ``-E`` output (the event prefix, if
    any, is skipped; the plain format without the ``ipv4 2`` columns is accepted too).
    Pure; raises :class:`ConntrackParseError` on anything else."""
    m = _EVENT.match(line)
    text = line[m.end() :] if m else line
    tokens = text.split()
    try:
        return _parse_tokens(tokens)
    except (ValueError, IndexError, KeyError) as e:
        raise ConntrackParseError(f"unexpected conntrack output {line.strip()!r}: {e}") from e


def parse_conntrack_event(line: str) -> ConntrackEvent:
    """Parse one line of ``conntrack -E -o timestamp,extended`` output. Pure. Raises
    :class:`ConntrackParseError` for any other line (such as the tool's messages)."""
    m = _EVENT.match(line)
    if m is None or m.group("ts") is None:
        raise ConntrackParseError(f"not a timestamped conntrack event: {line.strip()!r}")
    seconds, micro = int(m.group("ts")), int(m.group("us").ljust(6, "0")[:6])
    at = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)
    kind = ConntrackEventKind.NEW if m.group("kind") == "NEW" else ConntrackEventKind.DESTROY
    return ConntrackEvent(kind, at, parse_conntrack_line(line))


def _parse_tokens(tokens: list[str]) -> ConntrackEntry:
    i = 0
    family: int | None = None
    if tokens[0] in _L3:
        family = _L3[tokens[0]]
        i = 2  # "ipv4 2"
    number = int(tokens[i + 1])  # "tcp 6": the name, then the number
    i += 2
    if tokens[i].isdigit():  # timeout (absent in DESTROY events)
        i += 1
    state = None
    if "=" not in tokens[i] and not tokens[i].startswith("["):
        state = tokens[i]
        i += 1
    fields: list[dict[str, str]] = [{}, {}]
    direction = -1
    for token in tokens[i:]:
        key, sep, value = token.partition("=")
        if not sep:
            continue  # [ASSURED], [UNREPLIED], [USERSPACE] ...
        if key == "src":
            direction += 1
        if 0 <= direction <= 1:
            fields[direction].setdefault(key, value)
    orig, reply = fields
    source, destination = ip_address(orig["src"]), ip_address(orig["dst"])
    if family is None:
        family = source.version
    protocol = protocol_name(number)
    ported = protocol in _PORTED
    return ConntrackEntry(
        family=family,
        protocol=protocol,
        source=source,
        destination=destination,
        source_port=int(orig["sport"]) if ported and "sport" in orig else 0,
        destination_port=int(orig["dport"]) if ported and "dport" in orig else 0,
        state=state,
        packets=int(orig.get("packets", 0)),
        bytes=int(orig.get("bytes", 0)),
        reply_packets=int(reply.get("packets", 0)),
        reply_bytes=int(reply.get("bytes", 0)),
    )


# ------------------------------------------------------------------------- real tool


def conntrack_command() -> str:
    """Path of the conntrack binary (also looked for in /usr/sbin and /sbin, which a
    non-login PATH may lack); :class:`ConntrackError` when it is not installed."""
    found = shutil.which("conntrack")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/conntrack", "/sbin/conntrack"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise ConntrackError("the conntrack command is not installed (Debian package conntrack)")


def enable_accounting(path: Path = ACCOUNTING_SYSCTL) -> bool:
    """Turn on per-connection byte and packet counters in this network namespace. Only
    entries created afterwards are counted. Returns False when the kernel has no such
    setting (no conntrack support), True when accounting is on."""
    try:
        if path.read_text().strip() != "1":
            path.write_text("1\n")
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ConntrackError(f"cannot enable conntrack accounting ({path}): {e}") from e
    return True


class ConntrackCli:
    """:class:`ConntrackTable` over the conntrack command.

    ``command`` is the argument prefix, ``(conntrack_command(),)`` by default; a test or a
    caller acting on another namespace may pass ``("ip", "netns", "exec", NS, "conntrack")``.
    Costs: :meth:`entries` runs two processes (IPv4, IPv6) and parses O(table size) text;
    :meth:`delete` runs one process per entry (conntrack deletes by one tuple at a time)."""

    def __init__(self, command: Sequence[str] | None = None, *, timeout: float = 30.0) -> None:
        self.command: tuple[str, ...] = (
            tuple(command) if command is not None else (conntrack_command(),)
        )
        self.timeout = timeout

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.command, *args],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConntrackError(f"conntrack {' '.join(args)}: {e}") from e

    def entries(self) -> list[ConntrackEntry]:
        out: list[ConntrackEntry] = []
        for family in ("ipv4", "ipv6"):
            proc = self._run("-L", "-f", family, "-o", "extended")
            if proc.returncode != 0:
                raise ConntrackError(
                    f"conntrack -L -f {family} failed ({proc.returncode}): {proc.stderr.strip()}"
                )
            out.extend(parse_conntrack_line(ln) for ln in proc.stdout.splitlines() if ln.strip())
        return out

    def delete(self, entries: Iterable[ConntrackEntry]) -> int:
        deleted = 0
        for entry in dict.fromkeys(e.key for e in entries):
            deleted += self._delete_one(*entry)
        return deleted

    def _delete_one(
        self,
        family: int,
        protocol: str,
        source: IPv4Address | IPv6Address,
        destination: IPv4Address | IPv6Address,
        source_port: int,
        destination_port: int,
    ) -> int:
        args = ["-D", "-f", f"ipv{family}", "-p", protocol, "-s", str(source)]
        args += ["-d", str(destination)]
        if protocol in _PORTED:
            args += ["--sport", str(source_port), "--dport", str(destination_port)]
        proc = self._run(*args)
        m = _DELETED.search(proc.stderr)
        if m is not None:  # exit status 1 with "0 flow entries": already gone, not an error
            return int(m.group(1))
        raise ConntrackError(
            f"conntrack {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )


class ConntrackEvents:
    """Follow NEW and DESTROY events with ``conntrack -E``; iterate to get them.

    Entering starts the process and waits (up to ``ready_timeout`` seconds) until its
    netlink socket has subscribed to the event groups, so that nothing after ``__enter__``
    returns is missed. Iteration blocks on the process's output and ends when
    :meth:`close` (from any thread) stops it. Lines that are not events (the tool's
    warnings, such as ENOBUFS when the kernel dropped events) are logged and counted in
    :attr:`unparsed` and :attr:`overruns`."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        buffer_size: int = 4 * 1024 * 1024,
        ready_timeout: float = 5.0,
    ) -> None:
        self.command: tuple[str, ...] = (
            tuple(command) if command is not None else (conntrack_command(),)
        )
        self.buffer_size = buffer_size
        self.ready_timeout = ready_timeout
        self.unparsed = 0
        self.overruns = 0
        self._proc: subprocess.Popen[str] | None = None
        self._iterating = False

    def __enter__(self) -> ConntrackEvents:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Start ``conntrack -E`` and wait until it listens. Cost: a process start and
        polling two small /proc files (typically a few milliseconds)."""
        if self._proc is not None:
            return
        args = [*self.command, "-E", "-e", "NEW,DESTROY", "-o", "timestamp,extended"]
        args += ["-b", str(self.buffer_size)]
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
        except OSError as e:
            raise ConntrackError(f"cannot start {' '.join(args)}: {e}") from e
        try:
            self._wait_subscribed(self._proc)
        except BaseException:
            self.close()
            raise

    def _wait_subscribed(self, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout else ""
                raise ConntrackError(f"conntrack -E exited ({proc.returncode}): {output.strip()}")
            if _subscribed(proc.pid):
                return
            time.sleep(0.01)
        raise ConntrackError(f"conntrack -E did not subscribe within {self.ready_timeout}s")

    def __iter__(self) -> Iterator[ConntrackEvent]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise ConntrackError("ConntrackEvents is not open")
        self._iterating = True
        try:
            yield from self._events(proc.stdout)
        finally:
            self._iterating = False
            if self._proc is not proc:  # closed meanwhile: the pipe is ours to close
                proc.stdout.close()

    def _events(self, lines: Iterable[str]) -> Iterator[ConntrackEvent]:
        for line in lines:
            if not line.strip():
                continue
            try:
                yield parse_conntrack_event(line)
            except ConntrackParseError:
                if "ENOBUFS" in line:
                    self.overruns += 1
                elif line.startswith("NOTICE") or "flow events have been shown" in line:
                    log.info("conntrack -E: %s", line.strip())  # buffer size; exit summary
                    continue
                else:
                    self.unparsed += 1
                log.warning("conntrack -E: %s", line.strip())

    def close(self) -> None:
        """Stop the process (idempotent); an iteration in progress ends."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # An iteration in progress sees EOF, ends and closes the pipe itself: closing it
        # under a blocked readline in another thread is not safe.
        if not self._iterating and proc.stdout is not None:
            proc.stdout.close()


def _subscribed(pid: int) -> bool:
    """Whether process ``pid`` holds a netfilter netlink socket (protocol 12) with event
    groups joined, per /proc/<pid>/net/netlink (which shows the process's namespace)."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/netlink") as f:
            next(f)
            for row in f:
                cols = row.split()
                subscribed = len(cols) >= 10 and int(cols[3], 16) != 0
                if subscribed and cols[1] == "12" and cols[9] in inodes:
                    return True
    except (OSError, StopIteration, ValueError):
        return False
    return False
