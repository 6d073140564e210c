"""The server's TLS identity: a self-signed ECDSA P-256 certificate, its pin, the SSL context.

Clients do not use certificate authorities: they pin the server's public key (PROTOCOL §1),
``sha256/<base64(SHA-256(DER SubjectPublicKeyInfo))>`` (RFC 7469 style). The pin depends only on
the key, so a certificate re-issued for the same key keeps it.

On first start :func:`load_or_create` writes ``server-key.pem`` (mode 0600) and
``server-cert.pem`` into the data directory, each atomically (a temporary file in the same
directory, fsync, ``os.replace``, fsync of the directory), so a crash never leaves half a key.
When the configuration names a certificate and key, those are used as they are.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voipclient.net.pins import pin_of_certificate
from voipclient.storage.atomic import atomic_write

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "TlsError",
    "TlsIdentity",
    "load_or_create",
    "make_server_context",
]

log = logging.getLogger("voipclient.server.tls")

CERT_FILE: Final = "server-cert.pem"
KEY_FILE: Final = "server-key.pem"
#: RFC 5280 §4.1.2.5: "no well-defined expiration date". Clients pin the key, and a pinning
#: client that also rejected expired certificates would lock its users out one day.
_NOT_AFTER: Final = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class TlsIdentity:
    """Where the certificate and key are, and the pin clients check."""

    cert_path: Path
    key_path: Path
    #: ``sha256/<base64>`` of the certificate's SubjectPublicKeyInfo.
    pin: str
    #: True when this start created the key and certificate.
    created: bool


def _new_certificate(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)  # clock skew
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The private key at ``path``, or None for a key type we do not create."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM certificate ({exc})") from None


def _warn_if_readable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file is accessible to other users path=%s mode=%o", path, mode & 0o777)


def load_or_create(
    data_dir: Path,
    cert_path: Path | None = None,
    key_path: Path | None = None,
    *,
    common_name: str = "voipclient-server",
) -> TlsIdentity:
    """The server's certificate and key.

    With ``cert_path`` and ``key_path`` (from the configuration) those files are checked and used.
    Otherwise ``data_dir/server-cert.pem`` and ``data_dir/server-key.pem`` are used, created on
    first start (ECDSA P-256, self-signed); a missing certificate is re-issued for an existing key
    (same pin). A certificate without its key is an error rather than a silent new identity: the
    pin users accepted would change.
    """
    if (cert_path is None) != (key_path is None):
        raise TlsError("tls.cert and tls.key must be given together")
    if cert_path is not None and key_path is not None:
        for p in (cert_path, key_path):
            if not p.is_file():
                raise TlsError(f"{p}: no such file")
        cert = _load_cert(cert_path)
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        _warn_if_readable_by_others(key_path)
        return TlsIdentity(cert_path, key_path, pin_of_certificate(cert), created=False)

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_file, key_file = data_dir / CERT_FILE, data_dir / KEY_FILE
    created = False
    if key_file.exists():
        key = _load_key(key_file)
        if key is None:
            raise TlsError(f"{key_file}: not an ECDSA key")
        _warn_if_readable_by_others(key_file)
    else:
        if cert_file.exists():
            raise TlsError(
                f"{cert_file} exists but its key {key_file} is missing; restore the key, or "
                "delete the certificate to create a new identity (clients will see a new pin)"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(key_file, pem, 0o600)
        created = True
        log.info("created a new ECDSA P-256 server key path=%s", key_file)
    if cert_file.exists():
        cert = _load_cert(cert_file)
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise TlsError(f"{cert_file} does not belong to the key in {key_file}")
    else:
        cert = _new_certificate(key, common_name)
        atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("created a self-signed certificate path=%s", cert_file)
    return TlsIdentity(cert_file, key_file, pin_of_certificate(cert), created=created)


def make_server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """A server-side context that speaks TLS 1.3 only and asks for no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(identity.cert_path, identity.key_path)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load {identity.cert_path} / {identity.key_path}: {exc}") from None
    ctx.verify_mode = ssl.CERT_NONE
    # No session tickets: nothing to resume across restarts, and no ticket key to protect.
    ctx.num_tickets = 0
    return ctx
