"""Flow capture against the real kernel: NFLOG, conntrack listing/deletion/events and the
recorder end to end, in a pair of network namespaces joined by veth.

Addresses are only 198.18.0.0/15 and 2001:db8::/32. Every wait polls up to a generous
deadline; nothing asserts how fast the kernel is. Namespaces and helper processes are
removed in ``finally``, even when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from septum.agent.capture import FlowKey, FlowRecorder
from septum.agent.conntrack import (
    ConntrackCli,
    ConntrackEntry,
    ConntrackEvent,
    ConntrackEventKind,
    ConntrackEvents,
    conntrack_command,
    enable_accounting,
)
from septum.agent.nflog import LoggedPacket, NflogError, NflogReader
from tests.agent.netlab import (
    CLIENT4,
    CLIENT6,
    SERVER4,
    SERVER6,
    Lab,
    eventually,
    finish,
    go_on,
    in_netns,
    kill,
    lab,
    start_in,
    tcp_attempt,
    udp_send,
    wait_line,
)

RULES = """
table inet septum_test {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    tcp dport 9999 log prefix "septum deny t/p/ingress/0 " group 1 drop
    udp dport 9998 log prefix "septum would-deny t/p/ingress/1 " group 2 accept
    udp dport 9997 log prefix "septum log t/l/ingress/0 " group 3
    tcp dport 8080 accept
  }
}
"""

#: Short TCP timeouts in the server namespace, so that a closed connection's entry expires
#: (and its DESTROY event comes) within seconds rather than two minutes.
SHORT_TIMEOUTS = ("time_wait", "close", "last_ack", "fin_wait", "close_wait")


@pytest.fixture
def net() -> Iterator[Lab]:
    with lab() as the_lab:
        the_lab.nft(the_lab.server, RULES)
        yield the_lab


def _short_timeouts(net: Lab) -> None:
    for name in SHORT_TIMEOUTS:
        net.sysctl(net.server, f"net.netfilter.nf_conntrack_tcp_timeout_{name}", "1")


def _cli(ns: str) -> ConntrackCli:
    return ConntrackCli(["ip", "netns", "exec", ns, conntrack_command()])


SERVER = """
    import socket, sys
    s = socket.socket(socket.{family})
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{address}", 8080))
    s.listen()
    s.settimeout(30)
    print("ready")
    c, _ = s.accept()
    c.settimeout(30)
    got = 0
    while True:
        data = c.recv(65536)
        if not data:
            break
        got += len(data)
    c.sendall(b"y" * 3000)
    c.close()
    print(got)
"""

#: Connects, sends 5000 bytes, waits for a line on stdin, then half-closes and reads the
#: server's answer to the end.
CLIENT = """
    import socket, sys
    c = socket.create_connection(("{address}", 8080), timeout=30)
    print(c.getsockname()[1])
    c.sendall(b"x" * 5000)
    sys.stdin.readline()
    c.shutdown(socket.SHUT_WR)
    n = 0
    while True:
        data = c.recv(65536)
        if not data:
            break
        n += len(data)
    c.close()
    print(n)
