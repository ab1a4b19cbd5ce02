"""``--format netflow``: NetFlow v5, v9 and IPFIX export packets in a pcap or pcapng capture.

::

    capture (pcap / pcapng, by magic) ─► link layer (Ethernet, Linux cooked v1/v2, raw IP,
        BSD loopback) ─► IPv4/IPv6 ─► UDP payload ─► netflow library (v5, v9, IPFIX)
        ─► one Row per flow record

The export packets are decoded by the PyPI ``netflow`` library; its version classes are
called directly (``netflow.parse_packet`` first tries to read its bytes argument as a hex
dump, which misreads a binary packet that happens to be valid UTF-8). Templates (v9 and
IPFIX) are kept per (exporter address, version, source id / observation domain) for the
whole file; a data set whose template has not been seen yet makes its packet Malformed
("no template yet ..."), as does anything else the library cannot decode. The unit of
``Malformed``/``Skipped`` is the packet number (1-based); packets that are not UDP, or whose
payload is no NetFlow v5/v9/IPFIX, are skipped, as are flow records without addresses. IP
fragments are not reassembled (Malformed).

Times: v5 and v9 records' ``FIRST``/``LAST_SWITCHED`` are milliseconds of the exporter's
uptime, made absolute with the header's ``unix_secs`` (and v5's ``unix_nsecs``) and
``sys_uptime`` (modulo 2³², so a wrapped uptime still works). IPFIX: ``flowStart/End``
``Milliseconds`` or ``Seconds``, else ``flowStart/EndSysUpTime`` with
``systemInitTimeMilliseconds`` in the same record, else ``flowStart/EndDeltaMicroseconds``,
else the export time. The reporter is the exporter's address, the verdict unknown,
``connections`` 1 per record (NetFlow does not say more), ports 0 for protocols without.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, BinaryIO

import dpkt
from netflow.ipfix import (
    IPFIXExportPacket,
    IPFIXTemplateNotRecognized,
)
from netflow.v5 import V5ExportPacket
from netflow.v9 import V9ExportPacket, V9TemplateNotRecognized

from septum.flows.importers import ImportFormatError, ImportOptions
from septum.flows.records import Malformed, Row, Skipped, protocol_text

__all__ = ["IMPORTER", "NetflowImporter"]

_PCAP_MAGICS = frozenset(
    {
        b"\xd4\xc3\xb2\xa1",  # microseconds, little-endian
        b"\xa1\xb2\xc3\xd4",  # microseconds, big-endian
        b"\x4d\x3c\xb2\xa1",  # nanoseconds, little-endian
        b"\xa1\xb2\x3c\x4d",  # nanoseconds, big-endian
    }
)
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_ETHERNET, _NULL, _LOOP, _SLL, _SLL2 = 1, 0, 108, 113, 276
_RAW = frozenset({12, 14, 101, 228, 229})  # raw IP (12/14 on some BSDs), IPv4 only, IPv6 only
_PORTED = frozenset({6, 17, 33, 132, 136})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WRAP = 1 << 32
_CACHE_LIMIT = 100_000

TemplateKey = tuple[str, int, int]  # exporter address, version, source id / domain


class _Prefixed:
    """A stream with its first bytes (already read to check the magic) put back."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest
        self.name = getattr(rest, "name", "<stream>")

    def read(self, size: int = -1) -> bytes:
        head, self._head = self._head, b""
        if size < 0:
            return head + self._rest.read()
        if len(head) >= size:
            self._head = head[size:]
            return head[:size]
        return head + self._rest.read(size - len(head))


def _open_capture(stream: BinaryIO, origin: str) -> Any:
    magic = stream.read(4)
    try:
        if magic in _PCAP_MAGICS:
            return dpkt.pcap.Reader(_Prefixed(magic, stream))
        if magic == _PCAPNG_MAGIC:
            return dpkt.pcapng.Reader(_Prefixed(magic, stream))
    except (dpkt.Error, ValueError, struct.error) as e:
        raise ImportFormatError(origin, 0, f"unreadable capture header: {e}") from e
    raise ImportFormatError(origin, 0, f"not a pcap or pcapng capture (magic {magic.hex()})")


