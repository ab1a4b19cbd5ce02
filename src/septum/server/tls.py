"""Mutual TLS between agents and the server, and how the app learns who is calling.

One port serves everyone::

    agent (client cert) ──┐
    agent enrolling ──────┼─► uvicorn, TLS with ssl_cert_reqs=CERT_OPTIONAL, ssl_ca_certs=our CA
    person (API token) ───┘        │  a presented certificate must chain to the CA, else the
                                   │  handshake fails; no certificate is fine
                                   ▼
                     ClientCertH11Protocol ─► scope["extensions"]["tls"] (ASGI TLS extension)
                                   ▼
                     route: client_certificate(request) ─► ca.enforcer_of / ca.serial_of

Why a protocol class: uvicorn (0.55 read for this) puts no ``tls`` extension in the scope
(its h11 and httptools protocols build the scope without ``extensions``; the pull request
adding the extension was never merged) and gives the app no way to reach the transport, so
the peer certificate is invisible to an ASGI app. ``ClientCertH11Protocol`` is
uvicorn's own h11 protocol plus one step: when a connection is made (after the handshake, so
the peer certificate is known) it reads ``ssl_object.getpeercert(binary_form=True)`` once and
wraps the app for that connection so that every request scope carries the extension as the
ASGI TLS spec defines it. It is selected with ``uvicorn.Config(http=ClientCertH11Protocol)``
(``server_ssl_config`` does that); h11 is chosen because it is a hard dependency of uvicorn,
whereas httptools is optional. WebSocket upgrades are handed to uvicorn's WebSocket protocol,
which uses the unwrapped app: their scopes carry no certificate, so they read as anonymous
(fail closed).

Why CERT_OPTIONAL: enrolment (an agent with a join token and no certificate yet) and people
with API tokens use the same port; OpenSSL still refuses any certificate that does not chain
to the CA. Routes that need an agent must refuse a request without one.

Revocation is not checked here: uvicorn gives OpenSSL the CA file and no CRL, so a revoked but
unexpired certificate completes the handshake. The app checks ``ca.serial_of(cert)`` against the
database on every agent request.

Keys never go into an argument list or the environment: the server's key file is written mode
0600; an agent's key is loaded from a short-lived 0600 file because ``ssl`` cannot load a key
from memory.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from cryptography import x509
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from septum.server.ca import CertificateError

__all__ = [
    "CA_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "ClientCertH11Protocol",
    "UvicornTlsOptions",
    "agent_ssl_context",
    "client_certificate",
    "enrolment_ssl_context",
    "server_ssl_config",
    "tls_extension",
]

CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

#: ``SSLObject.version()`` → the TLS version number the ASGI TLS extension reports.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    """The ASGI TLS extension for one connection, or None if it is not TLS.

    The client certificate is included only if the server asked for one and verified it
    (``verify_mode`` is not CERT_NONE): with OPTIONAL or REQUIRED, OpenSSL fails the handshake
    on a certificate that does not chain to the CA, so one that is here was verified. Python 3.11
    exposes the peer's leaf certificate only, so the chain has at most one entry. The server's
    own certificate and the cipher suite number are not available from ``ssl``: both None.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if ssl_object.context.verify_mode == ssl.CERT_NONE:
        der = None
    chain = [] if der is None else [ssl.DER_cert_to_PEM_cert(der)]
    name = None if der is None else x509.load_der_x509_certificate(der).subject.rfc4514_string()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": None if version is None else _TLS_VERSIONS.get(version),
        "cipher_suite": None,
    }


class _WithTlsExtension:
    """The app, as one connection sees it: each HTTP scope gets that connection's TLS facts."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = dict(self.tls)
        await self.app(scope, receive, send)


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that also reports the TLS extension (and so the verified client
    certificate) in every request scope. Costs one certificate parse per connection."""

    # asyncio.Protocol takes a BaseTransport; uvicorn narrows it to Transport with the same
    # ignore, and this override must keep uvicorn's signature.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is not None:
            # H11Protocol reads ``self.app`` for each request; it is per connection.
            self.app = _WithTlsExtension(self.app, tls)


def client_certificate(scope_or_request: HTTPConnection | Mapping[str, Any]) -> bytes | None:
    """The verified client certificate of this request (PEM), or None if the client presented
    none, the connection is not TLS, or the server does not report the TLS extension.

    Verified means it chains to the CA given to uvicorn; it may still be revoked: check
    ``ca.serial_of`` against the database."""
    scope = (
        scope_or_request.scope if isinstance(scope_or_request, HTTPConnection) else scope_or_request
    )
    tls = scope.get("extensions", {}).get("tls")
    if not isinstance(tls, Mapping) or tls.get("client_cert_error") is not None:
        return None
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    first = chain[0]
    return first.encode("ascii") if isinstance(first, str) else None


class UvicornTlsOptions(TypedDict):
    """Keyword arguments for ``uvicorn.Config``: ``uvicorn.Config(app, **options, ...)``."""

    ssl_certfile: str
    ssl_keyfile: str
    ssl_ca_certs: str
    ssl_cert_reqs: int
    http: type[asyncio.Protocol]


def server_ssl_config(
    directory: Path,
    *,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    cert_reqs: ssl.VerifyMode = ssl.CERT_OPTIONAL,
) -> UvicornTlsOptions:
    """Write the CA certificate, the server certificate and its key into ``directory`` (made
    0700 if missing; the key 0600, each file replaced atomically) and return the uvicorn
    options that serve them with client certificates checked against the CA."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_path = _write_atomically(directory / CA_FILE, ca_pem, 0o644)
    cert_path = _write_atomically(directory / SERVER_CERT_FILE, cert_pem, 0o644)
    key_path = _write_atomically(directory / SERVER_KEY_FILE, key_pem, 0o600)
    return UvicornTlsOptions(
        ssl_certfile=str(cert_path),
        ssl_keyfile=str(key_path),
        ssl_ca_certs=str(ca_path),
        ssl_cert_reqs=int(cert_reqs),
        http=ClientCertH11Protocol,
    )


def enrolment_ssl_context(ca_pem: bytes) -> ssl.SSLContext:
    """For an agent's enrolment call (``httpx.Client(verify=...)``): the server must present a
    certificate from this CA for the host name dialled; the agent presents none. Only this CA
    is trusted, not the system's roots."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise CertificateError(f"the CA certificate cannot be loaded: {e}") from None
    # Our CA issues RFC 5280-conforming certificates; refuse anything looser.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def agent_ssl_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """For an enrolled agent's calls: ``enrolment_ssl_context`` plus the agent's client
    certificate and key."""
    context = enrolment_ssl_context(ca_pem)
    # ssl loads a certificate chain only from a file: a private directory (mkdtemp makes it
    # 0700) holding a 0600 file, removed as soon as OpenSSL has read it.
    with tempfile.TemporaryDirectory(prefix="septum-tls-") as tmp:
        path = Path(tmp) / "client.pem"
        _write_new(path, cert_pem.rstrip(b"\n") + b"\n" + key_pem, 0o600)
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as e:
            raise CertificateError(
                f"the agent's certificate and key cannot be used together: {e}"
            ) from None
    return context


def _write_atomically(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data, mode)
    os.replace(tmp, path)
    return path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL with the mode: the file never exists with wider permissions, even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
