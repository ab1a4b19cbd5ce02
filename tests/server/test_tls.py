"""Mutual TLS through a real uvicorn on 127.0.0.1: the app sees the verified client
certificate, a missing one reads as anonymous, a foreign one fails the handshake, and a
revoked one is refused by the app (OpenSSL checks no CRL here)."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from septum.server import tls as tls_module
from septum.server.ca import (
    CertificateAuthority,
    CertificateError,
    IssuedCertificate,
    enforcer_of,
    make_agent_key_and_csr,
    serial_of,
)
from septum.server.tls import (
    CA_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    ClientCertH11Protocol,
    agent_ssl_context,
    client_certificate,
    enrolment_ssl_context,
    server_ssl_config,
    tls_extension,
)

HOST = "127.0.0.1"


@dataclass
class Served:
    url: str
    authority: CertificateAuthority
    #: What the database would hold: serials the app must refuse.
    revoked: set[int] = field(default_factory=set)


def _app(revoked: set[int]) -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str]:
        cert = client_certificate(request)
        if cert is None:
            raise HTTPException(401, "no client certificate")
        if serial_of(cert) in revoked:
            raise HTTPException(403, "certificate revoked")
        return {"enforcer": enforcer_of(cert)}

    @app.get("/tls")
    def tls(request: Request) -> dict[str, Any]:
        ext = request.scope.get("extensions", {}).get("tls")
        return {"present": ext is not None, **({} if ext is None else ext)}

    return app


@contextmanager
def _serve(app: FastAPI, options: dict[str, Any]) -> Iterator[str]:
    """uvicorn in a thread on a socket bound here (no free-port race); stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.01)
        yield f"https://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def _now() -> datetime:
    # The handshake checks validity against the real clock, so these certificates use it too.
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    # Made three days ago, so that an already expired agent certificate can be issued.
    return CertificateAuthority.create("Septum test CA", now=_now() - timedelta(days=3), days=10)


@pytest.fixture(scope="module")
def server_files(
    authority: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    issued = authority.issue_server_certificate(
        ["localhost"], [ip_address(HOST)], now=_now(), days=1
    )
    assert issued.key_pem is not None
    options = server_ssl_config(
        tmp_path_factory.mktemp("tls") / "server",
        ca_pem=authority.cert_pem,
        cert_pem=issued.cert_pem,
        key_pem=issued.key_pem,
    )
    return dict(options)


@pytest.fixture(scope="module")
def served(authority: CertificateAuthority, server_files: dict[str, Any]) -> Iterator[Served]:
    revoked: set[int] = set()
    with _serve(_app(revoked), server_files) as url:
        yield Served(url, authority, revoked)


def _agent(authority: CertificateAuthority, name: str, **kw: Any) -> IssuedCertificate:
    kw.setdefault("now", _now())
    return authority.issue_agent_certificate(name, **kw)


def _agent_client(trusted: CertificateAuthority, issued: IssuedCertificate) -> httpx.Client:
    assert issued.key_pem is not None
    return httpx.Client(
        verify=agent_ssl_context(trusted.cert_pem, issued.cert_pem, issued.key_pem), timeout=10
    )


def test_public_surface() -> None:
    assert set(tls_module.__all__) <= set(dir(tls_module))


# ---- (a) a certificate from the CA: the app learns the enforcer ---------------------------


def test_an_agent_certificate_names_its_enforcer(served: Served) -> None:
    issued = _agent(served.authority, "host-web-1")
    with _agent_client(served.authority, issued) as client:
        for _ in range(3):  # several requests on one kept-alive connection
            response = client.get(f"{served.url}/whoami")
            assert response.status_code == 200, response.text
            assert response.json() == {"enforcer": "host-web-1"}


def test_an_agent_from_its_csr(served: Served) -> None:
    """The real enrolment path: the key is made by the agent, only the CSR travels."""
    key_pem, csr_pem = make_agent_key_and_csr("claims-to-be-db")
    issued = served.authority.sign_agent_csr(csr_pem, "host-web-2", now=_now())
    context = agent_ssl_context(served.authority.cert_pem, issued.cert_pem, key_pem)
    with httpx.Client(verify=context, timeout=10) as client:
        assert client.get(f"{served.url}/whoami").json() == {"enforcer": "host-web-2"}


def test_the_scope_carries_the_asgi_tls_extension(served: Served) -> None:
    issued = _agent(served.authority, "host-web-1")
    with _agent_client(served.authority, issued) as client:
        ext = client.get(f"{served.url}/tls").json()
    assert ext["present"]
    assert ext["client_cert_name"] == "CN=host-web-1"
    assert ext["client_cert_error"] is None
    assert ext["tls_version"] in (0x0303, 0x0304)
    [pem] = ext["client_cert_chain"]
    assert serial_of(pem.encode()) == issued.serial


# ---- (b) no certificate: TLS works, the app sees nobody ------------------------------------


def test_no_client_certificate_is_anonymous(served: Served) -> None:
    with httpx.Client(verify=enrolment_ssl_context(served.authority.cert_pem)) as client:
        response = client.get(f"{served.url}/whoami")
        assert response.status_code == 401
        ext = client.get(f"{served.url}/tls").json()
    assert ext["present"]
    assert ext["client_cert_chain"] == []
    assert ext["client_cert_name"] is None


# ---- (c) a certificate from another CA: the handshake fails --------------------------------


@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_a_certificate_from_another_ca_fails_the_handshake(served: Served, tls12: bool) -> None:
    """The server drops the connection (asyncio's TLS sends no alert). With TLS 1.2 that
    happens inside the client's handshake; with TLS 1.3 the client has finished its side before
    the server checks the certificate, so it shows when the response is read. Either way no
    request reaches the app (no 401 or 200)."""
    other = CertificateAuthority.create("Impostor CA", now=_now(), days=2)
    foreign = _agent(other, "host-web-1")
    assert foreign.key_pem is not None
    # The client trusts the real server (so only the client certificate is at fault).
    context = agent_ssl_context(served.authority.cert_pem, foreign.cert_pem, foreign.key_pem)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        httpx.Client(verify=context, timeout=10) as client,
        pytest.raises(httpx.ConnectError if tls12 else httpx.TransportError),
    ):
        client.get(f"{served.url}/whoami")


