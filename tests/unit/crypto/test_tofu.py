"""TOFU store: the four outcomes, blocking after a verified key changes, persistence."""

from __future__ import annotations

import json

import pytest

from voipclient.crypto.tofu import (
    PinnedKey,
    TofuStore,
    TofuStoreCorrupt,
    TrustLevel,
    TrustStatus,
)
from voipclient.errors import LocalProtocolError

PIN = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_new_then_unchanged() -> None:
    store = TofuStore()
    assert store.observe(PIN, "bob", K1, 1000) is TrustStatus.NEW
    assert store.get(PIN, "bob") == PinnedKey(K1, 1000, TrustLevel.TOFU)
    assert store.observe(PIN, "bob", K1, 2000) is TrustStatus.UNCHANGED
    assert store.get(PIN, "bob") == PinnedKey(K1, 1000, TrustLevel.TOFU)
    assert not store.is_blocked(PIN, "bob", K1)


def test_pins_are_per_server_and_account() -> None:
    store = TofuStore()
    assert store.observe(PIN, "bob", K1, 1) is TrustStatus.NEW
    assert store.observe("sha256/other", "bob", K2, 1) is TrustStatus.NEW
    assert store.observe(PIN, "carol", K2, 1) is TrustStatus.NEW
    assert len(store) == 3


def test_changed_while_tofu_warns_and_keeps_the_pin() -> None:
    store = TofuStore()
    store.observe(PIN, "bob", K1, 1000)
    assert store.observe(PIN, "bob", K2, 5000) is TrustStatus.CHANGED_WHILE_TOFU
    pin = store.get(PIN, "bob")
    assert pin is not None
    assert pin.ik_pub == K1  # not replaced silently
    assert pin.warning and pin.changed_to == K2 and pin.changed_seen_ms == 5000
    assert not store.is_blocked(PIN, "bob", K2)  # warning, not a block
    # the warning persists: seeing the new key again still reports the change
    assert store.observe(PIN, "bob", K2, 6000) is TrustStatus.CHANGED_WHILE_TOFU
    # the user accepts the new key
    store.accept_new_key(PIN, "bob", K2, 7000)
    assert store.get(PIN, "bob") == PinnedKey(K2, 7000, TrustLevel.TOFU)
    assert store.observe(PIN, "bob", K2, 8000) is TrustStatus.UNCHANGED


def test_changed_while_verified_blocks_until_reverified() -> None:
    store = TofuStore()
    store.observe(PIN, "bob", K1, 1000)
    store.mark_verified(PIN, "bob", K1, 2000)
    assert store.get(PIN, "bob") == PinnedKey(K1, 1000, TrustLevel.VERIFIED)
    assert store.observe(PIN, "bob", K1, 3000) is TrustStatus.UNCHANGED
    assert store.observe(PIN, "bob", K2, 4000) is TrustStatus.CHANGED_WHILE_VERIFIED
    assert store.is_blocked(PIN, "bob", K2)
    assert store.is_blocked(PIN, "bob", K3)
    assert not store.is_blocked(PIN, "bob", K1)
    # accepting without verifying is not enough
    with pytest.raises(LocalProtocolError):
        store.accept_new_key(PIN, "bob", K2, 5000)
    assert store.is_blocked(PIN, "bob", K2)
    # re-verification with the new key unblocks it
    store.mark_verified(PIN, "bob", K2, 6000)
    assert not store.is_blocked(PIN, "bob", K2)
    assert store.get(PIN, "bob") == PinnedKey(K2, 6000, TrustLevel.VERIFIED)


def test_clear_verified_then_accept_is_an_explicit_downgrade() -> None:
    store = TofuStore()
    store.mark_verified(PIN, "bob", K1, 1)
    store.observe(PIN, "bob", K2, 2)
    store.clear_verified(PIN, "bob")
    assert not store.is_blocked(PIN, "bob", K2)
    store.accept_new_key(PIN, "bob", K2, 3)
    assert store.get(PIN, "bob") == PinnedKey(K2, 3, TrustLevel.TOFU)


