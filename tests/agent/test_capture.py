"""Flow capture without the kernel: parsers on real captured output, the pure aggregator
(observations in, records out), and the recorder's threads over fake sources."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from septum.agent.capture import (
    CaptureError,
    FlowAggregator,
    FlowKey,
    FlowRecord,
    FlowRecorder,
    FlowVerdict,
    parse_log_prefix,
)
from septum.agent.conntrack import (
    ConntrackCli,
    ConntrackEntry,
    ConntrackError,
    ConntrackEvent,
    ConntrackEventKind,
    ConntrackParseError,
    enable_accounting,
    parse_conntrack_event,
    parse_conntrack_line,
)
from septum.agent.nflog import (
    NFNL_SUBSYS_ULOG,
    NFULA_PACKET_HDR,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    LoggedPacket,
    NflogError,
    NflogReader,
    _parse_packet_message,
    parse_ip_packet,
    protocol_name,
)
from septum.testing.fakes import FakeConntrackTable

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
A4, B4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
A6, B6 = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")

# ------------------------------------------------------------------ conntrack output
# Captured on kernel 6.18 with conntrack-tools 1.4.7 (namespaces, veth, 198.18.0.0/15).

LIST_TCP = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=40488 "
    "dport=8080 packets=4 bytes=5216 src=198.18.0.2 dst=198.18.0.1 sport=8080 dport=40488 "
    "packets=3 bytes=3164 [ASSURED] mark=0 use=1"
)
LIST_UDP6 = (
    "ipv6     10 udp      17 29 src=2001:db8::1 dst=2001:db8::2 sport=53311 dport=5353 "
    "packets=1 bytes=53 [UNREPLIED] src=2001:db8::2 dst=2001:db8::1 sport=5353 dport=53311 "
    "packets=0 bytes=0 mark=0 delta-time=1 use=1"
)
LIST_ICMP = (
    "ipv4     2 icmp     1 29 src=198.18.0.1 dst=198.18.0.2 type=8 code=0 id=4660 packets=1 "
    "bytes=31 src=198.18.0.2 dst=198.18.0.1 type=0 code=0 id=4660 packets=1 bytes=31 mark=0 "
    "delta-time=1 use=1"
)
LIST_ICMP6 = (
    "ipv6     10 icmpv6   58 29 src=2001:db8::1 dst=2001:db8::2 type=128 code=0 id=4660 "
    "packets=1 bytes=51 src=2001:db8::2 dst=2001:db8::1 type=129 code=0 id=4660 packets=1 "
    "bytes=51 mark=0 delta-time=1 use=1"
)
LIST_NO_ACCT = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=40490 "
    "dport=8080 src=198.18.0.2 dst=198.18.0.1 sport=8080 dport=40490 [ASSURED] mark=0 use=1"
)
#: What ``conntrack -D`` prints for the entry it deleted (no ``-o extended``).
DELETED_PLAIN = (
    "tcp      6 112 TIME_WAIT src=198.18.0.1 dst=198.18.0.2 sport=40488 dport=8080 packets=6 "
    "bytes=5320 src=198.18.0.2 dst=198.18.0.1 sport=8080 dport=40488 packets=5 bytes=3268 "
    "[ASSURED] mark=0 use=1"
)
EVENT_NEW = (
    "[1795600618.466807]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=198.18.0.1 "
    "dst=198.18.0.2 sport=40488 dport=8080 [UNREPLIED] src=198.18.0.2 dst=198.18.0.1 "
    "sport=8080 dport=40488\n"
)
EVENT_DESTROY_DELETED = (
    "[1795600628.827666]\t[DESTROY] ipv4     2 tcp      6 112 TIME_WAIT src=198.18.0.1 "
    "dst=198.18.0.2 sport=40488 dport=8080 packets=6 bytes=5320 src=198.18.0.2 "
    "dst=198.18.0.1 sport=8080 dport=40488 packets=5 bytes=3268 [ASSURED] [USERSPACE] "
    "portid=3863595702\n"
)
#: An expired entry: no timeout column, ``delta-time`` with nf_conntrack_timestamp on.
EVENT_DESTROY_EXPIRED = (
    "[1795600651.855268]\t[DESTROY] ipv6     10 tcp      6 TIME_WAIT src=2001:db8::1 "
    "dst=2001:db8::2 sport=37422 dport=8080 packets=5 bytes=868 src=2001:db8::2 "
    "dst=2001:db8::1 sport=8080 dport=37422 packets=5 bytes=3368 [ASSURED] delta-time=2\n"
)
EVENT_NEW_ICMP6 = (
    "[1795600643.642774]\t    [NEW] ipv6     10 icmpv6   58 30 src=2001:db8::1 "
    "dst=2001:db8::2 type=128 code=0 id=4660 [UNREPLIED] src=2001:db8::2 dst=2001:db8::1 "
    "type=129 code=0 id=4660\n"
)


def test_parse_list_line_tcp_with_counters_of_both_directions() -> None:
    assert parse_conntrack_line(LIST_TCP) == ConntrackEntry(
        family=4,
        protocol="tcp",
        source=A4,
        destination=B4,
        source_port=40488,
        destination_port=8080,
        state="ESTABLISHED",
        packets=4,
        bytes=5216,
        reply_packets=3,
        reply_bytes=3164,
    )


def test_parse_list_lines_udp6_icmp_and_no_accounting() -> None:
    udp = parse_conntrack_line(LIST_UDP6)
    assert (udp.family, udp.protocol, udp.source, udp.destination) == (6, "udp", A6, B6)
    assert (udp.source_port, udp.destination_port, udp.state) == (53311, 5353, None)
    assert (udp.packets, udp.bytes, udp.reply_packets, udp.reply_bytes) == (1, 53, 0, 0)
    icmp = parse_conntrack_line(LIST_ICMP)
    assert (icmp.protocol, icmp.source_port, icmp.destination_port) == ("icmp", 0, 0)
    assert (icmp.packets, icmp.bytes, icmp.reply_bytes) == (1, 31, 31)
    icmp6 = parse_conntrack_line(LIST_ICMP6)
    assert (icmp6.family, icmp6.protocol, icmp6.destination_port) == (6, "icmpv6", 0)
    plain = parse_conntrack_line(LIST_NO_ACCT)
    assert (plain.packets, plain.bytes, plain.reply_packets, plain.reply_bytes) == (0, 0, 0, 0)


def test_parse_plain_line_without_family_columns() -> None:
    e = parse_conntrack_line(DELETED_PLAIN)
    assert e.key == (4, "tcp", A4, B4, 40488, 8080)
    assert (e.state, e.packets, e.reply_bytes) == ("TIME_WAIT", 6, 3268)


def test_parse_unknown_protocol_by_number() -> None:
    line = "ipv4     2 unknown  47 599 src=198.18.0.1 dst=198.18.0.2 [UNREPLIED] src=198.18.0.2 dst=198.18.0.1 mark=0 use=1"  # noqa: E501
    e = parse_conntrack_line(line)
    assert (e.protocol, e.source_port, e.destination_port, e.state) == ("47", 0, 0, None)


def test_parse_events() -> None:
    new = parse_conntrack_event(EVENT_NEW)
    assert new.kind is ConntrackEventKind.NEW
    assert new.at == datetime(2026, 11, 25, 9, 56, 58, 466807, tzinfo=UTC)
    assert new.entry.key == (4, "tcp", A4, B4, 40488, 8080)
    assert new.entry.state == "SYN_SENT"
    gone = parse_conntrack_event(EVENT_DESTROY_DELETED)
    assert gone.kind is ConntrackEventKind.DESTROY
    assert (gone.entry.bytes, gone.entry.reply_bytes, gone.entry.state) == (5320, 3268, "TIME_WAIT")
    expired = parse_conntrack_event(EVENT_DESTROY_EXPIRED)
    assert expired.entry.key == (6, "tcp", A6, B6, 37422, 8080)
    assert (expired.entry.packets, expired.entry.bytes, expired.entry.reply_bytes) == (5, 868, 3368)
    icmp6 = parse_conntrack_event(EVENT_NEW_ICMP6)
    assert (icmp6.entry.protocol, icmp6.entry.destination_port) == ("icmpv6", 0)


@pytest.mark.parametrize(
    "line",
    [
        "conntrack v1.4.7 (conntrack-tools): 12 flow events have been shown.",
        "NOTICE: Netlink socket buffer size has been set to 8388608 bytes.",
        LIST_TCP,  # a listing line is no event
        "",
    ],
)
def test_non_event_lines_are_parse_errors(line: str) -> None:
    with pytest.raises(ConntrackParseError):
        parse_conntrack_event(line)


def test_garbage_line_is_a_parse_error() -> None:
    with pytest.raises(ConntrackParseError):
        parse_conntrack_line("ipv4 2 tcp")


def test_enable_accounting(tmp_path: Path) -> None:
    sysctl = tmp_path / "nf_conntrack_acct"
    sysctl.write_text("0\n")
    assert enable_accounting(sysctl) is True
    assert sysctl.read_text().strip() == "1"
    assert enable_accounting(tmp_path / "absent") is False


def _fake_conntrack(tmp_path: Path, script: str) -> list[str]:
    exe = tmp_path / "conntrack"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return [str(exe)]


def test_cli_delete_counts_and_tolerates_gone_entries(tmp_path: Path) -> None:
    # Like the real tool: exit 1 and "0 flow entries" when nothing matched.
    calls = tmp_path / "calls"
    command = _fake_conntrack(
        tmp_path,
        f'echo "$@" >> {calls}\n'
        'case "$*" in *40488*) echo "conntrack v1.4.7 (conntrack-tools): '
        '1 flow entries have been deleted." >&2; exit 0;; esac\n'
        'echo "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted." >&2\n'
        "exit 1\n",
    )
    live = parse_conntrack_line(LIST_TCP)
    gone = parse_conntrack_line(LIST_NO_ACCT)
    icmp6 = parse_conntrack_line(LIST_ICMP6)
    assert ConntrackCli(command).delete([live, gone, live, icmp6]) == 1
    assert calls.read_text().splitlines() == [
        "-D -f ipv4 -p tcp -s 198.18.0.1 -d 198.18.0.2 --sport 40488 --dport 8080",
        "-D -f ipv4 -p tcp -s 198.18.0.1 -d 198.18.0.2 --sport 40490 --dport 8080",
        "-D -f ipv6 -p icmpv6 -s 2001:db8::1 -d 2001:db8::2",
    ]


def test_cli_errors_are_reported(tmp_path: Path) -> None:
    command = _fake_conntrack(tmp_path, 'echo "conntrack: Operation not permitted" >&2\nexit 1\n')
    cli = ConntrackCli(command)
    with pytest.raises(ConntrackError, match="Operation not permitted"):
        cli.entries()
    with pytest.raises(ConntrackError, match="Operation not permitted"):
        cli.delete([parse_conntrack_line(LIST_TCP)])


def test_cli_lists_both_families(tmp_path: Path) -> None:
    command = _fake_conntrack(
        tmp_path,
        f'case "$*" in *ipv4*) echo "{LIST_TCP}";; *ipv6*) echo "{LIST_UDP6}";; esac\n'
        'echo "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown." >&2\n',
    )
    entries = ConntrackCli(command).entries()
    assert [e.family for e in entries] == [4, 6]


def test_fake_conntrack_table_deletes_by_tuple() -> None:
    live = parse_conntrack_line(LIST_TCP)
    table = FakeConntrackTable([live, parse_conntrack_line(LIST_UDP6)])
    stale_copy = parse_conntrack_line(DELETED_PLAIN)  # same tuple, other counters
    assert table.delete([stale_copy, stale_copy]) == 1
    assert table.deleted == [live]
    assert [e.protocol for e in table.entries()] == ["udp"]


# ------------------------------------------------------------------------ nflog parsing


def _ipv4(proto: int, l4: bytes, *, frag: int = 0, total: int | None = None) -> bytes:
    length = total if total is not None else 20 + len(l4)
    return (
        struct.pack(">BBHHHBBH4s4s", 0x45, 0, length, 1, frag, 64, proto, 0, A4.packed, B4.packed)
        + l4
    )


def _ipv6(next_header: int, rest: bytes, *, payload_length: int | None = None) -> bytes:
    plen = payload_length if payload_length is not None else len(rest)
    return struct.pack(">IHBB", 6 << 28, plen, next_header, 64) + A6.packed + B6.packed + rest


PORTS = struct.pack(">HH", 40000, 443) + b"\0" * 16


def test_parse_ipv4_tcp_udp_icmp_and_fragments() -> None:
    assert parse_ip_packet(_ipv4(6, PORTS)) == (4, A4, B4, 6, 40000, 443, 40)
    assert parse_ip_packet(_ipv4(17, PORTS[:8], total=1400)) == (4, A4, B4, 17, 40000, 443, 1400)
    assert parse_ip_packet(_ipv4(1, b"\x08\0\0\0\0\0\0\0")) == (4, A4, B4, 1, 0, 0, 28)
    assert parse_ip_packet(_ipv4(6, PORTS, frag=0x2000))[4:6] == (40000, 443)  # type: ignore[index]
    assert parse_ip_packet(_ipv4(6, PORTS, frag=185))[4:6] == (0, 0)  # type: ignore[index]
    assert parse_ip_packet(_ipv4(6, b"\x9c"))[4:6] == (0, 0)  # type: ignore[index]  # truncated


def test_parse_ipv6_with_extension_headers() -> None:
    assert parse_ip_packet(_ipv6(6, PORTS)) == (6, A6, B6, 6, 40000, 443, 60)
    hop_by_hop = bytes([60, 0]) + b"\0" * 6  # next: destination options, 8 bytes
    dest_opts = bytes([17, 1]) + b"\0" * 14  # next: udp, 16 bytes
    packet = _ipv6(0, hop_by_hop + dest_opts + PORTS[:8])
    assert parse_ip_packet(packet) == (6, A6, B6, 17, 40000, 443, 40 + 8 + 16 + 8)
    first_fragment = bytes([6, 0]) + struct.pack(">HI", 0x0001, 7)  # offset 0, more fragments
    assert parse_ip_packet(_ipv6(44, first_fragment + PORTS))[3:6] == (6, 40000, 443)  # type: ignore[index]
    later_fragment = bytes([6, 0]) + struct.pack(">HI", 0x00B8, 7)  # offset 23 (x8)
    assert parse_ip_packet(_ipv6(44, later_fragment + PORTS))[3:6] == (6, 0, 0)  # type: ignore[index]
    auth = bytes([58, 1]) + b"\0" * 10  # AH: (1 + 2) * 4 = 12 bytes, next: icmpv6
    assert parse_ip_packet(_ipv6(51, auth + b"\x80\0\0\0"))[3:6] == (58, 0, 0)  # type: ignore[index]


def test_parse_rejects_non_ip_and_short_packets() -> None:
    assert parse_ip_packet(b"") is None
    assert parse_ip_packet(b"\x45" + b"\0" * 10) is None
    assert parse_ip_packet(_ipv6(6, b"")[:30]) is None
    assert parse_ip_packet(b"\x00" * 40) is None


def test_protocol_names() -> None:
    assert [protocol_name(n) for n in (1, 6, 17, 58, 132, 47)] == [
        "icmp",
        "tcp",
        "udp",
        "icmpv6",
        "sctp",
        "47",
    ]


def _nla(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n % 4)


def test_parse_nflog_packet_message() -> None:
    body = struct.pack("=BB", socket.AF_INET6, 0) + (2).to_bytes(2, "big")
    body += _nla(NFULA_PACKET_HDR, struct.pack(">HBx", 0x86DD, 1))
    body += _nla(NFULA_PREFIX, b"septum would-deny t/p/ingress/1 \0")
    body += _nla(NFULA_PAYLOAD, _ipv6(17, PORTS[:8], payload_length=85))
    assert _parse_packet_message(memoryview(body)) == LoggedPacket(
        group=2,
        prefix="septum would-deny t/p/ingress/1 ",
        family=6,
        source=A6,
        destination=B6,
        protocol="udp",
        source_port=40000,
        destination_port=443,
        length=125,
    )
    no_payload = struct.pack("=BB", socket.AF_INET, 0) + (1).to_bytes(2, "big")
    assert _parse_packet_message(memoryview(no_payload + _nla(NFULA_PREFIX, b"x\0"))) is None
    assert NFNL_SUBSYS_ULOG == 4


def test_reader_rejects_bad_groups() -> None:
    with pytest.raises(NflogError):
        NflogReader([])
    with pytest.raises(NflogError):
        NflogReader([70000])


# --------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("septum deny t/p/ingress/0 ", (FlowVerdict.DENIED, "t/p/ingress/0")),
        ("septum would-deny base/web/egress/3 ", (FlowVerdict.WOULD_DENY, "base/web/egress/3")),
        ("septum log audit/all/ingress/0 ", (FlowVerdict.LOGGED, "audit/all/ingress/0")),
        ("septum deny base/*/ingress/default ", (FlowVerdict.DENIED, "base/*/ingress/default")),
        ("septum deny */*/egress/default ", (FlowVerdict.DENIED, "*/*/egress/default")),
        ("septum deny t/p/ingress/12", (FlowVerdict.DENIED, "t/p/ingress/12")),  # truncated
        ("septum deny", None),
        ("septum allow t/p/ingress/0 ", None),
        ("kube deny t/p/ingress/0 ", None),
        ("", None),
    ],
)
def test_parse_log_prefix(prefix: str, expected: tuple[FlowVerdict, str] | None) -> None:
    assert parse_log_prefix(prefix) == expected


# -------------------------------------------------------------------------- aggregator


def _packet(
    group: int,
    prefix: str,
    sport: int,
    *,
    dport: int = 443,
    length: int = 60,
    src: IPv4Address | IPv6Address = A4,
    dst: IPv4Address | IPv6Address = B4,
    protocol: str = "tcp",
) -> LoggedPacket:
    return LoggedPacket(group, prefix, src.version, src, dst, protocol, sport, dport, length)


def _event(
    kind: ConntrackEventKind,
    at: datetime,
    sport: int,
    *,
    dport: int = 8080,
    counters: tuple[int, int, int, int] = (0, 0, 0, 0),
    src: IPv4Address | IPv6Address = A4,
    dst: IPv4Address | IPv6Address = B4,
) -> ConntrackEvent:
    p, b, rp, rb = counters
    entry = ConntrackEntry(src.version, "tcp", src, dst, sport, dport, None, p, b, rp, rb)
    return ConntrackEvent(kind, at, entry)


def _never(key: FlowKey) -> tuple[str, ...]:
    raise AssertionError(f"explain_accepted called for {key}")


DENY = "septum deny t/p/ingress/0 "


def test_denied_packets_aggregate_by_flow_and_count_source_ports() -> None:
    agg = FlowAggregator()
    for i, sport in enumerate((40000, 40000, 40001)):
        agg.add_packet(_packet(1, DENY, sport), T0 + timedelta(seconds=i))
    agg.add_packet(_packet(1, DENY, 40002, dport=22), T0 + timedelta(seconds=1))
    records = agg.drain(enforcer="h1", explain_accepted=_never)
    assert [(r.port, r.connections, r.packets, r.bytes) for r in records] == [
        (443, 2, 3, 180),
        (22, 1, 1, 60),
    ]
    first = records[0]
    assert (first.start, first.end) == (T0, T0 + timedelta(seconds=2))
    assert (first.verdict, first.provenance, first.enforcer) == (
        FlowVerdict.DENIED,
        ("t/p/ingress/0",),
        "h1",
    )
    assert agg.drain(enforcer="h1", explain_accepted=_never) == []  # drained


def test_verdict_comes_from_the_group_and_provenance_from_the_prefix() -> None:
    agg = FlowAggregator(deny_group=5, would_deny_group=6, log_group=7)
    agg.add_packet(_packet(5, DENY, 1), T0)
    agg.add_packet(_packet(5, "septum deny t/q/ingress/1 ", 1), T0)  # another rule: own record
    agg.add_packet(_packet(6, "septum would-deny t/p/ingress/0 ", 1), T0)
    agg.add_packet(_packet(7, "septum log a/l/ingress/0 ", 1), T0)
    agg.add_packet(_packet(5, "some other rule", 1), T0)  # not ours: no provenance
    assert agg.add_packet(_packet(1, DENY, 1), T0) is False  # not a configured group
    assert agg.ignored == 1
    records = agg.drain(enforcer="h1", explain_accepted=_never)
    assert sorted((r.verdict.value, r.provenance) for r in records) == [
        ("denied", ()),
        ("denied", ("t/p/ingress/0",)),
        ("denied", ("t/q/ingress/1",)),
        ("logged", ("a/l/ingress/0",)),
        ("would-deny", ("t/p/ingress/0",)),
    ]


def test_groups_must_differ() -> None:
    with pytest.raises(CaptureError):
        FlowAggregator(deny_group=1, would_deny_group=1)


def test_allowed_connections_from_new_and_bytes_from_destroy() -> None:
    agg = FlowAggregator()
    agg.add_event(_event(ConntrackEventKind.NEW, T0, 50000))
    agg.add_event(_event(ConntrackEventKind.NEW, T0 + timedelta(seconds=1), 50001))
    agg.add_event(
        _event(
            ConntrackEventKind.DESTROY,
            T0 + timedelta(seconds=3),
            50000,
            counters=(6, 5320, 5, 3268),
        )
    )
    # A connection that started before this interval contributes its bytes when it ends.
    agg.add_event(
        _event(
            ConntrackEventKind.DESTROY, T0 + timedelta(seconds=2), 49000, counters=(1, 100, 1, 50)
        )
    )
    agg.add_event(_event(ConntrackEventKind.NEW, T0, 1, src=IPv4Address("127.0.0.1")))
    agg.add_event(_event(ConntrackEventKind.NEW, T0, 1, dst=IPv6Address("::1"), src=A6))
    assert agg.ignored == 2
    asked: list[FlowKey] = []

    def explain(key: FlowKey) -> tuple[str, ...]:
        asked.append(key)
        return ("base/web/ingress/0",)

    [record] = agg.drain(enforcer="h1", explain_accepted=explain)
    assert asked == [FlowKey(A4, B4, "tcp", 8080)]
    assert record == FlowRecord(
        start=T0,
        end=T0 + timedelta(seconds=3),
        enforcer="h1",
        source=A4,
        destination=B4,
        protocol="tcp",
        port=8080,
        verdict=FlowVerdict.ALLOWED,
        provenance=("base/web/ingress/0",),
        connections=2,
        packets=6 + 5 + 1 + 1,
        bytes=5320 + 3268 + 100 + 50,
    )


def test_explain_is_asked_again_each_interval_and_its_errors_are_contained() -> None:
    agg = FlowAggregator()
    calls: list[FlowKey] = []

    def explain(key: FlowKey) -> tuple[str, ...]:
        calls.append(key)
        if len(calls) == 2:
            raise RuntimeError("policy engine exploded")
        return ("t/p/ingress/0",)

    for _ in range(2):
        agg.add_event(_event(ConntrackEventKind.NEW, T0, 50000))
        agg.add_event(_event(ConntrackEventKind.NEW, T0, 50001))
    [first] = agg.drain(enforcer="h", explain_accepted=explain)
    agg.add_event(_event(ConntrackEventKind.NEW, T0, 50002))
    [second] = agg.drain(enforcer="h", explain_accepted=explain)
    assert len(calls) == 2  # once per key and interval, not per event
    assert (first.provenance, first.connections) == (("t/p/ingress/0",), 4)
    assert (second.provenance, second.connections) == ((), 1)


def test_records_are_sorted_by_start_then_flow() -> None:
    agg = FlowAggregator()
    agg.add_packet(_packet(1, DENY, 1, src=A6, dst=B6), T0)
    agg.add_packet(_packet(1, DENY, 1), T0)
    agg.add_event(_event(ConntrackEventKind.NEW, T0 - timedelta(seconds=1), 2))
    records = agg.drain(enforcer="h", explain_accepted=lambda k: ())
    assert [(r.verdict.value, r.source) for r in records] == [
        ("allowed", A4),
        ("denied", A4),
        ("denied", A6),
    ]


def test_record_json_round_trip() -> None:
    record = FlowRecord(
        start=T0,
        end=T0 + timedelta(seconds=5),
        enforcer="h1",
        source=A6,
        destination=B6,
        protocol="udp",
        port=53,
        verdict=FlowVerdict.WOULD_DENY,
        provenance=("t/p/egress/2",),
        connections=1,
        packets=2,
        bytes=150,
    )
    data = record.to_json()
    assert list(data) == [
        "start",
        "end",
        "enforcer",
        "source",
        "destination",
        "protocol",
        "port",
        "verdict",
        "provenance",
        "connections",
        "packets",
        "bytes",
    ]
    assert data["start"] == "2026-11-25T12:00:00+00:00"
    assert data["verdict"] == "would-deny"
    assert FlowRecord.from_json(json.loads(json.dumps(data))) == record
    with pytest.raises(CaptureError):
        FlowRecord.from_json({**data, "port": "53"})
    with pytest.raises(CaptureError):
        FlowRecord.from_json({k: v for k, v in data.items() if k != "verdict"})


# -------------------------------------------------------------------------- recorder


class FakePackets:
    """A packet source fed by the test; ``read`` waits on a condition like a socket."""

    def __init__(self) -> None:
        self._queue: list[LoggedPacket] = []
        self._cond = threading.Condition()
        self.closed = False
        self.overruns = 0

    def push(self, *packets: LoggedPacket) -> None:
        with self._cond:
            self._queue.extend(packets)
            self._cond.notify_all()

    def read(self, timeout: float | None = None) -> list[LoggedPacket]:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue), timeout)
            out, self._queue = self._queue, []
            return out

    def close(self) -> None:
        self.closed = True


class FakeEvents:
    def __init__(self) -> None:
        self._queue: list[ConntrackEvent | None] = []
        self._cond = threading.Condition()
        self.overruns = 0

    def push(self, event: ConntrackEvent) -> None:
        with self._cond:
            self._queue.append(event)
            self._cond.notify_all()

    def __iter__(self) -> Iterator[ConntrackEvent]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                item = self._queue.pop(0)
            if item is None:
                return
            yield item

    def close(self) -> None:
        with self._cond:
            self._queue.append(None)
            self._cond.notify_all()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recorder_flushes_both_sources_to_the_sink(tmp_path: Path) -> None:
    packets, events = FakePackets(), FakeEvents()
    opened: list[tuple[int, ...]] = []

    def open_packets(groups: Sequence[int]) -> FakePackets:
        opened.append(tuple(groups))
        return packets

    sink = tmp_path / "flows" / "flows.jsonl"
    recorder = FlowRecorder(
        enforcer="h1",
        sink=sink,
        interval=3600,  # the test flushes by hand
        deny_group=11,
        would_deny_group=12,
        log_group=13,
        explain_accepted=lambda key: (f"t/p/ingress/{key.port}",),
        packet_source=open_packets,
        event_source=lambda: events,
        clock=lambda: T0,
    )
    recorder.start()
    try:
        assert opened == [(11, 12, 13)]
        assert sink.exists()
        packets.push(_packet(11, DENY, 40000), _packet(11, DENY, 40000))
        events.push(_event(ConntrackEventKind.NEW, T0, 50000))
        _wait_for(lambda: recorder.stats().packets == 2 and recorder.stats().events == 1)
        assert recorder.flush() == 2
        assert recorder.flush() == 0
        events.push(_event(ConntrackEventKind.DESTROY, T0, 50000, counters=(2, 200, 1, 100)))
        _wait_for(lambda: recorder.stats().events == 2)
    finally:
        recorder.stop()
    recorder.stop()  # idempotent
    assert packets.closed
    rows = _lines(sink)
    assert [
        (r["verdict"], r["port"], r["connections"], r["packets"], r["bytes"]) for r in rows
    ] == [
        ("denied", 443, 1, 2, 120),  # sorted by start, then flow
        ("allowed", 8080, 1, 0, 0),
        ("allowed", 8080, 0, 3, 300),  # written by stop()
    ]
    assert rows[0]["provenance"] == ["t/p/ingress/0"]
    assert rows[1]["provenance"] == ["t/p/ingress/8080"]
    assert {r["enforcer"] for r in rows} == {"h1"}
    stats = recorder.stats()
    assert (stats.records, stats.flushes, stats.failures) == (3, 2, ())


def test_recorder_flushes_every_interval(tmp_path: Path) -> None:
    packets = FakePackets()
    sink = tmp_path / "flows.jsonl"
    with FlowRecorder(
        enforcer="h1",
        sink=sink,
        interval=0.05,
        explain_accepted=_never,
        conntrack_events=False,
        packet_source=lambda groups: packets,
    ):
        packets.push(_packet(1, DENY, 1))
        _wait_for(lambda: sink.stat().st_size > 0)
    [row] = _lines(sink)
    assert row["verdict"] == "denied"


def test_recorder_keeps_lines_when_the_sink_cannot_be_written(tmp_path: Path) -> None:
    packets = FakePackets()
    sink = tmp_path / "flows.jsonl"
    recorder = FlowRecorder(
        enforcer="h1",
        sink=sink,
        interval=3600,
        explain_accepted=_never,
        conntrack_events=False,
        packet_source=lambda groups: packets,
    )
    with recorder:
        packets.push(_packet(1, DENY, 1))
        _wait_for(lambda: recorder.stats().packets == 1)
        sink.unlink()
        sink.mkdir()  # writing now fails
        assert recorder.flush() == 0
        assert recorder.stats().write_errors == 1
        sink.rmdir()
        packets.push(_packet(1, DENY, 2, dport=22))
        _wait_for(lambda: recorder.stats().packets == 2)
        assert recorder.flush() == 2  # the kept line, then the new one
    assert [r["port"] for r in _lines(sink)] == [443, 22]


def test_recorder_reports_a_failed_reader(tmp_path: Path) -> None:
    class Broken:
        overruns = 0

        def read(self, timeout: float | None = None) -> list[LoggedPacket]:
            raise OSError("socket gone")

        def close(self) -> None:
            pass

    recorder = FlowRecorder(
        enforcer="h1",
        sink=tmp_path / "f.jsonl",
        interval=3600,
        explain_accepted=_never,
        conntrack_events=False,
        packet_source=lambda groups: Broken(),
    )
    with recorder:
        _wait_for(lambda: recorder.stats().failures != ())
    assert recorder.stats().failures == ("nflog reader: socket gone",)


def test_recorder_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(CaptureError):
        FlowRecorder(enforcer="h", sink=tmp_path / "f", interval=0, explain_accepted=_never)
    with pytest.raises(CaptureError):
        FlowRecorder(
            enforcer="h",
            sink=tmp_path / "f",
            interval=1,
            deny_group=3,
            explain_accepted=_never,
        )


def test_unlogged_would_deny_adds_a_would_deny_record_with_the_same_counts() -> None:
    agg = FlowAggregator()
    agg.add_event(_event(ConntrackEventKind.NEW, T0, 50000))
    records = agg.drain(
        enforcer="e",
        explain_accepted=lambda key: ("*/*/egress/default",),
        unlogged_would_deny=lambda key: ("*/*/ingress/default",),
    )
    verdicts = {r.verdict: r for r in records}
    assert set(verdicts) == {FlowVerdict.ALLOWED, FlowVerdict.WOULD_DENY}
    would = verdicts[FlowVerdict.WOULD_DENY]
    assert would.provenance == ("*/*/ingress/default",)
    assert would.connections == verdicts[FlowVerdict.ALLOWED].connections == 1
    # Nothing unlogged: no extra record.
    agg.add_event(_event(ConntrackEventKind.NEW, T0, 50001))
    records = agg.drain(
        enforcer="e", explain_accepted=lambda k: (), unlogged_would_deny=lambda k: ()
    )
    assert [r.verdict for r in records] == [FlowVerdict.ALLOWED]
