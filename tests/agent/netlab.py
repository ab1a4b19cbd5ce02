"""A two-namespace lab for agent tests against the real kernel, and traffic helpers.

``client`` and ``server`` namespaces joined by a veth pair, addressed ONLY from the
benchmarking range 198.18.0.0/15 and the documentation range 2001:db8::/32. Namespaces are
named with the per-run ``NETNS_PREFIX`` and deleted in ``finally``, even when a test fails.
Traffic helpers run small Python programs inside a namespace with ``ip netns exec``; every
wait is bounded.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import TypeVar

from tests.conftest import NETNS_PREFIX, require_root_nft
from tests.kernel import ns_nft

CLIENT4 = IPv4Address("198.18.0.1")
SERVER4 = IPv4Address("198.18.0.2")
CLIENT6 = IPv6Address("2001:db8::1")
SERVER6 = IPv6Address("2001:db8::2")

_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def _check_address(a: IPv4Address | IPv6Address) -> None:
    net = "198.18.0.0/15" if a.version == 4 else "2001:db8::/32"
    assert a in ip_network(net), f"test address {a} outside {net}"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"


@dataclass(frozen=True)
class Lab:
    client: str  # namespace names
    server: str

    def nft(self, ns: str, script: str) -> None:
        ns_nft(ns, "-f", "-", stdin=script)

    def sysctl(self, ns: str, name: str, value: str) -> None:
        path = "/proc/sys/" + name.replace(".", "/")
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


@contextmanager
def lab() -> Iterator[Lab]:
    """Two fresh namespaces joined by veth, with IPv4 and IPv6 addresses, links up."""
    require_root_nft()
    tag = uuid.uuid4().hex[:8]
    client, server = NETNS_PREFIX + tag + "c", NETNS_PREFIX + tag + "s"
    for a in (CLIENT4, SERVER4, CLIENT6, SERVER6):
        _check_address(a)
    try:
        _ip("netns", "add", client)
        _ip("netns", "add", server)
        peer = ("peer", "name", "ss0", "netns", server)
        _ip("link", "add", "sc0", "netns", client, "type", "veth", *peer)
        _ip("-n", client, "addr", "add", f"{CLIENT4}/24", "dev", "sc0")
        _ip("-n", server, "addr", "add", f"{SERVER4}/24", "dev", "ss0")
        _ip("-n", client, "addr", "add", f"{CLIENT6}/64", "dev", "sc0", "nodad")
        _ip("-n", server, "addr", "add", f"{SERVER6}/64", "dev", "ss0", "nodad")
        for ns, dev in ((client, "sc0"), (server, "ss0")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield Lab(client, server)
    finally:
        for ns in (client, server):
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace ``name`` for good (a forked child's way in)."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread (only) in namespace ``name``: sockets it opens, subprocesses
    it starts and /proc/sys/net it reads belong there. Restores the thread's namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def run_in(ns: str, program: str, *, timeout: float = 20.0) -> str:
    """Run a Python program in ``ns``; fail with its stderr on error; return its stdout."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def start_in(ns: str, program: str) -> subprocess.Popen[str]:
    """Start a Python program in ``ns`` with pipes for stdin (a "go on" signal: write a
    line) and stdout (readiness lines). The caller ends it with :func:`finish` or
    :func:`kill`."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", textwrap.dedent(program)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_line(proc: subprocess.Popen[str], expected: str, timeout: float = 15.0) -> None:
    """Wait until ``proc`` prints a line ``expected`` (a readiness signal)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            buf += line
            if line.strip() == expected:
                return
    stderr = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    raise AssertionError(f"no {expected!r} from helper within {timeout}s: {buf!r} {stderr}")


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """Wait for a helper started with :func:`start_in`; fail with its stderr on error."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"helper timed out: {err}") from None
    assert proc.returncode == 0, err
    return out


def kill(*procs: subprocess.Popen[str]) -> None:
    """End helpers still running (they were started by this test)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def go_on(proc: subprocess.Popen[str]) -> None:
    """Tell a helper waiting on ``sys.stdin.readline()`` to continue."""
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def eventually(probe: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something other than None (or fail at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def udp_send(ns: str, destination: IPv4Address | IPv6Address, port: int, count: int = 1) -> None:
    """Send ``count`` UDP datagrams of 100 bytes from one socket (one source port)."""
    family = "AF_INET" if destination.version == 4 else "AF_INET6"
    run_in(
        ns,
        f"""
        import socket
        s = socket.socket(socket.{family}, socket.SOCK_DGRAM)
        for _ in range({count}):
            s.sendto(b"u" * 100, ("{destination}", {port}))
        print(s.getsockname()[1])
        """,
    )


def tcp_attempt(ns: str, destination: IPv4Address | IPv6Address, port: int) -> int:
    """Try to connect (a SYN, which a drop rule swallows); give up after 1.5 s. Returns
    the local port used."""
    family = "AF_INET" if destination.version == 4 else "AF_INET6"
    out = run_in(
        ns,
        f"""
        import socket
        s = socket.socket(socket.{family}, socket.SOCK_STREAM)
        s.settimeout(1.5)
        s.bind(("", 0))
        local = s.getsockname()[1]
        try:
            s.connect(("{destination}", {port}))
        except OSError:
            pass
        print(local)
        """,
    )
    return int(out.split()[-1])