def test_an_expired_certificate_fails_the_handshake(served: Served) -> None:
    expired = _agent(served.authority, "host-web-1", now=_now() - timedelta(days=2), days=1)
    assert expired.not_after < _now()
    with (
        _agent_client(served.authority, expired) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(f"{served.url}/whoami")


# ---- (d) a client that does not trust the CA refuses the server ----------------------------


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(served: Served) -> None:
    other = CertificateAuthority.create("Impostor CA", now=_now(), days=2)
    with (
        httpx.Client(verify=enrolment_ssl_context(other.cert_pem), timeout=10) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"{served.url}/whoami")
    with (
        httpx.Client(timeout=10) as client,  # the system's roots do not know our CA either
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"{served.url}/whoami")


def test_the_server_name_is_checked(served: Served) -> None:
    """The server certificate names localhost and 127.0.0.1: dialling 127.0.0.1 under another
    name (SNI and the hostname check) fails."""
    context = enrolment_ssl_context(served.authority.cert_pem)
    with httpx.Client(verify=context, timeout=10) as client:
        assert client.get(f"{served.url}/whoami").status_code == 401
        assert (
            client.get(f"{served.url}/whoami", extensions={"sni_hostname": "localhost"}).status_code
            == 401
        )
    with (
        httpx.Client(verify=context, timeout=10) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"{served.url}/whoami", extensions={"sni_hostname": "septum.example"})


# ---- revocation: the app's job ------------------------------------------------------------


def test_a_revoked_certificate_is_refused_by_the_app(served: Served) -> None:
    issued = _agent(served.authority, "host-web-3")
    with _agent_client(served.authority, issued) as client:
        assert client.get(f"{served.url}/whoami").status_code == 200
        served.revoked.add(issued.serial)
        try:
            response = client.get(f"{served.url}/whoami")
        finally:
            served.revoked.discard(issued.serial)
    assert response.status_code == 403
    assert response.json() == {"detail": "certificate revoked"}


# ---- the investigation, kept as a test -----------------------------------------------------


def test_plain_uvicorn_does_not_expose_the_client_certificate(
    authority: CertificateAuthority, server_files: dict[str, Any]
) -> None:
    """Why ``ClientCertH11Protocol`` exists. If this fails, uvicorn reports the ASGI TLS
    extension itself and the subclass can go."""
    options = {**server_files, "http": "h11"}
    issued = _agent(authority, "host-web-1")
    with _serve(_app(set()), options) as url, _agent_client(authority, issued) as client:
        assert client.get(f"{url}/tls").json() == {"present": False}
        assert client.get(f"{url}/whoami").status_code == 401


# ---- units ---------------------------------------------------------------------------------


def test_client_certificate_from_scopes() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert client_certificate({"type": "http"}) is None
    assert client_certificate({"type": "http", "extensions": {}}) is None
    tls: dict[str, Any] = {"client_cert_chain": [], "client_cert_error": None}
    assert client_certificate({"type": "http", "extensions": {"tls": tls}}) is None
    tls["client_cert_chain"] = [pem]
    assert client_certificate({"type": "http", "extensions": {"tls": tls}}) == pem.encode()
    request = Request({"type": "http", "extensions": {"tls": tls}})
    assert client_certificate(request) == pem.encode()
    failed = {**tls, "client_cert_error": "unable to get local issuer certificate"}
    assert client_certificate({"type": "http", "extensions": {"tls": failed}}) is None


def test_no_tls_no_extension() -> None:
    assert tls_extension(None) is None


def test_server_ssl_config_writes_private_files(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    issued = authority.issue_server_certificate(["localhost"], [], now=_now(), days=1)
    assert issued.key_pem is not None
    directory = tmp_path / "tls"
    for _ in range(2):  # a second write replaces the files
        options = server_ssl_config(
            directory, ca_pem=authority.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem
        )
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / SERVER_KEY_FILE).stat().st_mode) == 0o600
    assert (directory / SERVER_KEY_FILE).read_bytes() == issued.key_pem
    assert (directory / SERVER_CERT_FILE).read_bytes() == issued.cert_pem
    assert (directory / CA_FILE).read_bytes() == authority.cert_pem
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE]
    )
    assert options == {
        "ssl_certfile": str(directory / SERVER_CERT_FILE),
        "ssl_keyfile": str(directory / SERVER_KEY_FILE),
        "ssl_ca_certs": str(directory / CA_FILE),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": ClientCertH11Protocol,
    }


def test_agent_context_refuses_a_key_of_another_certificate(
    authority: CertificateAuthority,
) -> None:
    one = _agent(authority, "a")
    two = _agent(authority, "b")
    assert two.key_pem is not None
    with pytest.raises(CertificateError, match="cannot be used together"):
        agent_ssl_context(authority.cert_pem, one.cert_pem, two.key_pem)
    with pytest.raises(CertificateError, match="CA certificate cannot be loaded"):
        enrolment_ssl_context(b"not a certificate")


def test_agent_context_trusts_only_the_ca(authority: CertificateAuthority) -> None:
    context = enrolment_ssl_context(authority.cert_pem)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1
