"""The process that plays one workload inside its lab namespace: responder and prober.

Started by ``septum lab up`` as ``ip netns exec NS python -m septum.lab.node --name W
--control SOCKET``, it serves two things:

* a **responder** on every TCP and UDP port it is told to listen on, for IPv4 and IPv6 on all
  addresses (so an address added later is answered at once): it reads one request and sends
  back ``<request> <workload name>``, so a prober knows *which* workload answered (a reply
  from the wrong namespace is a plumbing error, not a connection). UDP replies leave from the
  address the request was sent to (``IP_PKTINFO``), whatever the routing would choose;
* a **control server** on a unix socket (a path in the lab's state directory: unix sockets
  reach across network namespaces), one JSON request per line, one JSON answer per line:

  ``{"op": "ping"}`` → ``{"ok": true, "name": W, "pid": N}``;
  ``{"op": "listen", "tcp": [ports], "udp": [ports]}`` → ``{"ok": true, "errors": [...]}``;
  ``{"op": "probe", "timeout": 1.5, "probes": [{"id", "source", "destination", "protocol",
  "port"}, ...]}`` → ``{"ok": true, "results": [{"id", "connected", "responder", "detail",
  "ms"}, ...]}``.

Probes run concurrently (at most ``concurrency`` sockets at once, per request), each bound to
its source address. What counts is the kernel's view, not how quickly this process gets the
CPU (a lab runs dozens of nodes and agents on a few cores): TCP is connected when the
handshake completed within the timeout (checked on the socket itself when the timer fires),
after which the echo gets a generous ``ECHO_GRACE``; UDP is connected when the echo is in the
socket's queue at the deadline. No handshake or echo is "blocked", as are a refusal (RST or
ICMP unreachable) and a local ``EPERM`` (dropped on OUTPUT); ``detail`` says which. Only
addresses the caller passes are contacted, and the lab namespaces have routes for the lab
ranges only.

Deliberately imports nothing but the standard library: a lab starts one node per workload,
and a light start-up keeps ``up`` fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import resource
import signal
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Node", "call", "main", "serve"]

CONCURRENCY = 256  # default sockets in flight per probe request
ECHO_GRACE = 5.0  # seconds for the echo once a TCP handshake completed
_REQUEST_LIMIT = 256  # bytes of one probe request
_BACKLOG = 4096  # pending connections per listening socket
_CONTROL_LIMIT = 1 << 26  # bytes of one control line
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)


def _raise_nofile() -> None:
    """Every listening port and concurrent probe holds descriptors: use the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Node:
    """One workload's responder and prober. ``name`` is the workload name it answers with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._reply_suffix = b" " + name.encode()
        self._tcp: dict[tuple[int, int], asyncio.Server] = {}
        self._udp: dict[tuple[int, int], socket.socket] = {}

    # ------------------------------------------------------------------ responder

    async def listen(self, tcp: Iterable[int], udp: Iterable[int]) -> list[str]:
        """Listen on these ports (both families; idempotent). Returns the failures."""
        errors: list[str] = []
        loop = asyncio.get_running_loop()
        for family in (socket.AF_INET, socket.AF_INET6):
            for port in sorted(set(tcp)):
                if (family, port) not in self._tcp:
                    try:
                        self._tcp[family, port] = await loop.create_server(
                            lambda: _Echo(self._reply_suffix),
                            sock=_bound(family, socket.SOCK_STREAM, port),
                            backlog=_BACKLOG,
                        )
                    except OSError as exc:
                        errors.append(f"tcp/{port} ({family.name}): {exc.strerror or exc}")
            for port in sorted(set(udp)):
                if (family, port) not in self._udp:
                    try:
                        self._udp[family, port] = self._udp_socket(family, port)
                    except OSError as exc:
                        errors.append(f"udp/{port} ({family.name}): {exc.strerror or exc}")
        return errors

    def _udp_socket(self, family: socket.AddressFamily, port: int) -> socket.socket:
        sock = _bound(family, socket.SOCK_DGRAM, port)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._answer_udp, sock)
        return sock

    def _answer_udp(self, sock: socket.socket) -> None:
        """Echo the waiting datagrams (a bounded batch) from the address each was sent to."""
        for _ in range(1024):
            try:
                data, ancillary, _flags, peer = sock.recvmsg(_REQUEST_LIMIT, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. a queued ICMP error: not for the responder
            reply_info = []
            for level, kind, info in ancillary:
                if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(info) >= 12:
                    # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr;}
                    reply_info.append((level, kind, struct.pack("=i4s4s", 0, info[8:12], b"")))
                elif level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(info) >= 20:
                    # struct in6_pktinfo {in6_addr addr; int ifindex;}
                    reply_info.append((level, kind, info[:16] + struct.pack("=i", 0)))
            with contextlib.suppress(OSError):
                sock.sendmsg([data.rstrip(b"\n") + self._reply_suffix + b"\n"], reply_info, 0, peer)

    # ------------------------------------------------------------------ prober

    async def probe_all(
        self, probes: list[dict[str, Any]], timeout: float, concurrency: int = CONCURRENCY
    ) -> list[dict[str, Any]]:
        """Run every probe, at most ``concurrency`` at once; answers in the same order."""
        limit = asyncio.Semaphore(max(1, concurrency))
        return list(await asyncio.gather(*(self._probe(p, timeout, limit) for p in probes)))

    async def _probe(
        self, probe: dict[str, Any], timeout: float, limit: asyncio.Semaphore
    ) -> dict[str, Any]:
        async with limit:
            start = time.monotonic()
            token = f"septum-probe {probe['id']} {os.getpid()}".encode()
            source, destination = str(probe["source"]), str(probe["destination"])
            port = int(probe["port"])
            exchange = _tcp_exchange if probe["protocol"] == "tcp" else _udp_exchange
            try:
                reply = await exchange(source, destination, port, token, timeout)
                if reply is None:
                    connected, responder, detail = False, None, "timeout"
                else:
                    connected, responder, detail = _check_reply(reply, token)
            except TimeoutError:
                connected, responder, detail = False, None, "no echo after handshake"
            except ConnectionRefusedError:
                connected, responder, detail = False, None, "refused"
            except OSError as exc:
                connected, responder = False, None
                detail = errno.errorcode.get(exc.errno or 0, str(exc)).lower()
            return {
                "id": probe["id"],
                "connected": connected,
                "responder": responder,
                "detail": detail,
                "ms": round((time.monotonic() - start) * 1000, 1),
            }

    # ------------------------------------------------------------------ control

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await self._handle(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "ping":
            return {"ok": True, "name": self.name, "pid": os.getpid()}
        if op == "listen":
            errors = await self.listen(request.get("tcp", []), request.get("udp", []))
            return {"ok": not errors, "errors": errors}
        if op == "probe":
            timeout = float(request.get("timeout", 1.5))
            concurrency = int(request.get("concurrency", CONCURRENCY))
            results = await self.probe_all(request["probes"], timeout, concurrency)
            return {"ok": True, "results": results}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _bound(family: socket.AddressFamily, kind: socket.SocketKind, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class _Echo(asyncio.Protocol):
    """One accepted TCP connection: answer the first line with ``<line> <name>``, close.
    A connection whose first line starts with ``hold`` stays open and has every line echoed
    (a long-lived connection, for revocation tests). A bare Protocol (no streams, no task)
    keeps the cost per probe low."""

    def __init__(self, suffix: bytes) -> None:
        self._suffix = suffix
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._hold = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._buffer.startswith(b"hold"):
            self._hold = True
        if self._hold and self._transport is not None:
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._transport.write(line[:_REQUEST_LIMIT] + self._suffix + b"\n")
            self._buffer = self._buffer[-_REQUEST_LIMIT:]
            return
        if self._transport is not None and (
            b"\n" in self._buffer or len(self._buffer) >= _REQUEST_LIMIT
        ):
            line = self._buffer.split(b"\n", 1)[0][:_REQUEST_LIMIT]
            self._transport.write(line + self._suffix + b"\n")
            self._transport.close()
            self._transport = None


async def _wait_fd(fd: int, writable: bool, timeout: float) -> None:
    """Until ``fd`` is writable (readable), or ``timeout`` seconds: whichever comes first."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await asyncio.wait({ready}, timeout=timeout)
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)
        ready.cancel()