"""


def _server(net: Lab, address: IPv4Address | IPv6Address) -> subprocess.Popen[str]:
    family = "AF_INET" if address.version == 4 else "AF_INET6"
    proc = start_in(net.server, SERVER.format(family=family, address=address))
    wait_line(proc, "ready")
    return proc


# ------------------------------------------------------------------------------ nflog


def test_nflog_reads_packets_of_each_group_with_prefix_addresses_and_ports(net: Lab) -> None:
    with in_netns(net.server):
        reader = NflogReader([1, 2, 3])
    with reader:
        sport4 = tcp_attempt(net.client, SERVER4, 9999)
        sport6 = tcp_attempt(net.client, SERVER6, 9999)
        udp_send(net.client, SERVER4, 9998)
        udp_send(net.client, SERVER6, 9998, count=3)
        udp_send(net.client, SERVER6, 9997)
        seen: list[LoggedPacket] = []

        def all_seen() -> bool | None:
            seen.extend(reader.read(0.5))
            groups = [(p.group, p.family, p.destination_port) for p in seen]
            wanted = [(1, 4, 9999), (1, 6, 9999), (2, 4, 9998), (2, 6, 9998), (3, 6, 9997)]
            return True if all(w in groups for w in wanted) else None

        eventually(all_seen, timeout=20)
    denied4 = next(p for p in seen if p.group == 1 and p.family == 4)
    assert denied4 == LoggedPacket(
        group=1,
        prefix="septum deny t/p/ingress/0 ",
        family=4,
        source=CLIENT4,
        destination=SERVER4,
        protocol="tcp",
        source_port=sport4,
        destination_port=9999,
        length=denied4.length,
    )
    assert denied4.length >= 40  # a SYN: IP and TCP headers, maybe options
    denied6 = next(p for p in seen if p.group == 1 and p.family == 6)
    assert (denied6.source, denied6.destination, denied6.source_port) == (CLIENT6, SERVER6, sport6)
    would6 = [p for p in seen if p.group == 2 and p.family == 6]
    assert len(would6) == 3
    assert {(p.prefix, p.protocol, p.length) for p in would6} == {
        ("septum would-deny t/p/ingress/1 ", "udp", 40 + 8 + 100)
    }
    would4 = next(p for p in seen if p.group == 2 and p.family == 4)
    assert (would4.source, would4.length) == (CLIENT4, 20 + 8 + 100)
    logged = next(p for p in seen if p.group == 3)
    assert (logged.prefix, logged.destination) == ("septum log t/l/ingress/0 ", SERVER6)
    assert reader.overruns == 0


def test_nflog_group_taken_by_another_socket_is_a_clear_error(net: Lab) -> None:
    with in_netns(net.server):
        first = NflogReader([7])
        try:
            with pytest.raises(NflogError, match="already bound"):
                NflogReader([8, 7])
        finally:
            first.close()
        NflogReader([7]).close()  # free again once the first socket closed


# -------------------------------------------------------------------------- conntrack


def test_conntrack_lists_and_deletes_a_live_tcp_connection(net: Lab) -> None:
    server = _server(net, SERVER4)
    client = start_in(net.client, CLIENT.format(address=SERVER4))
    try:
        assert client.stdout is not None
        sport = int(client.stdout.readline())
        cli = _cli(net.server)

        def live() -> ConntrackEntry | None:
            for e in cli.entries():
                if e.protocol == "tcp" and e.source_port == sport:
                    return e
            return None

        entry = eventually(live)
        assert entry.key == (4, "tcp", CLIENT4, SERVER4, sport, 8080)
        assert entry.state == "ESTABLISHED"
        assert _cli(net.client).entries() == []  # no ct rule there: nothing is tracked
        assert cli.delete([entry]) == 1
        assert cli.delete([entry]) == 0  # already gone: not an error
        assert live() is None
        go_on(client)
        assert int(finish(client).split()[-1]) == 3000  # the connection still works
        assert int(finish(server).split()[-1]) == 5000  # (loose tracking picks it up)
    finally:
        kill(client, server)


def _collect(events: ConntrackEvents) -> tuple[list[ConntrackEvent], threading.Thread]:
    got: list[ConntrackEvent] = []

    def read() -> None:
        for event in events:
            got.append(event)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return got, t


@pytest.mark.parametrize("server_address", [SERVER4, SERVER6], ids=["ipv4", "ipv6"])
def test_conntrack_events_new_and_destroy_with_byte_counts(
    net: Lab, server_address: IPv4Address | IPv6Address
) -> None:
    with in_netns(net.server):
        assert enable_accounting() is True
    with in_netns(net.client):  # the setting is per network namespace
        assert Path("/proc/sys/net/netfilter/nf_conntrack_acct").read_text().strip() == "0"
    _short_timeouts(net)
    cli = _cli(net.server)
    events = ConntrackEvents(["ip", "netns", "exec", net.server, conntrack_command()])
    server = client = None
    with events:
        got, reader = _collect(events)
        try:
            server = _server(net, server_address)
            client = start_in(net.client, CLIENT.format(address=server_address))
            assert client.stdout is not None
            sport = int(client.stdout.readline())
            go_on(client)
            finish(client)
            finish(server)

            def destroyed() -> ConntrackEvent | None:
                cli.entries()  # a dump also reaps expired entries (else the GC does, later)
                return next(
                    (
                        e
                        for e in list(got)
                        if e.kind is ConntrackEventKind.DESTROY and e.entry.source_port == sport
                    ),
                    None,
                )

            gone = eventually(destroyed, timeout=60, interval=0.5)
        finally:
            kill(*(p for p in (client, server) if p is not None))
    reader.join(timeout=10)
    assert not reader.is_alive()
    new = [e for e in got if e.kind is ConntrackEventKind.NEW and e.entry.source_port == sport]
    assert len(new) == 1
    assert new[0].entry.key == gone.entry.key
    assert new[0].entry.key[2:] == (
        CLIENT4 if server_address.version == 4 else CLIENT6,
        server_address,
        sport,
        8080,
    )
    assert new[0].at <= gone.at
    assert gone.entry.bytes > 5000  # payload plus headers, client → server
    assert 3000 < gone.entry.reply_bytes < 5000
    assert gone.entry.packets >= 3
    assert gone.entry.reply_packets >= 2
    assert events.unparsed == 0


# ---------------------------------------------------------------------------- recorder


def test_flow_recorder_writes_the_expected_records(net: Lab, tmp_path: Path) -> None:
    with in_netns(net.server):
        enable_accounting()
    _short_timeouts(net)
    sink = tmp_path / "flows.jsonl"
    asked: list[FlowKey] = []

    def explain(key: FlowKey) -> tuple[str, ...]:
        asked.append(key)
        return ("t/p/ingress/4",)

    recorder = FlowRecorder(
        enforcer="lab",
        sink=sink,
        interval=0.5,
        explain_accepted=explain,
    )
    with in_netns(net.server):
        recorder.start()  # its sockets and conntrack process live in the server namespace
    server = client = None
    try:
        tcp_attempt(net.client, SERVER4, 9999)
        tcp_attempt(net.client, SERVER6, 9999)
        udp_send(net.client, SERVER6, 9998, count=3)
        udp_send(net.client, SERVER4, 9997)
        server = _server(net, SERVER4)
        client = start_in(net.client, CLIENT.format(address=SERVER4))
        assert client.stdout is not None
        sport = int(client.stdout.readline())
        go_on(client)
        finish(client)
        finish(server)
        cli = _cli(net.server)

        def complete() -> dict[tuple[str, str, int], dict[str, object]] | None:
            cli.entries()  # reaps the expired TCP entry, so its DESTROY comes soon
            totals = _totals(sink)
            allowed = totals.get(("allowed", str(SERVER4), 8080))
            if allowed is None or not isinstance(allowed["bytes"], int) or allowed["bytes"] == 0:
                return None
            wanted = [
                ("denied", str(SERVER4), 9999),
                ("denied", str(SERVER6), 9999),
                ("would-deny", str(SERVER6), 9998),
                ("logged", str(SERVER4), 9997),
            ]
            return totals if all(w in totals for w in wanted) else None

        totals = eventually(complete, timeout=60, interval=0.5)
    finally:
        recorder.stop()
        kill(*(p for p in (client, server) if p is not None))
    denied4 = totals[("denied", str(SERVER4), 9999)]
    assert denied4["provenance"] == ["t/p/ingress/0"]
    assert denied4["source"] == str(CLIENT4)
    assert denied4["protocol"] == "tcp"
    # SYN retries share one source port (one connection per interval they fall in).
    assert isinstance(denied4["packets"], int)
    assert denied4["packets"] >= 1
    assert 1 <= int(str(denied4["connections"])) <= denied4["packets"]
    would6 = totals[("would-deny", str(SERVER6), 9998)]
    assert (would6["packets"], would6["bytes"]) == (3, 3 * 148)
    assert int(str(would6["connections"])) in (1, 2)  # 1 unless an interval ended mid-burst
    assert would6["provenance"] == ["t/p/ingress/1"]
    logged = totals[("logged", str(SERVER4), 9997)]
    assert (logged["packets"], logged["bytes"], logged["provenance"]) == (1, 128, ["t/l/ingress/0"])
    allowed = totals[("allowed", str(SERVER4), 8080)]
    assert (allowed["connections"], allowed["provenance"]) == (1, ["t/p/ingress/4"])
    assert isinstance(allowed["bytes"], int)
    assert allowed["bytes"] > 8000
    # Would-be denied traffic is accepted, so conntrack reports it as allowed too.
    assert totals[("allowed", str(SERVER6), 9998)]["connections"] == 1
    assert FlowKey(CLIENT4, SERVER4, "tcp", 8080) in asked
    assert sport > 0
    for row in _rows(sink):
        assert row["enforcer"] == "lab"
        assert str(row["start"]) <= str(row["end"])
        assert str(row["start"]).endswith("+00:00")
    stats = recorder.stats()
    assert stats.failures == ()
    assert stats.nflog_overruns == 0
    assert stats.conntrack_overruns == 0


def _rows(sink: Path) -> list[dict[str, object]]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines()]


def _totals(sink: Path) -> dict[tuple[str, str, int], dict[str, object]]:
    """Records summed over intervals per (verdict, destination, port); other fields from
    the last record."""
    out: dict[tuple[str, str, int], dict[str, object]] = {}
    for row in _rows(sink):
        key = (str(row["verdict"]), str(row["destination"]), int(str(row["port"])))
        if key not in out:
            out[key] = dict(row)
            continue
        total = out[key]
        for counter in ("connections", "packets", "bytes"):
            total[counter] = int(str(total[counter])) + int(str(row[counter]))
    return out
