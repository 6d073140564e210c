"""Trust on first use for peers' identity keys (PROTOCOL §1). Pure: an adapter persists
:meth:`TofuStore.to_bytes` (it contains only public keys).

Per (server pin, account) the store holds the pinned IK public key, when it was first seen, the
trust level (``tofu`` or ``verified``) and, after a change, the key seen instead (``changed_to``).

=============================  ===========================================================
:meth:`TofuStore.observe`       outcome
=============================  ===========================================================
no entry                        ``NEW``: the key is pinned at level ``tofu``
same key as pinned              ``UNCHANGED``
other key, pinned is ``tofu``   ``CHANGED_WHILE_TOFU``: the pin is *not* replaced; the UI shows
                                a persistent warning until the user calls
                                :meth:`~TofuStore.accept_new_key` (or verifies the new key)
other key, pinned is verified   ``CHANGED_WHILE_VERIFIED``: blocked. ``is_blocked`` is true
                                for that key: no key is sent to or accepted from that user
                                until the new key is verified (``mark_verified``)
=============================  ===========================================================

Serialised form (UTF-8 JSON)::

    {"format": "voipclient-tofu", "version": 1,
     "entries": [{"server_pin": str, "account": str, "ik_pub": base64 (32 bytes),
                  "first_seen_ms": int, "level": "tofu" | "verified",
                  "changed_to": base64 | null, "changed_seen_ms": int | null}, ...]}
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass
from typing import Final

from voipclient.crypto.identity import PUBLIC_KEY_LEN
from voipclient.errors import LocalProtocolError

FORMAT: Final = "voipclient-tofu"
VERSION: Final = 1


class TrustLevel(enum.StrEnum):
    TOFU = "tofu"
    VERIFIED = "verified"


class TrustStatus(enum.Enum):
    NEW = "new"
    UNCHANGED = "unchanged"
    CHANGED_WHILE_TOFU = "changed while tofu"
    CHANGED_WHILE_VERIFIED = "changed while verified"


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """One peer's pin. ``changed_to`` is the differing key last observed, if any."""

    ik_pub: bytes
    first_seen_ms: int
    level: TrustLevel
    changed_to: bytes | None = None
    changed_seen_ms: int | None = None

    @property
    def warning(self) -> bool:
        """True while a key change is pending the user's decision."""
        return self.changed_to is not None


class TofuStoreCorrupt(LocalProtocolError):
    """The persisted TOFU store cannot be read; ``field`` names the offending item."""


def _check_key(ik_pub: bytes) -> bytes:
    if not isinstance(ik_pub, bytes) or len(ik_pub) != PUBLIC_KEY_LEN:
        raise LocalProtocolError(f"an identity key is {PUBLIC_KEY_LEN} bytes")
    return ik_pub


