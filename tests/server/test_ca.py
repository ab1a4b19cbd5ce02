"""The CA: what it signs verifies against it under an RFC 5280 profile, and an agent's
certificate names the enforcer the server chose, whatever its CSR claimed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.errors import SeptumError
from septum.server import ca as ca_module
from septum.server.ca import (
    CLOCK_SKEW,
    CertificateAuthority,
    CertificateError,
    enforcer_of,
    fingerprint_of,
    make_agent_key_and_csr,
    serial_of,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
#: For the property test (hypothesis does not mix with function-scoped fixtures).
_AUTHORITY = CertificateAuthority.create("Septum property CA", now=NOW)


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create("Septum test CA", now=NOW)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _verify_client(authority: CertificateAuthority, pem: bytes, at: datetime = NOW) -> None:
    verifier = PolicyBuilder().store(Store([authority.certificate])).time(at)
    verifier.build_client_verifier().verify(_cert(pem), [])


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_errors_are_septum_errors() -> None:
    assert issubclass(CertificateError, SeptumError)
    assert set(ca_module.__all__) <= set(dir(ca_module))


def test_ca_certificate_is_a_proper_root(authority: CertificateAuthority) -> None:
    cert = authority.certificate
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)


def test_ca_refuses_a_key_that_is_not_its_own(authority: CertificateAuthority) -> None:
    other = CertificateAuthority.create("other", now=NOW)
    with pytest.raises(CertificateError, match="does not belong"):
        CertificateAuthority(key_pem=other.key_pem, cert_pem=authority.cert_pem)


def test_ca_refuses_a_certificate_that_is_not_a_ca(authority: CertificateAuthority) -> None:
    leaf = authority.issue_agent_certificate("host-web-1", now=NOW)
    assert leaf.key_pem is not None
    with pytest.raises(CertificateError, match="not a CA"):
        CertificateAuthority(key_pem=leaf.key_pem, cert_pem=leaf.cert_pem)


def test_ca_refuses_garbage() -> None:
    with pytest.raises(CertificateError, match=r"not an X\.509 certificate"):
        CertificateAuthority(key_pem=b"", cert_pem=b"-----BEGIN CERTIFICATE-----\nxx\n")


def test_signed_csr_verifies_against_the_ca(authority: CertificateAuthority) -> None:
    key_pem, csr_pem = make_agent_key_and_csr("host-web-1")
    issued = authority.sign_agent_csr(csr_pem, "host-web-1", now=NOW)
    _verify_client(authority, issued.cert_pem)
    cert = _cert(issued.cert_pem)
    assert issued.key_pem is None  # the key stayed with the agent
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.serial == cert.serial_number == serial_of(issued.cert_pem)
    assert issued.fingerprint == fingerprint_of(issued.cert_pem)
    assert len(issued.fingerprint) == 64
    assert issued.not_after == NOW + timedelta(days=365)
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW


def test_the_name_comes_from_the_argument_not_the_csr(authority: CertificateAuthority) -> None:
    _, csr_pem = make_agent_key_and_csr("host-db-1")  # the agent claims to be the database
    issued = authority.sign_agent_csr(csr_pem, "host-web-1", now=NOW)  # the token says web
    cert = _cert(issued.cert_pem)
    assert issued.enforcer == "host-web-1"
    assert enforcer_of(issued.cert_pem) == "host-web-1"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host-web-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["septum://enforcer/host-web-1"]


def test_extensions_requested_in_the_csr_are_ignored(authority: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("septum://enforcer/db")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    issued = authority.sign_agent_csr(
        csr.public_bytes(serialization.Encoding.PEM), "host-web-1", now=NOW
    )
    cert = _cert(issued.cert_pem)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert enforcer_of(issued.cert_pem) == "host-web-1"


def test_a_csr_with_a_bad_signature_is_refused(authority: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = x509.load_pem_x509_csr(_csr(key, "agent-x")).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"agent-x", b"agent-y")  # same length: still parses
    assert tampered != der
    pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateError, match="signature does not verify"):
        authority.sign_agent_csr(pem, "agent-x", now=NOW)


def test_a_csr_signed_by_another_key_is_refused(authority: CertificateAuthority) -> None:
    """A CSR carrying someone else's public key but signed by the requester's key."""
    mine = ec.generate_private_key(ec.SECP256R1())
    theirs = ec.generate_private_key(ec.SECP256R1()).public_key()
    good = x509.load_pem_x509_csr(_csr(mine, "a")).public_bytes(serialization.Encoding.DER)
    mine_spki = mine.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    their_spki = theirs.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    swapped = x509.load_der_x509_csr(good.replace(mine_spki, their_spki))
    with pytest.raises(CertificateError, match="signature does not verify"):
        authority.sign_agent_csr(swapped.public_bytes(serialization.Encoding.PEM), "a", now=NOW)


@pytest.mark.parametrize("text", [b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nzz\n"])
def test_garbage_is_not_a_csr(authority: CertificateAuthority, text: bytes) -> None:
    with pytest.raises(CertificateError, match="not a PEM certificate signing request"):
        authority.sign_agent_csr(text, "host-web-1", now=NOW)


def test_a_weak_key_is_refused(authority: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CertificateError, match="at least 2048"):
        authority.sign_agent_csr(_csr(weak, "a"), "a", now=NOW)
    odd_curve = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(CertificateError, match="secp256k1"):
        authority.sign_agent_csr(_csr(odd_curve, "a"), "a", now=NOW)


def test_an_rsa_csr_is_accepted(authority: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = authority.sign_agent_csr(_csr(key, "a"), "host-rsa-1", now=NOW)
    _verify_client(authority, issued.cert_pem)
    assert enforcer_of(issued.cert_pem) == "host-rsa-1"


@pytest.mark.parametrize("name", ["", " host", "host ", "a\nb", "x" * 65, "é" * 33])
def test_names_that_cannot_be_certified(authority: CertificateAuthority, name: str) -> None:
    _, csr_pem = make_agent_key_and_csr("ok")
    with pytest.raises(CertificateError, match="cannot be certified"):
        authority.sign_agent_csr(csr_pem, name, now=NOW)


@settings(max_examples=40, deadline=None)
@given(
    name=st.text(min_size=1, max_size=64).filter(
        lambda s: s.isprintable() and s == s.strip() and len(s.encode()) <= 64
    )
)
def test_any_certifiable_name_round_trips_through_the_uri(name: str) -> None:
    authority = _AUTHORITY
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.sign_agent_csr(_csr(key, "x"), name, now=NOW)
    assert enforcer_of(issued.cert_pem) == name
    uri = (
        _cert(issued.cert_pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.UniformResourceIdentifier)[0]
    )
    assert uri.isascii()


def test_enforcer_of_reads_der_too(authority: CertificateAuthority) -> None:
    issued = authority.issue_agent_certificate("host-web-1", now=NOW)
    der = _cert(issued.cert_pem).public_bytes(serialization.Encoding.DER)
    assert enforcer_of(der) == "host-web-1"
    assert serial_of(der) == issued.serial
    assert fingerprint_of(der) == issued.fingerprint


def test_enforcer_of_refuses_certificates_without_the_uri(
    authority: CertificateAuthority,
) -> None:
    server = authority.issue_server_certificate(["api.example"], [], now=NOW)
    with pytest.raises(CertificateError, match="0 septum://enforcer/ URIs"):
        enforcer_of(server.cert_pem)
    with pytest.raises(CertificateError, match="no subject alternative names"):
        enforcer_of(authority.cert_pem)
    with pytest.raises(CertificateError, match=r"not an X\.509 certificate"):
        enforcer_of(b"\x30\x03\x02\x01\x01")


def test_issue_agent_certificate_makes_a_matching_key(authority: CertificateAuthority) -> None:
    issued = authority.issue_agent_certificate("host-web-1", now=NOW, days=30)
    assert issued.key_pem is not None
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert _cert(issued.cert_pem).public_key() == key.public_key()
    assert issued.not_after == NOW + timedelta(days=30)
    _verify_client(authority, issued.cert_pem)


def test_serials_are_random(authority: CertificateAuthority) -> None:
    serials = {authority.issue_agent_certificate("a", now=NOW).serial for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_a_certificate_from_another_ca_does_not_verify(authority: CertificateAuthority) -> None:
    other = CertificateAuthority.create("other", now=NOW)
    foreign = other.issue_agent_certificate("host-web-1", now=NOW)
    with pytest.raises(VerificationError):
        _verify_client(authority, foreign.cert_pem)


def test_an_expired_certificate_does_not_verify(authority: CertificateAuthority) -> None:
    issued = authority.issue_agent_certificate("host-web-1", now=NOW, days=1)
    _verify_client(authority, issued.cert_pem, at=NOW + timedelta(hours=23))
    with pytest.raises(VerificationError):
        _verify_client(authority, issued.cert_pem, at=NOW + timedelta(days=1, seconds=1))


def test_certificates_never_outlive_the_ca() -> None:
    short = CertificateAuthority.create("short", now=NOW, days=10)
    issued = short.issue_agent_certificate("a", now=NOW, days=365)
    assert issued.not_after == NOW + timedelta(days=10)
    with pytest.raises(CertificateError, match="the CA is valid from"):
        short.issue_agent_certificate("a", now=NOW + timedelta(days=11))
    with pytest.raises(CertificateError, match="the CA is valid from"):
        short.issue_agent_certificate("a", now=NOW - timedelta(days=1))


def test_server_certificate_names_and_usage(authority: CertificateAuthority) -> None:
    issued = authority.issue_server_certificate(
        ["septum.example", "localhost"],
        [ip_address("127.0.0.1"), ip_address("::1")],
        now=NOW,
        days=90,
    )
    cert = _cert(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["septum.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ip_address("127.0.0.1"),
        ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "septum.example"
    assert issued.hostnames == ("septum.example", "localhost")
    assert issued.enforcer is None
    assert issued.key_pem is not None
    assert issued.not_after == NOW + timedelta(days=90)

    builder = PolicyBuilder().store(Store([authority.certificate])).time(NOW)
    for subject in (DNSName("septum.example"), IPAddress(ip_address("127.0.0.1"))):
        builder.build_server_verifier(subject).verify(cert, [])
    with pytest.raises(VerificationError):
        builder.build_server_verifier(DNSName("other.example")).verify(cert, [])
    with pytest.raises(VerificationError):  # a server certificate is no client certificate
        builder.build_client_verifier().verify(cert, [])


def test_server_certificate_needs_a_name(authority: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="at least one"):
        authority.issue_server_certificate([], [], now=NOW)
    with pytest.raises(CertificateError, match="not an ASCII DNS name"):
        authority.issue_server_certificate(["bücher.example"], [], now=NOW)
    only_ip = authority.issue_server_certificate([], [ip_address("127.0.0.1")], now=NOW)
    assert _cert(only_ip.cert_pem).subject.rfc4514_string() == "CN=127.0.0.1"


def test_the_clock_must_be_timezone_aware(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        authority.issue_agent_certificate("a", now=datetime(2030, 1, 1))


def test_days_must_be_positive(authority: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="at least one day"):
        authority.issue_agent_certificate("a", now=NOW, days=0)
