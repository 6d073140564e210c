"""The server pin store: which TLS key (SPKI pin) the user approved for each ``host:port``.

PROTOCOL §1: clients pin the server's public key, ``sha256/<base64(SHA-256(DER SPKI))>``
(:func:`pin_of_der_certificate`), instead of trusting certificate authorities.

:meth:`PinStore.check` decides, per connection, before any application byte is written:

==========================  ==================================================================
stored pin for host:port    verdict (:class:`PinStatus`)
==========================  ==================================================================
none                        ``NEEDS_APPROVAL``: the UI shows the presented pin and asks; on
                            approve :meth:`PinStore.approve` then save, on reject refuse
same as presented           ``OK``
different                   ``MISMATCH``: refuse; the message names both pins and what to do
==========================  ==================================================================

:class:`PinStore` is pure (bytes in, bytes out). ``voipclient.storage.trust.PinFile`` is its
adapter: a JSON file in
the user's config directory (the path is injected), written atomically (temporary file, fsync,
rename, mode 0600). A malformed file is an error (:class:`PinStoreCorrupt`, naming the file,
line and column) and is never silently reset: resetting would turn a pinned server back into
"first contact" and let an attacker's key be approved.

``voipclient.storage.trust.TofuFile`` is the same kind of adapter for the *peers'* pinned
identity keys (:class:`~voipclient.crypto.tofu.TofuStore`, ``peer-keys.json``), written the
same way. An unreadable peer-key file does not stop the client (every peer then shows as not
verified, which is safe): it is moved aside, never overwritten, and the reason goes to the UI.

Pins are public (a hash of the server's public key; the server prints it at start), so the file
holds no secret. It is still written 0600, since the list of servers a user visits is theirs.

File format (UTF-8 JSON)::

    {"format": "voipclient-server-pins", "version": 1,
     "servers": {"<host>:<port>": {"pin": "sha256/<44 base64 chars>", "approved_ms": int}}}
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "FORMAT",
    "VERSION",
    "PinStatus",
    "PinStore",
    "PinStoreCorrupt",
    "PinVerdict",
    "pin_of_certificate",
    "pin_of_der_certificate",
    "server_key",
]

FORMAT: Final = "voipclient-server-pins"
VERSION: Final = 1
PIN_PREFIX: Final = "sha256/"
_DIGEST_LEN: Final = 32


class PinStatus(enum.Enum):
    OK = "ok"
    NEEDS_APPROVAL = "needs_approval"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class PinVerdict:
    """The outcome of :meth:`PinStore.check`."""

    status: PinStatus
    #: ``host:port`` as stored.
    server: str
    #: The pin the server presented in this TLS handshake.
    presented: str
    #: The approved pin, if any.
    stored: str | None
    #: For the UI / log: what happened and what the user can do.
    message: str

    @property
    def ok(self) -> bool:
        return self.status is PinStatus.OK


class PinStoreCorrupt(Exception):
    """The pin file cannot be used; the message names the file, the line and what is wrong."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def server_key(host: str, port: int) -> str:
    """``host:port`` as the store keys it: host lower-cased, IPv6 literals in brackets."""
    if not isinstance(host, str) or not host.strip("[]"):
        raise ValueError("host must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, not {port!r}")
    host = host.strip("[]").lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_valid_pin(pin: object) -> bool:
    """``sha256/`` + standard base64 of 32 bytes."""
    if not isinstance(pin, str) or not pin.startswith(PIN_PREFIX):
        return False
    try:
        raw = base64.b64decode(pin[len(PIN_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _DIGEST_LEN


@dataclass(frozen=True, slots=True)
class _Entry:
    pin: str
    approved_ms: int


class PinStore:
    """``host:port`` → approved pin. Pure; not thread-safe."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, server: str) -> str | None:
        entry = self._entries.get(server)
        return None if entry is None else entry.pin

    def servers(self) -> Mapping[str, str]:
        return {s: e.pin for s, e in sorted(self._entries.items())}

    def check(self, server: str, presented: str) -> PinVerdict:
        """What to do with a server at ``server`` (:func:`server_key`) presenting ``presented``."""
        stored = self.get(server)
        if stored is None:
            return PinVerdict(
                PinStatus.NEEDS_APPROVAL,
                server,
                presented,
                None,
                f"First connection to {server}. It presents the key pin {presented}. Compare it "
                "with the pin the server's operator gave you (the server prints it when it "
                "starts) and approve it only if they are the same.",
            )
        if stored == presented:
            return PinVerdict(PinStatus.OK, server, presented, stored, f"{server}: key pin ok")
        return PinVerdict(
            PinStatus.MISMATCH,
            server,
            presented,
            stored,
            f"The server {server} presented the key pin {presented}, but the pin you approved "
            f"for it is {stored}. Not connecting: someone may be intercepting the connection. "
            "If the server's operator confirms that the server's key changed and gives you the "
            "new pin, remove the stored pin for this server and connect again to approve the "
            "new one.",
        )

    def approve(self, server: str, pin: str, now_ms: int) -> None:
        """The user approved ``pin`` for ``server`` (first contact, or after :meth:`forget`)."""
        if not server or not isinstance(server, str):
            raise ValueError("server must be a non-empty string")
        if not is_valid_pin(pin):
            raise ValueError(f"not a key pin: {pin!r} (expected sha256/<base64 of 32 bytes>)")
        if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
            raise ValueError("now_ms must be a non-negative int")
        self._entries[server] = _Entry(pin, now_ms)

    def forget(self, server: str) -> None:
        """Remove the stored pin (the user confirmed a key change with the operator)."""
        self._entries.pop(server, None)

    # -- persistence -------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "servers": {
                s: {"pin": e.pin, "approved_ms": e.approved_ms}
                for s, e in sorted(self._entries.items())
            },
        }
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "pin file") -> PinStore:
        """Parse :meth:`to_bytes` output. Raises :class:`PinStoreCorrupt` naming ``source``, the
        line and column (JSON syntax) or the line and item (content)."""
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            line = bytes(data)[: exc.start].count(b"\n") + 1
            raise PinStoreCorrupt(
                f"{source}, line {line}: not UTF-8 text; {_FIX}", line=line
            ) from None
        try:
            doc = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise PinStoreCorrupt(
                f"{source}, line {exc.lineno} column {exc.colno}: {exc.msg}; {_FIX}",
                line=exc.lineno,
                column=exc.colno,
            ) from None
        except _Duplicate as exc:
            line = _line_of(text, json.dumps(exc.key))
            raise PinStoreCorrupt(
                f"{source}, line {line}: {exc.key!r} appears twice; {_FIX}", line=line
            ) from None

        def bad(what: str, needle: str | None = None) -> PinStoreCorrupt:
            line = _line_of(text, needle) if needle else 1
            return PinStoreCorrupt(f"{source}, line {line}: {what}; {_FIX}", line=line)

        if not isinstance(doc, dict):
            raise bad("the file must hold a JSON object")
        if doc.get("format") != FORMAT:
            raise bad(f"'format' must be {FORMAT!r}", '"format"')
        if doc.get("version") != VERSION:
            raise bad(f"unsupported version {doc.get('version')!r}", '"version"')
        servers = doc.get("servers")
        if not isinstance(servers, dict):
            raise bad("'servers' must be an object", '"servers"')
        store = cls()
        for server, entry in servers.items():
            where = json.dumps(server)
            if not server:
                raise bad("empty server name", where)
            if not isinstance(entry, dict):
                raise bad(f"servers[{where}] must be an object", where)
            pin = entry.get("pin")
            if not is_valid_pin(pin):
                raise bad(f"servers[{where}].pin is not a sha256/ key pin", where)
            ms = entry.get("approved_ms")
            if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
                raise bad(f"servers[{where}].approved_ms must be a non-negative integer", where)
            assert isinstance(pin, str)
            store._entries[server] = _Entry(pin, ms)
        return store


_FIX: Final = (
    "fix or remove the file by hand (it holds only public server key pins; without it every "
    "server counts as new and must be approved again)"
)


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _line_of(text: str, needle: str) -> int:
    """The line of the last occurrence of ``needle`` (a JSON-encoded key), else 1."""
    at = text.rfind(needle)
    return 1 if at < 0 else text.count("\n", 0, at) + 1


def pin_of_certificate(cert: x509.Certificate) -> str:
    """``sha256/<base64(SHA-256(DER SubjectPublicKeyInfo))>`` (PROTOCOL §1)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def pin_of_der_certificate(der: bytes) -> str:
    """The pin of a DER certificate as a TLS peer presents it (``getpeercert(True)``)."""
    return pin_of_certificate(x509.load_der_x509_certificate(der))
