"""The flow importers over the sample files in ``samples/``: exact rows, exact line numbers
of malformed and skipped lines, and generator round trips for CSV and VPC."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.agent.capture import CaptureError, FlowRecord
from septum.flows.importers import ImportFormatError, ImportOptions, importer_for
from septum.flows.records import RAW_FIELDS, Malformed, Row, Skipped, rows_to_batch
from tests.flows import netflow_packets

SAMPLES = Path(__file__).parent / "samples"
NOW = datetime(2026, 1, 2, tzinfo=UTC)
OPTIONS = ImportOptions(now=NOW)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def row(start: str, end: str | None, *rest: Any) -> Row:
    assert len(rest) == len(RAW_FIELDS) - 2
    return (t(start), t(end or start), *rest)  # type: ignore[return-value]


def read(fmt: str, name: str, options: ImportOptions = OPTIONS) -> list[Row | Malformed | Skipped]:
    with (SAMPLES / name).open("rb") as stream:
        out = list(importer_for(fmt).read(stream, name, options))
    for item in out:
        if isinstance(item, tuple):
            assert item[0].utcoffset() == timedelta(0)
            assert item[1].utcoffset() == timedelta(0)
            assert item[0] <= item[1]
    rows = [r for r in out if isinstance(r, tuple)]
    rows_to_batch(rows)  # every row fits the Arrow schema
    return out


def read_bytes(
    fmt: str, data: bytes, options: ImportOptions = OPTIONS
) -> list[Row | Malformed | Skipped]:
    return list(importer_for(fmt).read(io.BytesIO(data), "test", options))


# ----------------------------------------------------------------------------- agent


def test_agent_sample() -> None:
    assert read("agent", "agent.jsonl") == [
        row("2026-01-01T00:00:00.25Z", "2026-01-01T00:00:09.75Z", "198.18.0.10", "198.18.1.20",
            0, 443, "tcp", 42, 31000, 3, "web-1", "allowed", "shop/web/ingress/0"),
        row("2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "203.0.113.9", "198.18.1.20",
            0, 161, "udp", 2, 156, 1, "web-1", "denied",
            "base/deny-snmp/ingress/1,base/default/ingress/default"),
        Malformed(4, "not JSON: Expecting value: line 1 column 1 (char 0)"),
        Malformed(5, _reason(5)),
        row("2026-01-01T00:00:03Z", None, "2001:db8:0:1::10", "2001:db8:0:2::20",
            0, 0, "icmpv6", 1, 104, 1, "db-1", "would-deny", None),
        Malformed(7, "end is before start"),
        Malformed(8, "not a JSON object"),
        row("2026-01-01T00:00:06Z", "2026-01-01T00:00:07Z", "198.18.0.11", "198.18.1.21",
            0, 0, "proto-47", 5, 700, 1, "db-1", "logged", "db/log-all/ingress/0"),
    ]  # fmt: skip


def _reason(line: int) -> str:
    """The message for the agent sample's line without a verdict (which from_json refuses
    too: checked below)."""
    text = (SAMPLES / "agent.jsonl").read_text().splitlines()[line - 1]
    with pytest.raises(CaptureError):
        FlowRecord.from_json(json.loads(text))
    return "not a flow record: missing 'verdict'"


def test_agent_importer_agrees_with_from_json_on_every_sample_line() -> None:
    """The importer reads lines by from_json's rules without building records: every line
    from_json accepts gives the same fields, every line it refuses is malformed."""
    lines = (SAMPLES / "agent.jsonl").read_bytes().splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        (got,) = list(importer_for("agent").read(io.BytesIO(line), "x", ImportOptions(now=NOW)))
        try:
            data = json.loads(line)
            record = FlowRecord.from_json(data) if isinstance(data, dict) else None
        except (ValueError, CaptureError):
            record = None
        if record is None or record.end < record.start:
            assert isinstance(got, Malformed), (number, got)
            continue
        assert isinstance(got, tuple), (number, got)
        assert got[:4] == (record.start, record.end, str(record.source), str(record.destination))
        assert (got[5], got[7], got[8], got[9], got[10], got[11]) == (
            record.port,
            record.packets,
            record.bytes,
            record.connections,
            record.enforcer,
            record.verdict.value,
        )


# -------------------------------------------------------------------------------- vpc

ENI = "eni-0a1b2c3d4e5f60001"


def test_vpc_default_format() -> None:
    assert read("vpc", "vpc-default.log") == [
        row("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "198.18.0.10", "198.18.1.20",
            49152, 443, "tcp", 10, 8400, 1, ENI, "allowed", None),
        row("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "203.0.113.9", "198.18.0.10",
            55000, 22, "tcp", 1, 60, 1, ENI, "denied", None),
        Skipped(3, "log-status NODATA"),
        row("2026-01-01T00:00:10Z", "2026-01-01T00:00:50Z", "198.18.0.10", "198.18.1.21",
            0, 0, "icmp", 4, 336, 1, ENI, "allowed", None),
        row("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2001:db8::10", "2001:db8:1::20",
            40000, 8080, "tcp", 5, 500, 1, ENI, "allowed", None),
        Malformed(6, "11 fields, expected 14"),
        Malformed(7, "end is before start"),
        Malformed(9, "unknown action 'MAYBE'"),
        Malformed(10, "'198.18.0.300' does not appear to be an IPv4 or IPv6 address"),
        Skipped(11, "log-status SKIPDATA"),
    ]  # fmt: skip


def test_vpc_header_with_v5_fields() -> None:
    instance = "i-0123456789abcdef0"
    assert read("vpc", "vpc-v5.log") == [
        # pkt-srcaddr (the instance behind the NAT gateway) wins over srcaddr
        row("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "198.18.0.10", "203.0.113.80",
            61000, 443, "tcp", 20, 12000, 1, "eni-0nat00000000000001", "allowed", None),
        row("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "198.18.0.10", "198.18.1.20",
            49152, 5432, "tcp", 8, 900, 1, instance, "allowed", None),
        row("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2001:db8::10", "2001:db8::20",
            0, 0, "icmpv6", 2, 208, 1, instance, "denied", None),
        Malformed(5, "port out of range"),
        Skipped(6, "log-status NODATA"),
    ]  # fmt: skip


def test_vpc_custom_fields_option_and_reporter_fallback() -> None:
    options = ImportOptions(
        now=NOW,
        reporter="acct-1",
        fields=("${srcaddr}", "${dstaddr}", "${srcport}", "${dstport}", "${protocol}",
                "${start}", "${end}", "${action}", "${reject-reason}", "${future-field}"),
    )  # fmt: skip
    data = (
        b"198.18.0.1 198.18.0.2 1000 80 6 1767225600 1767225601 REJECT BPA x\n"
        b"198.18.0.1 198.18.0.2 1000 80 17 1767225600 1767225601 ACCEPT - x\n"
    )
    assert read_bytes("vpc", data, options) == [
        row("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "198.18.0.1", "198.18.0.2",
            1000, 80, "tcp", 0, 0, 1, "acct-1", "denied", "BPA"),
        row("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "198.18.0.1", "198.18.0.2",
            1000, 80, "udp", 0, 0, 1, "acct-1", "allowed", None),
    ]  # fmt: skip


def test_vpc_format_without_addresses_is_a_format_error() -> None:
    with pytest.raises(ImportFormatError, match="no dstaddr"):
        read_bytes("vpc", b"version srcaddr start end protocol\n2 198.18.0.1 1 2 6\n")


_V4 = st.builds(lambda n: f"198.18.{n >> 8}.{n & 255}", st.integers(0, 0x1FF))
_V6 = st.builds(lambda n: str(IPv6Address((0x20010DB8 << 96) | n)), st.integers(0, 2**64))
_ADDRESS = st.one_of(_V4, _V6)
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}


@st.composite
def _flows(draw: st.DrawFn, precision: timedelta) -> Row:
    protocol = draw(st.sampled_from(sorted(_PROTOCOLS)))
    ported = protocol in ("tcp", "udp", "sctp")
    ticks = draw(st.integers(0, 10**9)) if precision.seconds else draw(st.integers(0, 10**15))
    start = datetime(2020, 1, 1, tzinfo=UTC) + ticks * precision
    end = start + draw(st.integers(0, 3600)) * precision
    return (
        start,
        end,
        draw(_ADDRESS),
        draw(_ADDRESS),
        draw(st.integers(0, 65535)) if ported else 0,
        draw(st.integers(0, 65535)) if ported else 0,
        protocol,
        draw(st.integers(0, 2**40)),
        draw(st.integers(0, 2**50)),
        1,
        draw(st.sampled_from(["eni-0a1b2c3d4e5f60001", "i-0123456789abcdef0"])),
        draw(st.sampled_from(["allowed", "denied"])),
        None,
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(_flows(timedelta(seconds=1)), max_size=20))
def test_vpc_round_trip(rows: list[Row]) -> None:
    lines = ["version account-id interface-id instance-id srcaddr dstaddr srcport dstport "
             "protocol packets bytes start end action log-status"]  # fmt: skip
    for r in rows:
        start, end, src, dst, sport, dport, proto, packets, octets, _, reporter, verdict, _ = r
        interface, instance = (
            (reporter, "-") if reporter.startswith("eni-") else ("eni-x", reporter)
        )
        action = "ACCEPT" if verdict == "allowed" else "REJECT"
        lines.append(
            f"5 123456789012 {interface} {instance} {src} {dst} {sport} {dport} "
            f"{_PROTOCOLS[proto]} {packets} {octets} {int(start.timestamp())} "
            f"{int(end.timestamp())} {action} OK"
        )
    assert read_bytes("vpc", "\n".join(lines).encode() + b"\n") == rows


# ----------------------------------------------------------------------------- hubble


def test_hubble_sample() -> None:
    assert read("hubble", "hubble.jsonl") == [
        row("2026-01-01T00:00:00.123456Z", None, "198.18.0.10", "198.18.1.20",
            43052, 8080, "tcp", 1, 0, 1, "kind-worker", "allowed", "shop/allow-cart"),
        Skipped(2, "reply"),
        row("2026-01-01T00:00:00.2Z", None, "198.18.0.10", "198.18.1.20",
            43052, 8080, "tcp", 1, 0, 0, "kind-worker", "allowed", None),
        row("2026-01-01T00:00:01.000001Z", None, "198.18.0.60", "198.18.1.5",
            44916, 80, "tcp", 1, 0, 1, "kind-worker2", "denied", "POLICY_DENIED"),
        row("2026-01-01T00:00:02Z", None, "203.0.113.44", "198.18.1.5",
            5000, 161, "udp", 1, 0, 1, "kind-worker2", "denied", "default/deny-snmp,baseline"),
        Skipped(6, "lost_events"),
        # older Hubble: the flow object itself
        row("2026-01-01T00:00:04.5Z", None, "198.18.0.10", "198.18.2.53",
            53111, 53, "udp", 1, 0, 1, "kind-worker", "allowed", None),
        row("2026-01-01T00:00:05.999999Z", None, "2001:db8:0:1::10", "2001:db8:0:2::20",
            0, 0, "icmpv6", 1, 0, 1, "kind-worker3", "would-deny", None),
        Skipped(9, "node_status"),
        Malformed(10, "not JSON: Expecting value: line 1 column 10 (char 9)"),
        Skipped(11, "no IP"),
        Malformed(12, "bad time 'yesterday'"),
        row("2026-01-01T00:00:08Z", None, "198.18.0.10", "198.18.1.20",
            0, 0, "icmp", 1, 0, 1, "kind-worker", "allowed", None),
    ]  # fmt: skip


# -------------------------------------------------------------------------- conntrack


def test_conntrack_events() -> None:
    options = ImportOptions(now=NOW, reporter="node-7")
    assert read("conntrack", "conntrack-events.log", options) == [
        row("2026-01-01T00:00:00.123456Z", None, "198.18.0.1", "198.18.0.2",
            40488, 8080, "tcp", 0, 0, 1, "node-7", "allowed", None),
        Skipped(2, "UPDATE event"),
        # its NEW was in this file: the counters, not a second connection
        row("2026-01-01T00:00:05.5Z", None, "198.18.0.1", "198.18.0.2",
            40488, 8080, "tcp", 10, 4820, 0, "node-7", "allowed", None),
        # no NEW seen: the connection counts here
        row("2026-01-01T00:00:06Z", None, "198.18.0.3", "203.0.113.53",
            5353, 53, "udp", 2, 190, 1, "node-7", "allowed", None),
        # no timestamp: stamped with options.now
        row(NOW.isoformat(), None, "2001:db8::1", "2001:db8::2",
            0, 0, "icmpv6", 0, 0, 1, "node-7", "allowed", None),
        Malformed(6, _conntrack_reason(6)),
        Malformed(8, _conntrack_reason(8)),
        Skipped(9, "conntrack message"),
    ]  # fmt: skip


def _conntrack_reason(line: int) -> str:
    text = (SAMPLES / "conntrack-events.log").read_text().splitlines()[line - 1]
    if line == 6:
        return (f"unexpected conntrack output {text.strip()!r}: "
                "'198.18.0.999' does not appear to be an IPv4 or IPv6 address")  # fmt: skip
    return f"not a timestamped conntrack event: {text.strip()!r}"


def test_conntrack_listing() -> None:
    assert read("conntrack", "conntrack-list.log") == [
        row(NOW.isoformat(), None, "198.18.0.1", "198.18.0.2",
            40488, 8080, "tcp", 7, 8380, 1, "conntrack", "allowed", None),
        row(NOW.isoformat(), None, "198.18.0.5", "198.18.0.53",
            41000, 53, "udp", 0, 0, 1, "conntrack", "allowed", None),
        row(NOW.isoformat(), None, "198.18.0.5", "198.18.0.6",
            0, 0, "icmp", 0, 0, 1, "conntrack", "allowed", None),
        Malformed(4, "unexpected conntrack output 'ipv4     2 tcp': list index out of range"),
        Skipped(5, "conntrack message"),
    ]  # fmt: skip


# -------------------------------------------------------------------------------- csv

CSV_COLUMNS = {
    "start": "ts_start", "end": "ts_end", "source": "src", "destination": "dst",
    "source_port": "sport", "port": "dport", "protocol": "proto", "packets": "pkts",
    "bytes": "octets", "verdict": "action", "reporter": "node", "rule": "policy",
}  # fmt: skip


def test_csv_sample_with_mapping() -> None:
    options = ImportOptions(now=NOW, columns=CSV_COLUMNS)
    assert read("csv", "flows.csv", options) == [
        row("2026-01-01T00:00:00Z", "2026-01-01T00:00:05.5Z", "198.18.0.10", "198.18.1.20",
            40000, 443, "tcp", 10, 5000, 1, "fw-1", "allowed", "web-in"),
        row("2026-01-01T00:00:00Z", None, "198.18.0.10", "203.0.113.7",
            5353, 53, "udp", 1, 70, 1, "fw-1", "denied", None),
        row("2026-01-01T00:00:00.123Z", "2026-01-01T00:00:01Z", "2001:db8::10", "2001:db8::20",
            0, 0, "icmpv6", 2, 208, 1, "fw-2", "unknown", None),
        row("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "198.18.0.11", "198.18.1.20",
            40001, 443, "tcp", 3, 180, 1, "csv", "denied", "base/deny, with comma"),
        Malformed(6, "Invalid isoformat string: 'not-a-time'"),
        Malformed(7, "end is before start"),
        Malformed(9, "4 columns, the header has 12"),
        Malformed(10, "unknown verdict 'maybe'"),
        Malformed(11, "port 70000 out of range"),
        row("2025-12-31T22:00:00Z", None, "198.18.0.15", "198.18.1.20",
            0, 0, "icmp", 1, 84, 1, "fw-1", "would-deny", None),
    ]  # fmt: skip


def test_csv_defaults_time_column_and_time_format() -> None:
    data = b"time,source,destination\n01/01/2026 00:00:07,198.18.0.1,2001:DB8::1\n"
    options = ImportOptions(now=NOW, reporter="lab", time_format="%m/%d/%Y %H:%M:%S")
    assert read_bytes("csv", data, options) == [
        row("2026-01-01T00:00:07Z", None, "198.18.0.1", "2001:db8::1",
            0, 0, "tcp", 0, 0, 1, "lab", "unknown", None),
    ]  # fmt: skip


def test_csv_mapping_naming_a_missing_column_is_a_format_error() -> None:
    options = ImportOptions(now=NOW, columns={"source": "client"})
    with pytest.raises(ImportFormatError, match="no column 'client'") as raised:
        read_bytes("csv", b"source,destination,start\n", options)
    assert raised.value.line == 1


def _csv_cell(value: object) -> str:
    return "" if value is None else str(value)


@settings(max_examples=40, deadline=None)
@given(st.lists(_flows(timedelta(microseconds=1)), max_size=20), st.booleans())
def test_csv_round_trip(rows: list[Row], epoch: bool) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(RAW_FIELDS)
    for r in rows:
        cells = [_csv_cell(v) for v in r]
        if epoch:  # epoch seconds with microseconds
            cells[0] = _epoch_text(r[0])
            cells[1] = _epoch_text(r[1])
        else:
            cells[0], cells[1] = r[0].isoformat(), r[1].isoformat()
        writer.writerow(cells)
    assert read_bytes("csv", out.getvalue().encode()) == rows


def _epoch_text(at: datetime) -> str:
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return f"{delta.days * 86400 + delta.seconds}.{delta.microseconds:06d}"


# ---------------------------------------------------------------------------- netflow


def test_netflow_samples_regenerate_identically() -> None:
    for name, content in netflow_packets.samples().items():
        assert (SAMPLES / name).read_bytes() == content, name


def test_netflow_pcap() -> None:
    assert read("netflow", "netflow.pcap") == [
        # v5: export 00:00:00.25 at uptime 3600 s
        row("2025-12-31T23:59:50.25Z", "2025-12-31T23:59:55.75Z", "198.18.1.10", "198.18.2.20",
            40000, 443, "tcp", 12, 4800, 1, "198.18.0.1", "unknown", None),
        row("2025-12-31T23:59:59.25Z", None, "198.18.1.10", "203.0.113.5",
            5353, 53, "udp", 1, 80, 1, "198.18.0.1", "unknown", None),
        row("2025-12-31T23:59:57.25Z", "2025-12-31T23:59:59.25Z", "198.18.1.11", "198.18.2.20",
            0, 0, "icmp", 3, 252, 1, "198.18.0.1", "unknown", None),
        Malformed(2, "no template yet for template 256 (exporter 198.18.0.2, source id 7)"),
        # v9: export 00:01:00 at uptime 7200 s
        row("2026-01-01T00:00:10Z", "2026-01-01T00:00:59Z", "198.18.1.12", "198.18.2.21",
            51000, 5432, "tcp", 20, 9000, 1, "198.18.0.2", "unknown", None),
        row("2026-01-01T00:00:50Z", None, "198.18.1.13", "198.18.2.22",
            0, 0, "proto-47", 10, 1500, 1, "198.18.0.2", "unknown", None),
        row("2025-12-31T23:59:20Z", "2026-01-01T00:00:40Z", "2001:db8:1::10", "2001:db8:2::20",
            50022, 22, "tcp", 40, 6400, 1, "198.18.0.2", "unknown", None),
        row("2026-01-01T00:00:40Z", None, "2001:db8:1::10", "2001:db8:2::20",
            0, 0, "icmpv6", 1, 104, 1, "198.18.0.2", "unknown", None),
        Malformed(4, "no template yet for template 256 (exporter 198.18.0.3, source id 7)"),
        # IPFIX: flowStart/EndMilliseconds
        row("2026-01-01T00:01:40.123Z", "2026-01-01T00:01:55.123Z", "198.18.3.1", "203.0.113.80",
            33000, 80, "tcp", 700, 1_000_000, 1, "198.18.0.4", "unknown", None),
        row("2026-01-01T00:01:40.123Z", None, "198.18.3.1", "198.18.3.2",
            0, 0, "icmp", 1, 84, 1, "198.18.0.4", "unknown", None),
        Skipped(6, "not an IP packet"),
        Skipped(7, "not a UDP packet"),
        Skipped(8, "UDP payload is not NetFlow v5/v9/IPFIX (version 1234)"),
        Malformed(9, "NetFlow v5 packet truncated (2 records announced)"),
        Malformed(10, "no template yet for template 300 (exporter 198.18.0.4, "
                      "observation domain 2)"),
    ]  # fmt: skip


def test_netflow_pcapng_ipv6_exporter() -> None:
    assert read("netflow", "netflow-ipv6.pcapng") == [
        row("2026-01-01T00:04:00Z", "2026-01-01T00:04:50Z", "2001:db8:10::1", "2001:db8:20::2",
            40100, 8443, "tcp", 60, 52000, 1, "2001:db8::53", "unknown", None),
        row("2026-01-01T00:04:10Z", None, "2001:db8:10::1", "2001:db8:20::2",
            0, 0, "icmpv6", 1, 104, 1, "2001:db8::53", "unknown", None),
        Malformed(1, "record's flow end is before its start"),
    ]  # fmt: skip


def test_netflow_bad_magic_is_a_format_error() -> None:
    with pytest.raises(ImportFormatError, match="not a pcap or pcapng capture"):
        read_bytes("netflow", b"version account-id\n")


def test_netflow_truncated_capture() -> None:
    data = (SAMPLES / "netflow.pcap").read_bytes()
    assert read_bytes("netflow", data[:-10])[-1] == Malformed(
        10, "IPFIX message truncated (55 of 65 bytes)"
    )
