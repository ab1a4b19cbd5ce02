"""The control plane's own certificate authority: server certificates and agent client certificates.

How an agent gets its identity::

    agent host                                       server
    ──────────                                       ──────
    make_agent_key_and_csr(name) ─► key stays here
            │ CSR + one-time join token (server-auth TLS only)
            └──────────────────────────────────────► token checked, names enforcer E
                                                     sign_agent_csr(csr, E) ─► certificate
            ◄──────────────────────────────────────┘  CN = E, SAN URI septum://enforcer/E
    mutual TLS from now on; the app reads E back with enforcer_of(certificate)

Design:

- **The private key never leaves the agent.** The agent generates it locally and sends only a
  certificate signing request; ``issue_agent_certificate`` (which makes the key itself) exists
  for tests and the bench only.
- **The name comes from the join token, not from the CSR.** The server decides which enforcer
  a token enrols and passes that name to ``sign_agent_csr``; of the CSR only the public key is
  used (after its signature proves the requester holds the private key). Its subject and any
  extensions it asks for are ignored, so an agent cannot claim another enforcer or a CA bit.
- **The identity is the SAN URI** ``septum://enforcer/<name>`` (percent-encoded); the CN carries
  the same name for people reading the certificate. ``enforcer_of`` reads only the URI.
- **Revocation is the app's job.** uvicorn hands OpenSSL a CA file and no CRL, and nothing here
  publishes CRLs or OCSP: a revoked certificate still completes the TLS handshake. The app must
  look up ``serial_of(certificate)`` in the database (revoked serials, the enforcer's current
  serial) on every agent request and refuse it there.
- **The clock is passed in** (``now``, timezone-aware) and never read here. Certificates start
  ``CLOCK_SKEW`` before ``now`` so that a host whose clock is a little behind still accepts them,
  and never outlive the CA that signed them.

Keys are EC P-256, signatures ECDSA with SHA-256, serials 159 random bits. Keys are PEM
(PKCS#8) without a passphrase: protecting them at rest (file modes, a secret store) is the
caller's job. Every call costs one or two EC operations (well under a millisecond).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from septum.errors import SeptumError

__all__ = [
    "CLOCK_SKEW",
    "ENFORCER_URI_PREFIX",
    "CertificateAuthority",
    "CertificateError",
    "IssuedCertificate",
    "enforcer_of",
    "fingerprint_of",
    "load_certificate",
    "make_agent_key_and_csr",
    "serial_of",
]

#: The SAN URI that names an agent's enforcer: this prefix, then the percent-encoded name.
ENFORCER_URI_PREFIX = "septum://enforcer/"
#: Certificates are valid from this long before ``now`` (hosts with a slow clock).
CLOCK_SKEW = timedelta(minutes=5)
#: X.509 limits a common name to 64 (UTF-8 bytes, as cryptography counts); the enforcer name is
#: put in the CN too.
_CN_MAX = 64
_CURVE = ec.SECP256R1()
#: Public keys accepted in an agent's CSR: what ``make_agent_key_and_csr`` makes, or stronger.
_CSR_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_MIN_BITS = 2048

Address = IPv4Address | IPv6Address


class CertificateError(SeptumError):
    """A certificate, key or signing request is malformed, not trusted or names nothing."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """One certificate the CA signed. ``key_pem`` is None when the key stayed with its owner
    (an agent's CSR); otherwise it is the PKCS#8 PEM private key, to be stored mode 0600."""

    cert_pem: bytes
    key_pem: bytes | None
    serial: int
    not_after: datetime
    #: sha256 of the DER certificate, lowercase hex (as ``fingerprint_of``).
    fingerprint: str
    #: The enforcer a client certificate is bound to; None for server certificates.
    enforcer: str | None = None
    #: The DNS names and addresses of a server certificate; empty for client certificates.
    hostnames: tuple[str, ...] = ()
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The CA's key and self-signed certificate as PEM.

    Constructing one checks that the key matches the certificate and that the certificate is
    a CA, so a damaged or swapped file is refused when it is loaded, not when an agent enrols.
    """

    key_pem: bytes
    cert_pem: bytes

    def __post_init__(self) -> None:
        cert = load_certificate(self.cert_pem)
        key = _load_ec_key(self.key_pem)
        if key.public_key() != cert.public_key():
            raise CertificateError("the CA key does not belong to the CA certificate")
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = None
        if basic is None or not basic.ca:
            raise CertificateError("the CA certificate is not a CA (BasicConstraints CA=false)")

    @classmethod
    def create(cls, common_name: str, *, now: datetime, days: int = 3650) -> CertificateAuthority:
        """A new CA with a fresh P-256 key, valid for ``days`` from ``now``. It signs only end
        entities (path length 0): there are no intermediate CAs."""
        _check_days(days)
        start = _utc(now)
        key = ec.generate_private_key(_CURVE)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Septum"),
                x509.NameAttribute(NameOID.COMMON_NAME, _common_name(common_name)),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key_pem=_key_pem(key), cert_pem=cert.public_bytes(serialization.Encoding.PEM))

    @property
    def certificate(self) -> x509.Certificate:
        return load_certificate(self.cert_pem)

    def issue_server_certificate(
        self,
        hostnames: Sequence[str],
        addresses: Sequence[Address],
        *,
        now: datetime,
        days: int = 365,
    ) -> IssuedCertificate:
        """A TLS server certificate (serverAuth) for these DNS names and IP addresses, with a
        fresh key. The CN is the first name, for display; clients check the SANs."""
        names = tuple(hostnames)
        ips = tuple(addresses)
        if not names and not ips:
            raise CertificateError("a server certificate needs at least one hostname or address")
        for h in names:
            if not h or not h.isascii() or any(c.isspace() for c in h):
                raise CertificateError(
                    f"hostname {h!r} is not an ASCII DNS name (use the IDNA form for others)"
                )
        key = ec.generate_private_key(_CURVE)
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in names]
        sans += [x509.IPAddress(a) for a in ips]
        cert = self._sign(
            subject=_common_name(names[0] if names else str(ips[0])),
            public_key=key.public_key(),
            sans=sans,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            now=now,
            days=days,
        )
        return _issued(cert, _key_pem(key), hostnames=names, addresses=ips)

    def sign_agent_csr(
        self, csr_pem: bytes, enforcer: str, *, now: datetime, days: int = 365
    ) -> IssuedCertificate:
        """Sign an agent's CSR as a client certificate (clientAuth) bound to ``enforcer``.

        ``enforcer`` is the name the join token enrols: it becomes the CN and the SAN URI, and
        whatever the CSR's subject says is ignored. The CSR's signature must verify (proof that
        the requester holds the key); its public key must be EC P-256/P-384 or RSA ≥ 2048.
        """
        _check_enforcer(enforcer)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise CertificateError(f"not a PEM certificate signing request: {e}") from None
        try:
            public_key = csr.public_key()
        except ValueError as e:
            raise CertificateError(f"the CSR's public key cannot be read: {e}") from None
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, _CSR_CURVES):
                raise CertificateError(
                    f"the CSR's EC key is on {public_key.curve.name}; "
                    "use secp256r1 (P-256) or secp384r1 (P-384)"
                )
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < _RSA_MIN_BITS:
                raise CertificateError(
                    f"the CSR's RSA key has {public_key.key_size} bits; at least "
                    f"{_RSA_MIN_BITS} are needed"
                )
        else:
            raise CertificateError(
                f"the CSR's key type {type(public_key).__name__} is not accepted; "
                "use EC P-256 (as make_agent_key_and_csr does)"
            )
        if not csr.is_signature_valid:
            raise CertificateError(
                "the certificate signing request's signature does not verify "
                "(it was altered, or not signed with the key it carries)"
            )
        cert = self._sign(
            subject=enforcer,
            public_key=public_key,
            sans=[x509.UniformResourceIdentifier(_enforcer_uri(enforcer))],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            now=now,
            days=days,
        )
        return _issued(cert, None, enforcer=enforcer)

    def issue_agent_certificate(
        self, enforcer: str, *, now: datetime, days: int = 365
    ) -> IssuedCertificate:
        """A client certificate with a key made here, for tests and the bench. Real agents use
        ``make_agent_key_and_csr`` so that their key never leaves the host."""
        key_pem, csr_pem = make_agent_key_and_csr(enforcer)
        issued = self.sign_agent_csr(csr_pem, enforcer, now=now, days=days)
        return replace(issued, key_pem=key_pem)

    def _sign(
        self,
        *,
        subject: str,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        now: datetime,
        days: int,
    ) -> x509.Certificate:
        _check_days(days)
        ca_cert = self.certificate
        ca_key = _load_ec_key(self.key_pem)
        start = _utc(now)
        if not ca_cert.not_valid_before_utc <= start < ca_cert.not_valid_after_utc:
            raise CertificateError(
                f"the CA is valid from {ca_cert.not_valid_before_utc.isoformat()} to "
                f"{ca_cert.not_valid_after_utc.isoformat()}, not at {start.isoformat()}"
            )
        # Never outlive the CA: a chain with an expired CA fails anyway, with a worse message.
        end = min(start + timedelta(days=days), ca_cert.not_valid_after_utc)
        try:
            ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:  # a CA made elsewhere
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(start - CLOCK_SKEW, ca_cert.not_valid_before_utc))
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )


def make_agent_key_and_csr(enforcer: str) -> tuple[bytes, bytes]:
    """What the agent runs on its host: a fresh P-256 key and a CSR for it, as
    ``(key_pem, csr_pem)``. Only the CSR is sent; the server decides the name it certifies."""
    _check_enforcer(enforcer)
    key = ec.generate_private_key(_CURVE)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, enforcer)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def load_certificate(cert_pem_or_der: bytes) -> x509.Certificate:
    """One certificate from PEM (the first in the text) or DER bytes."""
    try:
        if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert_pem_or_der)
        return x509.load_der_x509_certificate(cert_pem_or_der)
    except ValueError as e:
        raise CertificateError(f"not an X.509 certificate: {e}") from None


def enforcer_of(cert_pem_or_der: bytes) -> str:
    """The enforcer a client certificate is bound to, from its ``septum://enforcer/`` SAN URI.

    Does not check the signature, validity or revocation: call it on a certificate the TLS
    handshake already verified, and check ``serial_of`` against the database."""
    cert = load_certificate(cert_pem_or_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(
            f"certificate {_describe(cert)} has no subject alternative names, "
            "so it names no enforcer"
        ) from None
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(ENFORCER_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise CertificateError(
            f"certificate {_describe(cert)} has {len(uris)} {ENFORCER_URI_PREFIX} URIs, "
            "not exactly one"
        )
    try:
        name = unquote(uris[0].removeprefix(ENFORCER_URI_PREFIX), errors="strict")
        _check_enforcer(name)
    except UnicodeDecodeError:
        raise CertificateError(
            f"certificate {_describe(cert)}: {uris[0]!r} is not percent-encoded UTF-8"
        ) from None
    except CertificateError as e:
        raise CertificateError(f"certificate {_describe(cert)}: {e}") from None
    return name


def serial_of(cert_pem_or_der: bytes) -> int:
    """The certificate's serial number: the key for revocation in the database."""
    return load_certificate(cert_pem_or_der).serial_number


def fingerprint_of(cert_pem_or_der: bytes) -> str:
    """sha256 of the DER certificate, lowercase hex without separators."""
    return load_certificate(cert_pem_or_der).fingerprint(hashes.SHA256()).hex()


def _issued(
    cert: x509.Certificate,
    key_pem: bytes | None,
    *,
    enforcer: str | None = None,
    hostnames: tuple[str, ...] = (),
    addresses: tuple[Address, ...] = (),
) -> IssuedCertificate:
    return IssuedCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        enforcer=enforcer,
        hostnames=hostnames,
        addresses=addresses,
    )


def _enforcer_uri(enforcer: str) -> str:
    return ENFORCER_URI_PREFIX + quote(enforcer, safe="")


def _check_enforcer(name: str) -> None:
    if not _fits_cn(name) or not name.isprintable() or name != name.strip():
        raise CertificateError(
            f"enforcer name {name!r} cannot be certified: it must be printable, without "
            f"surrounding spaces, and 1 to {_CN_MAX} bytes in UTF-8"
        )


def _common_name(text: str) -> str:
    if not _fits_cn(text):
        raise CertificateError(f"common name {text!r} must be 1 to {_CN_MAX} bytes in UTF-8")
    return text


def _fits_cn(text: str) -> bool:
    # X.509's bound is counted in bytes of the UTF8String, as cryptography checks it.
    return 1 <= len(text.encode("utf-8", errors="replace")) <= _CN_MAX


def _check_days(days: int) -> None:
    if days < 1:
        raise CertificateError(f"a certificate must be valid for at least one day, not {days}")


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ec_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the CA key is {type(key).__name__}, not an EC key")
    return key


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x})"