async def _tcp_exchange(
    source: str, destination: str, port: int, token: bytes, timeout: float
) -> bytes | None:
    """None when the handshake did not complete within ``timeout``."""
    loop = asyncio.get_running_loop()
    with socket.socket(_family(destination), socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        code = sock.connect_ex((destination, port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        await _wait_fd(sock.fileno(), True, timeout)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        try:
            sock.getpeername()  # the kernel's word: was the handshake done by now?
        except OSError:
            return None
        await loop.sock_sendall(sock, token + b"\n")
        reply = b""
        deadline = time.monotonic() + ECHO_GRACE
        while not reply.endswith(b"\n"):
            chunk = await asyncio.wait_for(
                loop.sock_recv(sock, _REQUEST_LIMIT + 512), max(0.0, deadline - time.monotonic())
            )
            if not chunk:
                break
            reply += chunk
        return reply


async def _udp_exchange(
    source: str, destination: str, port: int, token: bytes, timeout: float
) -> bytes | None:
    """None when no echo is queued on the socket after ``timeout`` seconds."""
    with socket.socket(_family(destination), socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        sock.connect((destination, port))
        sock.send(token + b"\n")
        await _wait_fd(sock.fileno(), False, timeout)
        try:
            return sock.recv(_REQUEST_LIMIT + 512)
        except BlockingIOError:
            return None


def _check_reply(reply: bytes, token: bytes) -> tuple[bool, str | None, str]:
    text = reply.rstrip(b"\n")
    if not text.startswith(token + b" "):
        return False, None, f"unexpected reply {reply[:60]!r}"
    responder = text[len(token) + 1 :].decode(errors="replace")
    return True, responder, "echo"


async def call(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one control request to the node listening on ``path``; its answer. Raises
    OSError (no node there), TimeoutError, or ValueError (not a JSON object)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(path), limit=_CONTROL_LIMIT), timeout
    )
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    answer = json.loads(line) if line else None
    if not isinstance(answer, dict):
        raise ValueError(f"node at {path} answered {line[:200]!r}")
    return answer


async def serve(name: str, control: Path, tcp: list[int], udp: list[int]) -> None:
    """Run a node until SIGTERM/SIGINT. The control socket appears once the node is ready."""
    _raise_nofile()
    node = Node(name)
    errors = await node.listen(tcp, udp)
    if errors:
        raise SystemExit("cannot listen: " + "; ".join(errors))
    control.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(node.control, path=str(control), limit=_CONTROL_LIMIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    control.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m septum.lab.node", description=__doc__)
    parser.add_argument("--name", required=True, help="the workload this node plays")
    parser.add_argument("--control", required=True, type=Path, help="unix socket path")
    parser.add_argument("--tcp", type=int, action="append", default=[], help="listen on")
    parser.add_argument("--udp", type=int, action="append", default=[], help="listen on")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.name, args.control, args.tcp, args.udp))


if __name__ == "__main__":
    main()
