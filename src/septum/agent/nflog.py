"""Read packets that nftables ``log group N`` rules send to NFLOG, over a raw netlink socket.

Why raw netlink: there is no well-kept Python binding for NFLOG. Wrapping libnetfilter_log
with ctypes would add a C library to every host and C callbacks into Python; running ulogd
would add a daemon and a file format between us and the kernel. The protocol itself is small
and stable (``linux/netfilter/nfnetlink_log.h``): one ``NFULNL_MSG_CONFIG`` request per group
to bind it and set the copy mode, then ``NFULNL_MSG_PACKET`` messages carrying a few
attributes. So this module speaks it directly with the standard library (``socket`` and
``struct``), and parses only what Septum needs: the log prefix, the group and the IPv4/IPv6
and TCP/UDP/SCTP headers at the start of the packet.

Kernel behaviour this relies on (documented in the UAPI header and the kernel's
``nfnetlink_log.c``):

- A group is bound by one netlink socket at a time, per network namespace. Binding a group
  that another socket (for example ulogd's) holds fails with ``EPERM``, the same error as
  lacking ``CAP_NET_ADMIN`` (``EBUSY`` only in a race). The binding ends when the socket
  closes; there is nothing to clean up after a crash.
- The kernel batches logged packets: it sends a batch when ``queue_threshold`` packets are
  queued, when the batch buffer (about one page) is full, or ``flush_timeout`` after the
  first queued packet. The timeout bounds the delay of a lone packet; the batching keeps a
  flood of denied packets from costing one system call each.
- Only the first ``copy_range`` bytes of each packet are copied (128 by default: enough for
  an IPv6 header, a few extension headers and the ports). The IP length is read from the
  header, so it is the packet's real length, not the copied length.
- When the socket's receive buffer overflows the kernel drops messages and the next
  ``recv`` fails with ``ENOBUFS``. That is counted in :attr:`NflogReader.overruns` (the
  readings are then incomplete) and reading goes on.

Needs ``CAP_NET_ADMIN`` in the socket's network namespace. The namespace is the one of the
thread that creates the reader.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType
from typing import NamedTuple

from septum.errors import SeptumError

__all__ = [
    "LoggedPacket",
    "NflogError",
    "NflogReader",
    "ParsedIp",
    "parse_ip_packet",
    "protocol_name",
]

# ------------------------------------------------------------------------ kernel constants
NETLINK_NETFILTER = 12
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFNETLINK_V0 = 0

NFULA_PACKET_HDR = 1
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 0x02

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, portid (host order)
_NFGENMSG = struct.Struct("=BB2s")  # family, version, res_id (big endian, kept raw)
_NLATTR = struct.Struct("=HH")  # length, type (host order)

#: IANA protocol numbers Septum names; anything else is reported as its number.
_PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
#: Transport protocols whose header starts with 16-bit source and destination ports.
_PORTED = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite
#: IPv6 extension headers skipped on the way to the transport header.
_IPV6_EXTENSIONS = frozenset({0, 43, 60, 135, 139, 140})  # hop, routing, dest, mobility, hip, shim6
_IPV6_FRAGMENT = 44
_IPV6_AH = 51


def protocol_name(number: int) -> str:
    """``"tcp"``, ``"udp"``, ``"icmp"``, ``"icmpv6"``, ``"sctp"``, or the number as text.

    The one spelling of protocols shared by the NFLOG and conntrack readers, so that their
    flows aggregate under the same key."""
    return _PROTOCOL_NAMES.get(number, str(number))


class NflogError(SeptumError):
    """NFLOG cannot be used: binding a group failed (taken, no permission, no support)."""


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    """One packet logged by a ``log group N`` rule.

    ``length`` is the IP packet's length from its header (total length for IPv4, payload
    length plus 40 for IPv6). Ports are 0 when the protocol has none, or when the packet is
    a non-first fragment."""

    group: int
    prefix: str
    family: int  # 4 or 6
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    protocol: str
    source_port: int
    destination_port: int
    length: int


def _attr(kind: int, data: bytes) -> bytes:
    length = _NLATTR.size + len(data)
    return _NLATTR.pack(length, kind) + data + b"\0" * (-length % 4)


def _attributes(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(type, payload) of each netlink attribute in ``buf``; stops at a malformed one."""
    offset = 0
    while offset + _NLATTR.size <= len(buf):
        length, kind = _NLATTR.unpack_from(buf, offset)
        if length < _NLATTR.size or offset + length > len(buf):
            return
        yield kind & NLA_TYPE_MASK, buf[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3


class ParsedIp(NamedTuple):
    """The start of an IP packet, as :func:`parse_ip_packet` reads it."""

    family: int  # 4 or 6
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    protocol: int  # IANA number of the transport (after IPv6 extension headers)
    source_port: int  # 0 without ports
    destination_port: int
    length: int  # of the whole IP packet, from its header


def parse_ip_packet(data: bytes | memoryview) -> ParsedIp | None:
    """Parse the start of an IP packet, or return None when it is no IPv4/IPv6 packet or too
    short for its addresses. Pure; costs a few slices.

    IPv6 extension headers are skipped by their generic length field (hop-by-hop, routing,
    destination options, mobility, HIP, shim6; AH by its own length rule); a fragment header
    ends the walk with ports only in the first fragment. ESP and unknown headers end it
    too: the protocol is then the last next-header value and the ports are 0."""
    b = bytes(data)
    if not b:
        return None
    version = b[0] >> 4
    if version == 4:
        if len(b) < 20:
            return None
        ihl = (b[0] & 0x0F) * 4
        length, frag = struct.unpack_from(">H2xH", b, 2)
        proto = b[9]
        src4, dst4 = IPv4Address(b[12:16]), IPv4Address(b[16:20])
        first_fragment = frag & 0x1FFF == 0
        sport, dport = _ports(b, ihl, proto) if first_fragment and ihl >= 20 else (0, 0)
        return ParsedIp(4, src4, dst4, proto, sport, dport, length)
    if version == 6:
        if len(b) < 40:
            return None
        (payload_length,) = struct.unpack_from(">H", b, 4)
        proto = b[6]
        src6, dst6 = IPv6Address(b[8:24]), IPv6Address(b[24:40])
        offset = 40
        ports_possible = True
        while offset + 8 <= len(b):
            if proto in _IPV6_EXTENSIONS:
                proto, offset = b[offset], offset + (b[offset + 1] + 1) * 8
            elif proto == _IPV6_AH:
                proto, offset = b[offset], offset + (b[offset + 1] + 2) * 4
            elif proto == _IPV6_FRAGMENT:
                (frag,) = struct.unpack_from(">H", b, offset + 2)
                ports_possible = frag & 0xFFF8 == 0
                proto, offset = b[offset], offset + 8
            else:
                break
        sport, dport = _ports(b, offset, proto) if ports_possible else (0, 0)
        return ParsedIp(6, src6, dst6, proto, sport, dport, 40 + payload_length)
    return None


def _ports(b: bytes, offset: int, proto: int) -> tuple[int, int]:
    if proto not in _PORTED or offset + 4 > len(b):
        return 0, 0
    sport, dport = struct.unpack_from(">HH", b, offset)
    return sport, dport


def _parse_packet_message(body: memoryview) -> LoggedPacket | None:
    """One ``NFULNL_MSG_PACKET`` body (after the netlink header) → packet, or None when it
    carries no parsable IP header (copy mode without payload, non-IP family)."""
    if len(body) < _NFGENMSG.size:
        return None
    _, _, res_id = _NFGENMSG.unpack_from(body, 0)
    group = int.from_bytes(res_id, "big")
    prefix = ""
    payload: memoryview | None = None
    for kind, value in _attributes(body[_NFGENMSG.size :]):
        if kind == NFULA_PREFIX:
            prefix = bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == NFULA_PAYLOAD:
            payload = value
    if payload is None:
        return None
    parsed = parse_ip_packet(payload)
    if parsed is None:
        return None
    family, source, destination, proto, sport, dport, length = parsed
    return LoggedPacket(
        group=group,
        prefix=prefix,
        family=family,
        source=source,
        destination=destination,
        protocol=protocol_name(proto),
        source_port=sport,
        destination_port=dport,
        length=length,
    )


def _has_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN (bit 12 of CapEff in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 12 & 1)
    except (OSError, ValueError):
        pass
    return False


class NflogReader:
    """A netlink socket bound to some NFLOG groups, in the creating thread's namespace.

    Design goals: no dependency beyond the standard library; never block a caller longer
    than it asked (``read`` takes a timeout); survive bursts (a large receive buffer, and
    overruns counted rather than fatal). Preconditions: ``CAP_NET_ADMIN``; no other socket
    holds the groups. One thread reads; :meth:`close` must not race a :meth:`read` in
    progress (stop the reading thread first).

    Construction costs one netlink round trip per group and raises :class:`NflogError` when
    a group cannot be bound. ``flush_timeout`` (seconds, 0.01 granularity) and
    ``queue_threshold`` set the kernel's batching (see the module docstring)."""

    #: Largest batch the kernel sends in one datagram is its buffer size (about a page by
    #: default, at most 128 KiB when raised), so this never truncates.
    _RECV_SIZE = 256 * 1024

    def __init__(
        self,
        groups: Sequence[int],
        *,
        copy_range: int = 128,
        flush_timeout: float = 0.1,
        queue_threshold: int = 64,
        receive_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        self.groups: tuple[int, ...] = tuple(dict.fromkeys(groups))
        for g in self.groups:
            if not 0 <= g <= 0xFFFF:
                raise NflogError(f"nflog group {g} is out of range 0..65535")
        if not self.groups:
            raise NflogError("no nflog group to read")
        #: Times the kernel dropped messages because the receive buffer was full.
        self.overruns = 0
        #: Logged packets that carried no parsable IPv4/IPv6 header (skipped).
        self.unparsed = 0
        self._seq = 0
        self._pending: list[LoggedPacket] = []
        self._buffer = bytearray(self._RECV_SIZE)
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as e:
            raise NflogError(f"cannot open a netfilter netlink socket: {e}") from e
        try:
            self._set_receive_buffer(receive_buffer)
            self._sock.bind((0, 0))
            self._sock.settimeout(5.0)
            timeout_cs = max(0, round(flush_timeout * 100))
            for g in self.groups:
                self._configure(
                    g,
                    _attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND)),
                    _attr(NFULA_CFG_MODE, struct.pack(">IBx", copy_range, NFULNL_COPY_PACKET)),
                    _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", timeout_cs)),
                    _attr(NFULA_CFG_QTHRESH, struct.pack(">I", max(1, queue_threshold))),
                )
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def _set_receive_buffer(self, size: int) -> None:
        # SO_RCVBUFFORCE ignores net.core.rmem_max (root only); SO_RCVBUF is capped by it.
        force = getattr(socket, "SO_RCVBUFFORCE", 33)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _configure(self, group: int, *attrs: bytes) -> None:
        """Send one config request for ``group`` and wait for its acknowledgement. Packets
        of groups bound earlier may arrive meanwhile: they are kept for the next read."""
        self._seq += 1
        body = _NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, group.to_bytes(2, "big"))
        body += b"".join(attrs)
        msg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0
        )
        try:
            self._sock.send(header + body)
            while True:
                n = self._sock.recv_into(self._buffer)
                for msg_type_, seq, payload in self._messages(memoryview(self._buffer)[:n]):
                    if msg_type_ == NLMSG_ERROR and seq == self._seq:
                        (code,) = struct.unpack_from("=i", payload, 0)
                        if code == 0:
                            return
                        raise NflogError(self._bind_failure(group, -code))
                    self._collect(msg_type_, payload)
        except TimeoutError as e:
            raise NflogError(f"the kernel did not answer binding nflog group {group}") from e
        except NflogError:
            raise
        except OSError as e:
            raise NflogError(f"cannot bind nflog group {group}: {e}") from e

    @staticmethod
    def _bind_failure(group: int, code: int) -> str:
        # The kernel answers EPERM both without CAP_NET_ADMIN and when another socket holds
        # the group (EBUSY only in a race between two binds): tell them apart by our
        # capabilities.
        reason = os.strerror(code)
        if code == errno.EBUSY or (code == errno.EPERM and _has_net_admin()):
            return (
                f"nflog group {group} is already bound by another socket in this network "
                f"namespace (ulogd, another agent?): {reason}"
            )
        if code == errno.EPERM:
            return f"binding nflog group {group} needs CAP_NET_ADMIN: {reason}"
        return f"cannot bind nflog group {group}: {reason}"

    @staticmethod
    def _messages(buf: memoryview) -> Iterator[tuple[int, int, memoryview]]:
        """(type, sequence number, payload) of each netlink message in one datagram."""
        offset = 0
        while offset + _NLMSGHDR.size <= len(buf):
            length, msg_type, _flags, seq, _portid = _NLMSGHDR.unpack_from(buf, offset)
            if length < _NLMSGHDR.size or offset + length > len(buf):
                return
            yield msg_type, seq, buf[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3

    def _collect(self, msg_type: int, payload: memoryview) -> None:
        if msg_type == NLMSG_OVERRUN:
            self.overruns += 1
            return
        if msg_type >> 8 != NFNL_SUBSYS_ULOG or msg_type & 0xFF != NFULNL_MSG_PACKET:
            return  # NLMSG_DONE ends a batch; NOOP and stray acknowledgements carry nothing
        packet = _parse_packet_message(payload)
        if packet is None:
            self.unparsed += 1
        else:
            self._pending.append(packet)

    def fileno(self) -> int:
        """The socket's descriptor, for a caller's own ``select``/``poll`` loop."""
        return self._sock.fileno()

    def read(self, timeout: float | None = None) -> list[LoggedPacket]:
        """The packets logged since the last read, waiting up to ``timeout`` seconds (None:
        forever) for the first one; ``[]`` when none came in time.

        Cost: one ``select`` plus one ``recv`` per kernel batch already queued (it drains
        the socket without blocking once something arrived) and parsing ~1 µs-scale work per
        packet."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._sock], [], [], remaining)
            if ready:
                self._drain()
            elif deadline is not None:
                break
        out, self._pending = self._pending, []
        return out

    def _drain(self) -> None:
        while True:
            try:
                n = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            for msg_type, _seq, payload in self._messages(memoryview(self._buffer)[:n]):
                self._collect(msg_type, payload)

    def close(self) -> None:
        """Close the socket; the kernel unbinds its groups. Idempotent."""
        self._sock.close()

    def __enter__(self) -> NflogReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