def _ip_layer(linktype: int, frame: bytes) -> Any:
    """The dpkt IP/IP6 object of one captured frame, or None when it carries no IP."""
    if linktype == _ETHERNET:
        packet = dpkt.ethernet.Ethernet(frame).data
    elif linktype == _SLL:
        packet = dpkt.sll.SLL(frame).data
    elif linktype == _SLL2:
        packet = dpkt.sll2.SLL2(frame).data
    else:
        payload = frame[4:] if linktype in (_NULL, _LOOP) else frame
        version = payload[0] >> 4 if payload else 0
        if version == 4:
            packet = dpkt.ip.IP(payload)
        elif version == 6:
            packet = dpkt.ip6.IP6(payload)
        else:
            return None
    return packet if isinstance(packet, dpkt.ip.IP | dpkt.ip6.IP6) else None


def _missing_templates(payload: bytes, offset: int, known: Mapping[int, object]) -> list[int]:
    """Template ids that data sets of a v9/IPFIX packet use but ``known`` lacks."""
    missing: list[int] = []
    while offset + 4 <= len(payload):
        set_id, length = struct.unpack_from("!HH", payload, offset)
        if set_id >= 256 and set_id not in known and set_id not in missing:
            missing.append(set_id)
        if length < 4:
            break
        offset += length
    return missing


