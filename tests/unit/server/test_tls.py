"""The server's TLS identity: created once, key file 0600, pin stable across restarts."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from voipclient.net.pins import pin_of_certificate, pin_of_der_certificate
from voipclient.server.tls import (
    CERT_FILE,
    KEY_FILE,
    TlsError,
    load_or_create,
    make_server_context,
)


def spki_pin(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    assert first.created
    assert (first.cert_path, first.key_path) == (tmp_path / CERT_FILE, tmp_path / KEY_FILE)
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    key = serialization.load_pem_private_key(first.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.issuer == cert.subject  # self-signed
    assert first.pin == spki_pin(cert) == pin_of_certificate(cert)
    assert len(base64.b64decode(first.pin.removeprefix("sha256/"))) == 32
    # No temporary files left behind (atomic writes).
    assert sorted(p.name for p in tmp_path.iterdir()) == [CERT_FILE, KEY_FILE]

    key_bytes, cert_bytes = first.key_path.read_bytes(), first.cert_path.read_bytes()
    second = load_or_create(tmp_path)
    assert not second.created
    assert second.pin == first.pin
    assert first.key_path.read_bytes() == key_bytes  # untouched
    assert first.cert_path.read_bytes() == cert_bytes


def test_key_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        identity = load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600


def test_lost_certificate_is_reissued_for_the_same_key(tmp_path: Path) -> None:
    pin = load_or_create(tmp_path).pin
    (tmp_path / CERT_FILE).unlink()
    again = load_or_create(tmp_path)
    assert again.pin == pin  # the pin is the key's, not the certificate's
    assert (tmp_path / CERT_FILE).exists()


def test_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(TlsError, match="missing"):
        load_or_create(tmp_path)


def test_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path / "a")
    load_or_create(tmp_path / "b")
    (tmp_path / "a" / CERT_FILE).write_bytes((tmp_path / "b" / CERT_FILE).read_bytes())
    with pytest.raises(TlsError, match="does not belong"):
        load_or_create(tmp_path / "a")


def test_configured_certificate_and_key_are_used_as_they_are(tmp_path: Path) -> None:
    made = load_or_create(tmp_path / "made")
    used = load_or_create(tmp_path / "data", made.cert_path, made.key_path)
    assert not used.created and used.pin == made.pin
    assert not (tmp_path / "data" / KEY_FILE).exists()
    with pytest.raises(TlsError, match="no such file"):
        load_or_create(tmp_path, tmp_path / "nope.pem", made.key_path)
    with pytest.raises(TlsError, match="together"):
        load_or_create(tmp_path, made.cert_path, None)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        load_or_create(tmp_path, garbage, made.key_path)


def test_context_is_tls13_only_and_serves_the_pinned_key(tmp_path: Path) -> None:
    identity = load_or_create(tmp_path)
    server_ctx = make_server_context(identity)
    assert server_ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    # An in-memory handshake: the client sees the certificate whose pin was printed.
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()
    assert client.version() == "TLSv1.3"
    der = client.getpeercert(binary_form=True)
    assert der is not None and pin_of_der_certificate(der) == identity.pin
