"""NetFlow v5 / v9 / IPFIX export packets built byte by byte, and the sample captures.

The packets follow the Cisco v5 layout, RFC 3954 (v9) and RFC 7011 (IPFIX) with ``struct``;
only the capture wrapping (pcap, pcapng, Ethernet/IP/UDP headers) uses dpkt. Regenerate the
committed samples with ``python -m tests.flows.netflow_packets``; a test checks that doing
so gives identical bytes.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

import dpkt

SAMPLES = Path(__file__).parent / "samples"
#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600

# --------------------------------------------------------------------------- NetFlow v5


def v5_record(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    proto: int,
    packets: int,
    octets: int,
    first: int,
    last: int,
) -> bytes:
    """One 48-byte v5 flow record (next hop 0, interfaces 1 → 2, no AS numbers)."""
    return struct.pack(
        "!4s4s4sHHIIIIHHxBBBHHBBxx",
        ip_address(src).packed,
        ip_address(dst).packed,
        b"\0\0\0\0",
        1,
        2,
        packets,
        octets,
        first,
        last,
        sport,
        dport,
        0x1B if proto == 6 else 0,  # tcp flags: FIN SYN PSH ACK
        proto,
        0,
        0,
        0,
        24,
        24,
    )


def v5_packet(
    uptime: int, secs: int, nsecs: int, records: Sequence[bytes], count: int | None = None
) -> bytes:
    header = struct.pack(
        "!HHIIIIBBH", 5, len(records) if count is None else count, uptime, secs, nsecs, 1, 0, 0, 0
    )
    return header + b"".join(records)


# ------------------------------------------------------------------------ NetFlow v9

V9_IPV4 = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4), (21, 4))
V9_IPV6 = ((27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4), (21, 4))


def _padded(set_id: int, body: bytes) -> bytes:
    padding = -(4 + len(body)) % 4
    return struct.pack("!HH", set_id, 4 + len(body) + padding) + body + b"\0" * padding


def v9_template_flowset(templates: Sequence[tuple[int, Sequence[tuple[int, int]]]]) -> bytes:
    body = b""
    for template_id, fields in templates:
        body += struct.pack("!HH", template_id, len(fields))
        body += b"".join(struct.pack("!HH", t, n) for t, n in fields)
    return _padded(0, body)


def v9_record(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    proto: int,
    octets: int,
    packets: int,
    first: int,
    last: int,
) -> bytes:
    """A record of template ``V9_IPV4`` or ``V9_IPV6`` (by the address family)."""
    return (
        ip_address(src).packed
        + ip_address(dst).packed
        + struct.pack("!HHBIIII", sport, dport, proto, octets, packets, first, last)
    )


def v9_data_flowset(template_id: int, records: Sequence[bytes]) -> bytes:
    return _padded(template_id, b"".join(records))


def v9_packet(
    uptime: int, secs: int, source_id: int, flowsets: Sequence[bytes], count: int
) -> bytes:
    return struct.pack("!HHIIII", 9, count, uptime, secs, 1, source_id) + b"".join(flowsets)


# ----------------------------------------------------------------------------- IPFIX

IPFIX_IPV4 = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8))
IPFIX_IPV6 = ((27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (150, 4), (151, 4))


def ipfix_template_set(templates: Sequence[tuple[int, Sequence[tuple[int, int]]]]) -> bytes:
    body = b""
    for template_id, fields in templates:
        body += struct.pack("!HH", template_id, len(fields))
        body += b"".join(struct.pack("!HH", t, n) for t, n in fields)
    return struct.pack("!HH", 2, 4 + len(body)) + body


def ipfix_record_v4(
    src: str, dst: str, sport: int, dport: int, proto: int, octets: int, packets: int,
    start_ms: int, end_ms: int,
) -> bytes:  # fmt: skip
    return (
        ip_address(src).packed
        + ip_address(dst).packed
        + struct.pack("!HHBQQQQ", sport, dport, proto, octets, packets, start_ms, end_ms)
    )


def ipfix_record_v6(
    src: str, dst: str, sport: int, dport: int, proto: int, octets: int, packets: int,
    start: int, end: int,
) -> bytes:  # fmt: skip
    return (
        ip_address(src).packed
        + ip_address(dst).packed
        + struct.pack("!HHBQQII", sport, dport, proto, octets, packets, start, end)
    )


def ipfix_data_set(template_id: int, records: Sequence[bytes]) -> bytes:
    body = b"".join(records)
    return struct.pack("!HH", template_id, 4 + len(body)) + body


def ipfix_message(export_time: int, domain: int, sets: Sequence[bytes]) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_time, 1, domain) + body


# ---------------------------------------------------------------------------- capture

COLLECTOR4 = "198.18.0.250"
COLLECTOR6 = "2001:db8::250"


def udp_ip(exporter: str, payload: bytes, *, dport: int = 2055) -> dpkt.Packet:
    """An IPv4 or IPv6 UDP datagram from ``exporter`` to the collector."""
    udp = dpkt.udp.UDP(sport=40000, dport=dport, data=payload)
    udp.ulen = len(udp)
    if ip_address(exporter).version == 4:
        ip = dpkt.ip.IP(
            src=ip_address(exporter).packed,
            dst=ip_address(COLLECTOR4).packed,
            p=dpkt.ip.IP_PROTO_UDP,
            ttl=64,
            data=udp,
        )
        ip.len = len(ip)
        return ip
    ip6 = dpkt.ip6.IP6(
        src=ip_address(exporter).packed,
        dst=ip_address(COLLECTOR6).packed,
        nxt=dpkt.ip.IP_PROTO_UDP,
        hlim=64,
        data=udp,
    )
    ip6.plen = len(udp)
    return ip6


def ethernet(ip: dpkt.Packet) -> bytes:
    kind = dpkt.ethernet.ETH_TYPE_IP if isinstance(ip, dpkt.ip.IP) else dpkt.ethernet.ETH_TYPE_IP6
    frame = dpkt.ethernet.Ethernet(
        src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\xfa", type=kind, data=ip
    )
    return bytes(frame)


def main_capture_packets() -> list[bytes]:
    """The frames of ``samples/netflow.pcap`` (Ethernet), numbered from 1 in comments."""
    v5 = v5_packet(
        3_600_000,
        T0,
        250_000_000,  # export time 00:00:00.25
        [
            v5_record("198.18.1.10", "198.18.2.20", 40000, 443, 6, 12, 4800, 3_590_000, 3_595_500),
            v5_record("198.18.1.10", "203.0.113.5", 5353, 53, 17, 1, 80, 3_599_000, 3_599_000),
            v5_record("198.18.1.11", "198.18.2.20", 0, 0x0800, 1, 3, 252, 3_597_000, 3_599_000),
        ],
    )
    template_v4 = (256, V9_IPV4)
    template_v6 = (257, V9_IPV6)
    v9_early = v9_packet(
        7_200_000,
        T0 + 60,
        7,
        [v9_data_flowset(256, [v9_record("198.18.1.12", "198.18.2.21", 1, 2, 6, 1, 1, 1, 1)])],
        count=1,
    )
    v9 = v9_packet(
        7_200_000,
        T0 + 60,
        7,
        [
            v9_template_flowset([template_v4, template_v6]),
            v9_data_flowset(
                256,
                [
                    v9_record(
                        "198.18.1.12", "198.18.2.21", 51000, 5432, 6, 9000, 20, 7_150_000, 7_199_000
                    ),
                    v9_record(
                        "198.18.1.13", "198.18.2.22", 0, 0, 47, 1500, 10, 7_190_000, 7_190_000
                    ),
                ],
            ),
            v9_data_flowset(
                257,
                [
                    v9_record(
                        "2001:db8:1::10",
                        "2001:db8:2::20",
                        50022,
                        22,
                        6,
                        6400,
                        40,
                        7_100_000,
                        7_180_000,
                    ),
                    v9_record(
                        "2001:db8:1::10",
                        "2001:db8:2::20",
                        0,
                        0x8000,
                        58,
                        104,
                        1,
                        7_180_000,
                        7_180_000,
                    ),
                ],
            ),
        ],
        count=6,
    )
    v9_other_exporter = v9_packet(
        7_200_000,
        T0 + 60,
        7,
        [v9_data_flowset(256, [v9_record("198.18.1.14", "198.18.2.21", 1, 2, 6, 1, 1, 1, 1)])],
        count=1,
    )
    start_ms = (T0 + 100) * 1000 + 123
    ipfix = ipfix_message(
        T0 + 120,
        1,
        [
            ipfix_template_set([(300, IPFIX_IPV4)]),
            ipfix_data_set(
                300,
                [
                    ipfix_record_v4(
                        "198.18.3.1",
                        "203.0.113.80",
                        33000,
                        80,
                        6,
                        1_000_000,
                        700,
                        start_ms,
                        start_ms + 15_000,
                    ),
                    ipfix_record_v4(
                        "198.18.3.1",
                        "198.18.3.2",
                        0,
                        0,
                        1,
                        84,
                        1,
                        start_ms,
                        start_ms,
                    ),
                ],
            ),
        ],
    )
    ipfix_other_domain = ipfix_message(
        T0 + 120,
        2,
        [ipfix_data_set(300, [ipfix_record_v4("198.18.3.1", "198.18.3.3", 1, 2, 6, 1, 1, 0, 0)])],
    )
    arp = bytes(
        dpkt.ethernet.Ethernet(
            src=b"\x02\0\0\0\0\x01",
            dst=b"\xff" * 6,
            type=dpkt.ethernet.ETH_TYPE_ARP,
            data=dpkt.arp.ARP(),
        )
    )
    tcp = dpkt.ip.IP(
        src=ip_address("198.18.0.1").packed,
        dst=ip_address(COLLECTOR4).packed,
        p=dpkt.ip.IP_PROTO_TCP,
        data=dpkt.tcp.TCP(sport=40001, dport=22, flags=dpkt.tcp.TH_SYN),
    )
    tcp.len = len(tcp)
    truncated_v5 = v5_packet(
        3_600_000,
        T0,
        0,
        [v5_record("198.18.1.10", "198.18.2.20", 40002, 443, 6, 1, 60, 3_599_000, 3_599_000)],
        count=2,
    )
    return [
        ethernet(udp_ip("198.18.0.1", v5)),  # 1: v5, three records (tcp, udp, icmp)
        ethernet(udp_ip("198.18.0.2", v9_early)),  # 2: v9 data before its template
        ethernet(udp_ip("198.18.0.2", v9)),  # 3: v9 templates + IPv4 and IPv6 data
        ethernet(udp_ip("198.18.0.3", v9_other_exporter)),  # 4: another exporter: no template
        ethernet(udp_ip("198.18.0.4", ipfix)),  # 5: IPFIX template + two records
        arp,  # 6: not IP
        ethernet(tcp),  # 7: not UDP
        ethernet(udp_ip("198.18.0.1", b"\x04\xd2garbage", dport=514)),  # 8: not NetFlow
        ethernet(udp_ip("198.18.0.1", truncated_v5)),  # 9: v5 announcing 2 records, with 1
        ethernet(udp_ip("198.18.0.4", ipfix_other_domain)),  # 10: other domain: no template
    ]


def ipv6_capture_packets() -> list[bytes]:
    """The packets of ``samples/netflow-ipv6.pcapng`` (raw IP): IPFIX from an IPv6 exporter."""
    message = ipfix_message(
        T0 + 300,
        5,
        [
            ipfix_template_set([(400, IPFIX_IPV6)]),
            ipfix_data_set(
                400,
                [
                    ipfix_record_v6(
                        "2001:db8:10::1",
                        "2001:db8:20::2",
                        40100,
                        8443,
                        6,
                        52_000,
                        60,
                        T0 + 240,
                        T0 + 290,
                    ),
                    ipfix_record_v6(
                        "2001:db8:10::1",
                        "2001:db8:20::2",
                        0,
                        0x8000,
                        58,
                        104,
                        1,
                        T0 + 250,
                        T0 + 250,
                    ),
                    ipfix_record_v6(
                        "2001:db8:10::1",
                        "2001:db8:20::53",
                        53000,
                        53,
                        17,
                        90,
                        1,
                        T0 + 280,
                        T0 + 260,
                    ),  # fmt: skip  (ends before it starts: malformed)
                ],
            ),
        ],
    )
    return [bytes(udp_ip("2001:db8::53", message, dport=4739))]


def write_pcap(frames: Sequence[bytes], linktype: int) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype)
    for i, frame in enumerate(frames):
        writer.writepkt(frame, ts=T0 + 1 + i)
    return out.getvalue()


def write_pcapng(frames: Sequence[bytes], linktype: int) -> bytes:
    out = io.BytesIO()
    shb = dpkt.pcapng.SectionHeaderBlockLE(opts=[dpkt.pcapng.PcapngOptionLE(code=0)])
    idb = dpkt.pcapng.InterfaceDescriptionBlockLE(
        linktype=linktype, snaplen=65535, opts=[dpkt.pcapng.PcapngOptionLE(code=0)]
    )
    writer = dpkt.pcapng.Writer(out, snaplen=65535, linktype=linktype, shb=shb, idb=idb)
    for i, frame in enumerate(frames):
        writer.writepkt(frame, ts=T0 + 301 + i)
    return out.getvalue()


def samples() -> dict[str, bytes]:
    """File name → content of every generated sample."""
    return {
        "netflow.pcap": write_pcap(main_capture_packets(), dpkt.pcap.DLT_EN10MB),
        "netflow-ipv6.pcapng": write_pcapng(ipv6_capture_packets(), dpkt.pcap.DLT_RAW),
    }


def main() -> None:
    for name, content in samples().items():
        (SAMPLES / name).write_bytes(content)


if __name__ == "__main__":
    main()