def _check_name(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise LocalProtocolError(f"{name} must be a non-empty str")
    return value


def _check_ms(now_ms: int) -> int:
    if not isinstance(now_ms, int) or isinstance(now_ms, bool) or now_ms < 0:
        raise LocalProtocolError("now_ms must be a non-negative int")
    return now_ms


class TofuStore:
    """(server pin, account) → :class:`PinnedKey`. Not thread-safe."""

    __slots__ = ("_pins",)

    def __init__(self) -> None:
        self._pins: dict[tuple[str, str], PinnedKey] = {}

    def get(self, server_pin: str, account: str) -> PinnedKey | None:
        return self._pins.get((server_pin, account))

    def __len__(self) -> int:
        return len(self._pins)

    def observe(self, server_pin: str, account: str, ik_pub: bytes, now_ms: int) -> TrustStatus:
        """Record that ``account`` on ``server_pin`` presents ``ik_pub`` now."""
        key = (_check_name("server_pin", server_pin), _check_name("account", account))
        _check_key(ik_pub)
        _check_ms(now_ms)
        pin = self._pins.get(key)
        if pin is None:
            self._pins[key] = PinnedKey(ik_pub, now_ms, TrustLevel.TOFU)
            return TrustStatus.NEW
        if pin.ik_pub == ik_pub:
            return TrustStatus.UNCHANGED
        self._pins[key] = PinnedKey(pin.ik_pub, pin.first_seen_ms, pin.level, ik_pub, now_ms)
        if pin.level is TrustLevel.VERIFIED:
            return TrustStatus.CHANGED_WHILE_VERIFIED
        return TrustStatus.CHANGED_WHILE_TOFU

    def accept_new_key(self, server_pin: str, account: str, ik_pub: bytes, now_ms: int) -> None:
        """The user re-trusts ``account`` with ``ik_pub`` (the key the warning showed): it is
        pinned at level ``tofu`` and the warning is cleared. Does not unblock a verified pin
        with a different key: that takes :meth:`mark_verified`."""
        key = (_check_name("server_pin", server_pin), _check_name("account", account))
        _check_key(ik_pub)
        _check_ms(now_ms)
        pin = self._pins.get(key)
        if pin is not None and pin.level is TrustLevel.VERIFIED and pin.ik_pub != ik_pub:
            raise LocalProtocolError("a verified key can only be replaced by verifying the new one")
        if pin is not None and pin.ik_pub == ik_pub:
            self._pins[key] = PinnedKey(ik_pub, pin.first_seen_ms, pin.level)
        else:
            self._pins[key] = PinnedKey(ik_pub, now_ms, TrustLevel.TOFU)

    def mark_verified(self, server_pin: str, account: str, ik_pub: bytes, now_ms: int) -> None:
        """The user compared safety numbers computed from ``ik_pub``: pin it as verified
        (replacing any other key, clearing any warning and any block)."""
        key = (_check_name("server_pin", server_pin), _check_name("account", account))
        _check_key(ik_pub)
        _check_ms(now_ms)
        pin = self._pins.get(key)
        first = pin.first_seen_ms if pin is not None and pin.ik_pub == ik_pub else now_ms
        self._pins[key] = PinnedKey(ik_pub, first, TrustLevel.VERIFIED)

    def clear_verified(self, server_pin: str, account: str) -> None:
        """Back to ``tofu`` for the pinned key (the user withdraws a verification)."""
        pin = self._pins.get((server_pin, account))
        if pin is not None:
            self._pins[(server_pin, account)] = PinnedKey(
                pin.ik_pub, pin.first_seen_ms, TrustLevel.TOFU, pin.changed_to, pin.changed_seen_ms
            )

    def rename(self, server_pin: str, old: str, new: str) -> None:
        """Move ``old``'s pin to the account key ``new`` (a change of how accounts are keyed);
        nothing happens when ``new`` already has a pin or ``old`` has none."""
        pin = self._pins.get((server_pin, old))
        if pin is not None and (server_pin, _check_name("account", new)) not in self._pins:
            del self._pins[(server_pin, old)]
            self._pins[(server_pin, new)] = pin

    def forget(self, server_pin: str, account: str) -> None:
        self._pins.pop((server_pin, account), None)

    def is_blocked(self, server_pin: str, account: str, ik_pub: bytes) -> bool:
        """True when ``account`` is pinned *verified* to a key other than ``ik_pub``."""
        pin = self._pins.get((server_pin, account))
        return pin is not None and pin.level is TrustLevel.VERIFIED and pin.ik_pub != ik_pub

    # -- persistence ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        entries = [
            {
                "server_pin": sp,
                "account": acct,
                "ik_pub": _b64(p.ik_pub),
                "first_seen_ms": p.first_seen_ms,
                "level": p.level.value,
                "changed_to": None if p.changed_to is None else _b64(p.changed_to),
                "changed_seen_ms": p.changed_seen_ms,
            }
            for (sp, acct), p in sorted(self._pins.items())
        ]
        doc = {"format": FORMAT, "version": VERSION, "entries": entries}
        return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> TofuStore:
        """Parse :meth:`to_bytes` output; raises :class:`TofuStoreCorrupt` naming the problem."""
        try:
            doc = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise TofuStoreCorrupt(f"TOFU store is not UTF-8 JSON: {exc}", field="$") from None
        if not isinstance(doc, dict):
            raise TofuStoreCorrupt("TOFU store must be a JSON object", field="$")
        if doc.get("format") != FORMAT:
            raise TofuStoreCorrupt(f"TOFU store format is not {FORMAT!r}", field="format")
        if doc.get("version") != VERSION:
            raise TofuStoreCorrupt(
                f"unsupported TOFU store version {doc.get('version')!r}", field="version"
            )
        entries = doc.get("entries")
        if not isinstance(entries, list):
            raise TofuStoreCorrupt("'entries' must be a list", field="entries")
        store = cls()
        for i, entry in enumerate(entries):
            where = f"entries[{i}]"
            if not isinstance(entry, dict):
                raise TofuStoreCorrupt(f"{where} must be an object", field=where)
            sp = _str(entry, "server_pin", where)
            acct = _str(entry, "account", where)
            if (sp, acct) in store._pins:
                raise TofuStoreCorrupt(f"{where}: duplicate ({sp!r}, {acct!r})", field=where)
            level_raw = entry.get("level")
            try:
                if not isinstance(level_raw, str):
                    raise ValueError(level_raw)
                level = TrustLevel(level_raw)
            except ValueError:
                raise TofuStoreCorrupt(
                    f"{where}.level: {level_raw!r} is not tofu|verified", field=f"{where}.level"
                ) from None
            changed = entry.get("changed_to")
            changed_ms = entry.get("changed_seen_ms")
            store._pins[(sp, acct)] = PinnedKey(
                ik_pub=_key(entry.get("ik_pub"), f"{where}.ik_pub"),
                first_seen_ms=_ms(entry.get("first_seen_ms"), f"{where}.first_seen_ms"),
                level=level,
                changed_to=None if changed is None else _key(changed, f"{where}.changed_to"),
                changed_seen_ms=None
                if changed_ms is None
                else _ms(changed_ms, f"{where}.changed_seen_ms"),
            )
        return store


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _str(entry: dict[str, object], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise TofuStoreCorrupt(
            f"{where}.{name} must be a non-empty string", field=f"{where}.{name}"
        )
    return value


def _key(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise TofuStoreCorrupt(f"{where} must be a base64 string", field=where)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TofuStoreCorrupt(f"{where} is not valid base64", field=where) from None
    if len(raw) != PUBLIC_KEY_LEN:
        raise TofuStoreCorrupt(f"{where} must decode to {PUBLIC_KEY_LEN} bytes", field=where)
    return raw


def _ms(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TofuStoreCorrupt(f"{where} must be a non-negative integer", field=where)
    return value