def test_unknown_is_not_blocked_and_forget() -> None:
    store = TofuStore()
    assert not store.is_blocked(PIN, "nobody", K1)
    store.observe(PIN, "bob", K1, 1)
    store.forget(PIN, "bob")
    assert store.get(PIN, "bob") is None


@pytest.mark.parametrize(
    ("pin", "account", "key", "now"),
    [("", "bob", K1, 1), (PIN, "", K1, 1), (PIN, "bob", b"\x01" * 31, 1), (PIN, "bob", K1, -1)],
)
def test_bad_arguments_are_local_errors(pin: str, account: str, key: bytes, now: int) -> None:
    with pytest.raises(LocalProtocolError):
        TofuStore().observe(pin, account, key, now)


def test_round_trip() -> None:
    store = TofuStore()
    store.observe(PIN, "bob", K1, 1000)
    store.observe(PIN, "bob", K2, 1500)  # pending warning
    store.mark_verified(PIN, "carol", K3, 2000)
    store.observe("sha256/x", "dävid ✓", K2, 3000)
    data = store.to_bytes()
    assert json.loads(data)["version"] == 1
    again = TofuStore.from_bytes(data)
    for key in [(PIN, "bob"), (PIN, "carol"), ("sha256/x", "dävid ✓")]:
        assert again.get(*key) == store.get(*key)
    assert len(again) == 3
    assert again.to_bytes() == data
    assert TofuStore.from_bytes(TofuStore().to_bytes()).to_bytes() == TofuStore().to_bytes()


def _doc(**entry: object) -> bytes:
    base: dict[str, object] = {
        "server_pin": PIN,
        "account": "bob",
        "ik_pub": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "first_seen_ms": 1,
        "level": "tofu",
        "changed_to": None,
        "changed_seen_ms": None,
    }
    base.update(entry)
    return json.dumps({"format": "voipclient-tofu", "version": 1, "entries": [base]}).encode()


def test_valid_hand_written_document() -> None:
    store = TofuStore.from_bytes(_doc())
    assert store.get(PIN, "bob") == PinnedKey(K1, 1, TrustLevel.TOFU)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\xff\xfe", "$"),
        (b"{not json", "$"),
        (b"[]", "$"),
        (b'{"format": "other", "version": 1, "entries": []}', "format"),
        (b'{"format": "voipclient-tofu", "version": 2, "entries": []}', "version"),
        (b'{"format": "voipclient-tofu", "version": 1, "entries": {}}', "entries"),
        (b'{"format": "voipclient-tofu", "version": 1, "entries": [5]}', "entries[0]"),
        (_doc(ik_pub="AQID"), "entries[0].ik_pub"),
        (_doc(ik_pub="!!notbase64!!"), "entries[0].ik_pub"),
        (_doc(ik_pub=5), "entries[0].ik_pub"),
        (_doc(first_seen_ms="1"), "entries[0].first_seen_ms"),
        (_doc(first_seen_ms=True), "entries[0].first_seen_ms"),
        (_doc(first_seen_ms=-5), "entries[0].first_seen_ms"),
        (_doc(level="trusted"), "entries[0].level"),
        (_doc(level=None), "entries[0].level"),
        (_doc(account=""), "entries[0].account"),
        (_doc(server_pin=3), "entries[0].server_pin"),
        (_doc(changed_to="AQID"), "entries[0].changed_to"),
        (_doc(changed_seen_ms=1.5), "entries[0].changed_seen_ms"),
    ],
)
def test_malformed_store_names_the_problem(data: bytes, field: str) -> None:
    with pytest.raises(TofuStoreCorrupt) as info:
        TofuStore.from_bytes(data)
    assert info.value.field == field
    last = field.rsplit(".", maxsplit=1)[-1].split("[", maxsplit=1)[0]
    assert field == "$" or last in str(info.value)


def test_duplicate_entries_rejected() -> None:
    doc = json.loads(_doc())
    doc["entries"].append(dict(doc["entries"][0]))
    with pytest.raises(TofuStoreCorrupt, match="duplicate"):
        TofuStore.from_bytes(json.dumps(doc).encode())