class _Decoder:
    """Per-file state: templates per exporter and source, and small caches."""

    def __init__(self) -> None:
        self.templates: dict[TemplateKey, dict[Any, Any]] = {}
        self._addresses: dict[object, str] = {}
        self._protocols: dict[int, tuple[str, bool]] = {}

    def address(self, value: object, v6: bool) -> str:
        found = self._addresses.get(value)
        if found is None:
            if len(self._addresses) > _CACHE_LIMIT:
                self._addresses.clear()
            if isinstance(value, int):
                found = str(IPv6Address(value) if v6 else IPv4Address(value))
            else:
                found = str(ip_address(str(value)))
            self._addresses[value] = found
        return found

    def row(
        self,
        exporter: str,
        source: str,
        destination: str,
        protocol_number: int,
        ports: tuple[int, int],
        counts: tuple[int, int],
        start: datetime,
        end: datetime,
    ) -> Row:
        known = self._protocols.get(protocol_number)
        if known is None:
            known = self._protocols[protocol_number] = (
                protocol_text(protocol_number),
                protocol_number in _PORTED,
            )
        protocol, ported = known
        sport, dport = ports if ported else (0, 0)
        packets, octets = counts
        return (
            start,
            end,
            source,
            destination,
            sport,
            dport,
            protocol,
            packets,
            octets,
            1,
            exporter,
            "unknown",
            None,
        )

    def decode(
        self, number: int, exporter: str, payload: bytes
    ) -> Iterator[Row | Malformed | Skipped]:
        if len(payload) < 4:
            yield Skipped(number, "UDP payload too short for NetFlow")
            return
        version = struct.unpack_from("!H", payload)[0]
        if version == 5:
            yield from self._v5(number, exporter, payload)
        elif version == 9:
            yield from self._v9(number, exporter, payload)
        elif version == 10:
            yield from self._ipfix(number, exporter, payload)
        else:
            yield Skipped(number, f"UDP payload is not NetFlow v5/v9/IPFIX (version {version})")

    def _v5(self, number: int, exporter: str, payload: bytes) -> Iterator[Row | Malformed]:
        if len(payload) < 24:
            yield Malformed(number, "NetFlow v5 header truncated")
            return
        count = struct.unpack_from("!H", payload, 2)[0]
        if len(payload) < 24 + 48 * count:
            yield Malformed(number, f"NetFlow v5 packet truncated ({count} records announced)")
            return
        packet = V5ExportPacket(payload)
        header = packet.header
        exported = _EPOCH + timedelta(
            seconds=int(header.timestamp), microseconds=int(header.timestamp_nano) // 1000
        )
        uptime = int(header.uptime)
        for flow in packet.flows:
            d = flow.data
            start = exported - timedelta(milliseconds=(uptime - d["FIRST_SWITCHED"]) % _WRAP)
            end = exported - timedelta(milliseconds=(uptime - d["LAST_SWITCHED"]) % _WRAP)
            if end < start:
                yield Malformed(number, "record's last switched is before its first")
                continue
            yield self.row(
                exporter,
                self.address(d["IPV4_SRC_ADDR"], False),
                self.address(d["IPV4_DST_ADDR"], False),
                d["PROTO"],
                (d["SRC_PORT"], d["DST_PORT"]),
                (d["IN_PACKETS"], d["IN_OCTETS"]),
                start,
                end,
            )

    def _v9(
        self, number: int, exporter: str, payload: bytes
    ) -> Iterator[Row | Malformed | Skipped]:
        if len(payload) < 20:
            yield Malformed(number, "NetFlow v9 header truncated")
            return
        source_id = struct.unpack_from("!I", payload, 16)[0]
        templates = self.templates.setdefault((exporter, 9, source_id), {})
        try:
            packet = V9ExportPacket(payload, templates)
        except V9TemplateNotRecognized:
            ids = _missing_templates(payload, 20, templates)
            yield Malformed(
                number,
                f"no template yet for template {', '.join(map(str, ids))} "
                f"(exporter {exporter}, source id {source_id})",
            )
            return
        exported = _EPOCH + timedelta(seconds=int(packet.header.timestamp))
        uptime = int(packet.header.uptime)
        for flow in packet.flows:
            d: dict[str, Any] = flow.data
            if "IPV4_SRC_ADDR" in d and "IPV4_DST_ADDR" in d:
                source, destination = d["IPV4_SRC_ADDR"], d["IPV4_DST_ADDR"]
            elif "IPV6_SRC_ADDR" in d and "IPV6_DST_ADDR" in d:
                source, destination = d["IPV6_SRC_ADDR"], d["IPV6_DST_ADDR"]
            else:
                yield Skipped(number, "flow record without IP addresses")
                continue
            if "PROTOCOL" not in d:
                yield Malformed(number, "flow record without protocol")
                continue
            first, last = d.get("FIRST_SWITCHED"), d.get("LAST_SWITCHED")
            start = (
                exported - timedelta(milliseconds=(uptime - first) % _WRAP)
                if first is not None
                else exported
            )
            end = (
                exported - timedelta(milliseconds=(uptime - last) % _WRAP)
                if last is not None
                else exported
            )
            if end < start:
                yield Malformed(number, "record's last switched is before its first")
                continue
            yield self.row(
                exporter,
                self.address(source, False),
                self.address(destination, False),
                int(d["PROTOCOL"]),
                (int(d.get("L4_SRC_PORT", 0)), int(d.get("L4_DST_PORT", 0))),
                (int(d.get("IN_PKTS", 0)), int(d.get("IN_BYTES", 0))),
                start,
                end,
            )

    def _ipfix(
        self, number: int, exporter: str, payload: bytes
    ) -> Iterator[Row | Malformed | Skipped]:
        if len(payload) < 16:
            yield Malformed(number, "IPFIX header truncated")
            return
        length, export_time, _, domain = struct.unpack_from("!HIII", payload, 2)
        if length > len(payload):
            yield Malformed(number, f"IPFIX message truncated ({len(payload)} of {length} bytes)")
            return
        templates = self.templates.setdefault((exporter, 10, domain), {})
        try:
            packet = IPFIXExportPacket(payload[:length], templates)
        except IPFIXTemplateNotRecognized:
            ids = _missing_templates(payload[:length], 16, templates)
            yield Malformed(
                number,
                f"no template yet for template {', '.join(map(str, ids))} "
                f"(exporter {exporter}, observation domain {domain})",
            )
            return
        exported = _EPOCH + timedelta(seconds=export_time)
        for flow in packet.flows:
            d: dict[str, Any] = flow.data
            if "sourceIPv4Address" in d and "destinationIPv4Address" in d:
                source = self.address(d["sourceIPv4Address"], False)
                destination = self.address(d["destinationIPv4Address"], False)
            elif "sourceIPv6Address" in d and "destinationIPv6Address" in d:
                source = self.address(d["sourceIPv6Address"], True)
                destination = self.address(d["destinationIPv6Address"], True)
            else:
                yield Skipped(number, "flow record without IP addresses")
                continue
            if "protocolIdentifier" not in d:
                yield Malformed(number, "flow record without protocol")
                continue
            start = _ipfix_time(d, "Start", exported)
            end = _ipfix_time(d, "End", exported)
            if end < start:
                yield Malformed(number, "record's flow end is before its start")
                continue
            packets = d.get("packetDeltaCount", d.get("packetTotalCount", 0))
            octets = d.get("octetDeltaCount", d.get("octetTotalCount", 0))
            yield self.row(
                exporter,
                source,
                destination,
                int(d["protocolIdentifier"]),
                (int(d.get("sourceTransportPort", 0)), int(d.get("destinationTransportPort", 0))),
                (int(packets), int(octets)),
                start,
                end,
            )


