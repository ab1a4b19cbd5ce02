"""The control plane's command line against a real server process on loopback: ``septum
server run`` (JSON logs, bootstrap token), ``push`` / ``provision`` / ``pull`` round trip,
``versions``, ``rollback`` and ``audit verify`` over the API and over the database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from septum.sources.files import load_repository
from tests.conftest import EXAMPLES

SEPTUM = [sys.executable, "-m", "septum.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    """Until the server process at ``url`` answers /readyz (fails if it exits first)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, Path, subprocess.Popen[str]]]:
    port = _free_port()
    data = tmp_path / "data"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            *SEPTUM,
            "server",
            "run",
            "--data",
            str(data),
            "--port",
            str(port),
            "--bootstrap-admin",
            "root",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        token = json.loads(proc.stdout.readline())["token"]
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield url, token, tmp_path, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _septum(
    *args: str, token: str | None = None, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEPTUM_TOKEN": token or ""}
    done = subprocess.run([*SEPTUM, *args], capture_output=True, text=True, env=env, check=False)
    if check is not None:
        assert done.returncode == check, done.stdout + done.stderr
    return done


def test_push_provision_pull_round_trip(
    server: tuple[str, str, Path, subprocess.Popen[str]],
) -> None:
    url, token, tmp, _proc = server
    pushed = _septum("push", str(EXAMPLES), "--server", url, "--json", token=token)
    assert json.loads(pushed.stdout)["changed"] > 100
    provisioned = _septum("provision", "--note", "first (TICKET-1)", "--server", url, token=token)
    assert "version 1:" in provisioned.stdout
    assert "39 assertion(s) pass" in provisioned.stdout
    out = tmp / "pulled"
    _septum("pull", str(out), "--server", url, token=token)
    assert load_repository(out) == load_repository(EXAMPLES)
    # The layout comes back too: the same files.
    files = sorted(p.relative_to(out) for p in out.rglob("*.yaml"))
    assert files == sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*.yaml"))

    # A broken repository is refused here, with file:line:column, and nothing is sent.
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "p.yaml").write_text(
        "apiVersion: septum/v1\nkind: Tier\nmetadata: {name: t}\nspec: {order: x}\n"
    )
    refused = _septum("push", str(broken), "--server", url, token=token, check=2)
    assert f"{broken}/p.yaml:4:" in refused.stderr
    assert (
        "nothing to provision"
        in _septum("provision", "--note", "again", "--server", url, token=token, check=2).stderr
    )

    listing = json.loads(_septum("versions", "--server", url, "--json", token=token).stdout)
    assert listing["active"] == 1
    assert _septum("rollback", "1", "--note", "same", "--server", url, token=token).returncode == 0

    verified = _septum("audit", "verify", "--server", url, "--json", token=token)
    report = json.loads(verified.stdout)
    assert report["ok"]
    assert report["entries"] >= 4
    # No token: a clean error and a non-zero exit.
    denied = _septum("versions", "--server", url, check=2)
    assert "401" in denied.stderr


def test_server_logs_json_and_audit_verify_offline(
    server: tuple[str, str, Path, subprocess.Popen[str]],
) -> None:
    url, token, tmp, proc = server
    _septum("push", str(EXAMPLES), "--server", url, token=token)
    proc.terminate()
    proc.wait(timeout=30)
    lines = [json.loads(x) for x in (tmp / "server.log").read_text().splitlines() if x.strip()]
    access = [x for x in lines if x.get("logger") == "septum.server.access"]
    assert any(
        x["route"] == "/api/v1/draft" and x["status"] == 200 and x["principal"] == "root"
        for x in access
    )
    ok = _septum("audit", "verify", "--data", str(tmp / "data"))
    assert "audit log intact" in ok.stdout
    import sqlite3

    db = sqlite3.connect(tmp / "data" / "septum.db")
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET target = 'forged' WHERE seq = 1")
    db.commit()
    db.close()
    bad = _septum("audit", "verify", "--data", str(tmp / "data"), check=1)
    assert "entry 1" in bad.stderr


def test_server_run_tls_serves_mutual_tls_with_the_databases_ca(tmp_path: Path) -> None:
    """``septum server run --tls``: HTTPS with a server certificate from the control plane's
    CA (its fingerprint printed at start and published at /agent/v1/ca); an enrolled agent's
    client certificate is accepted, and one from another CA fails the handshake."""
    import hashlib
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from septum.server.ca import CertificateAuthority, make_agent_key_and_csr
    from septum.server.tls import agent_ssl_context, enrolment_ssl_context

    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                *SEPTUM, "server", "run", "--data", str(tmp_path / "data"),
                "--port", str(port), "--tls", "--bootstrap-admin", "root",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            token = json.loads(proc.stdout.readline())["token"]
            url = f"https://127.0.0.1:{port}"
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            deadline = time.monotonic() + 60
            while True:
                try:
                    ca = httpx.get(f"{url}/agent/v1/ca", verify=unverified).json()
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            pem = ca["certificate"].encode()
            der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
            assert ca["fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
            assert ca["fingerprint"] in log.read_text()  # printed at start
            verified = enrolment_ssl_context(pem)
            assert httpx.get(f"{url}/healthz", verify=verified).status_code == 200
            # Enrol an agent, then call an agent route with its client certificate.
            join = httpx.post(
                f"{url}/api/v1/enforcers/host-tls-1/join-tokens",
                json={},
                headers={"Authorization": f"Bearer {token}"},
                verify=verified,
            ).json()
            key, csr = make_agent_key_and_csr("host-tls-1")
            enrolled = httpx.post(
                f"{url}/agent/v1/enrol",
                json={"token": join["token"], "csr": csr.decode()},
                verify=verified,
            )
            assert enrolled.status_code == 201, enrolled.text
            cert = enrolled.json()["certificate"].encode()
            whoami = httpx.get(f"{url}/agent/v1/whoami", verify=agent_ssl_context(pem, cert, key))
            assert whoami.json()["enforcer"] == "host-tls-1"
            assert whoami.json()["via"] == "certificate"
            # A certificate from another CA never completes the handshake.
            now = datetime.now(UTC)
            other = CertificateAuthority.create("another CA", now=now)
            k2, csr2 = make_agent_key_and_csr("host-tls-1")
            forged = other.sign_agent_csr(csr2, "host-tls-1", now=now)
            with pytest.raises(httpx.HTTPError):
                httpx.get(
                    f"{url}/agent/v1/whoami",
                    verify=agent_ssl_context(pem, forged.cert_pem, k2),
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