def _ipfix_time(d: Mapping[str, Any], which: str, exported: datetime) -> datetime:
    """A flow's start or end (``which``) from the best time field the record has."""
    value = d.get(f"flow{which}Milliseconds")
    if value is not None:
        return _EPOCH + timedelta(milliseconds=int(value))
    value = d.get(f"flow{which}Seconds")
    if value is not None:
        return _EPOCH + timedelta(seconds=int(value))
    value, init = d.get(f"flow{which}SysUpTime"), d.get("systemInitTimeMilliseconds")
    if value is not None and init is not None:
        return _EPOCH + timedelta(milliseconds=int(init) + int(value))
    value = d.get(f"flow{which}DeltaMicroseconds")
    if value is not None:
        return exported - timedelta(microseconds=int(value))
    return exported


class NetflowImporter:
    """Reads NetFlow v5/v9/IPFIX export packets from a capture (see the module docstring)."""

    name = "netflow"

    def read(
        self, stream: BinaryIO, origin: str, options: ImportOptions
    ) -> Iterator[Row | Malformed | Skipped]:
        capture = _open_capture(stream, origin)
        linktype = int(capture.datalink())
        if linktype not in (_ETHERNET, _NULL, _LOOP, _SLL, _SLL2) and linktype not in _RAW:
            raise ImportFormatError(origin, 0, f"link type {linktype} is not supported")
        decoder = _Decoder()
        frames = iter(capture)
        number = 0
        while True:
            try:
                _, frame = next(frames)
            except StopIteration:
                return
            except (dpkt.Error, ValueError, struct.error) as e:
                yield Malformed(number + 1, f"capture truncated or corrupt: {e!r}")
                return
            number += 1
            try:
                ip = _ip_layer(linktype, frame)
            except (dpkt.Error, ValueError, struct.error, IndexError) as e:
                yield Malformed(number, f"cannot decode the frame: {e!r}")
                continue
            if ip is None:
                yield Skipped(number, "not an IP packet")
                continue
            if isinstance(ip, dpkt.ip.IP) and (ip.mf or ip.offset):
                yield Malformed(number, "IP fragment (fragments are not reassembled)")
                continue
            udp = ip.data
            if not isinstance(udp, dpkt.udp.UDP):
                yield Skipped(number, "not a UDP packet")
                continue
            exporter = str(ip_address(bytes(ip.src)))
            try:
                # materialized so that a library failure halfway cannot leave half a packet
                results = list(decoder.decode(number, exporter, bytes(udp.data)))
            except Exception as e:  # the netflow library raises many types on bad input
                yield Malformed(number, f"cannot decode the export packet: {e!r}")
                continue
            yield from results


IMPORTER = NetflowImporter()
