"""Key backup format: round trip, passphrase rules, every byte region tampered, truncation,
bounded scrypt parameters, and merging the peers' pins into a TOFU store."""

from __future__ import annotations

import base64
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.crypto import backup as backup_mod
from voipclient.crypto.backup import (
    BACKUP_MAGIC,
    BACKUP_SUFFIX,
    HEADER_LEN,
    BackupCorrupt,
    BackupTooNew,
    BackupTruncated,
    IdentityBackup,
    PassphraseTooShort,
    check_backup_passphrase,
    decode_backup,
    encode_backup,
    merge_peers,
    peers_of_server,
    suggested_file_name,
)
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import DEFAULT_LOG2_N, KeyFileCodec, WrongPassphrase
from voipclient.crypto.tofu import PinnedKey, TofuStore, TrustLevel
from voipclient.errors import LocalProtocolError

FAST = 10  # scrypt log2(N) for tests only
PIN = "sha256/" + base64.b64encode(b"\x07" * 32).decode()
OTHER_PIN = "sha256/" + base64.b64encode(b"\x08" * 32).decode()
SERVER, ACCOUNT = "voice.example.org:64738", "ann"
PASS = "correct horse battery"
K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def sample_tofu() -> TofuStore:
    """Pins of PIN's server (verified, tofu, verified with a pending change) and another's."""
    store = TofuStore()
    store.observe(PIN, "bob", K1, 1000)
    store.mark_verified(PIN, "bob", K1, 2000)
    store.observe(PIN, "carol", K2, 1500)
    store.observe(PIN, "dave", K1, 1600)
    store.mark_verified(PIN, "dave", K1, 1700)
    store.observe(PIN, "dave", K3, 1800)  # changed while verified: blocked
    store.observe(OTHER_PIN, "erin", K2, 10)
    store.mark_verified(OTHER_PIN, "erin", K2, 11)
    return store


def sample(key: IdentityKey | None = None, *, pin: str | None = PIN) -> IdentityBackup:
    return IdentityBackup.of(
        SERVER,
        ACCOUNT,
        key or IdentityKey.generate(),
        server_pin=pin,
        tofu=sample_tofu(),
        created_ms=1_700_000_000_000,
        software_version="0.1.0",
    )


@pytest.fixture(scope="module")
def encoded() -> tuple[IdentityBackup, bytes]:
    b = sample()
    return b, encode_backup(b, PASS, scrypt_log2_n=FAST)


# -- round trip --------------------------------------------------------------------------------


def test_round_trip_keeps_key_names_pins_and_marks(encoded: tuple[IdentityBackup, bytes]) -> None:
    b, data = encoded
    got = decode_backup(data, PASS)
    assert got == b
    assert got.identity.public_bytes() == b.identity.public_bytes()
    assert [a for a, _ in got.peers] == ["bob", "carol", "dave"]  # only PIN's server
    assert got.verified_count == 2
    dave = dict(got.peers)["dave"]
    assert dave.level is TrustLevel.VERIFIED and dave.changed_to == K3  # still blocked
    assert data.startswith(BACKUP_MAGIC) and data[7] == FAST


def test_the_file_holds_no_plaintext(encoded: tuple[IdentityBackup, bytes]) -> None:
    b, data = encoded
    secret = b.private_key
    for form in (secret, secret.hex().encode(), base64.b64encode(secret), secret[:12]):
        assert form not in data
    for name in (SERVER, ACCOUNT, "carol", PIN):
        assert name.encode() not in data


def test_fresh_salt_and_nonce_each_time(encoded: tuple[IdentityBackup, bytes]) -> None:
    b, data = encoded
    again = encode_backup(b, PASS, scrypt_log2_n=FAST)
    assert again[10:38] != data[10:38] and again[HEADER_LEN:] != data[HEADER_LEN:]
    assert decode_backup(again, PASS) == b


def test_without_a_server_pin_there_are_no_peers() -> None:
    b = sample(pin=None)
    assert b.peers == ()
    assert decode_backup(encode_backup(b, PASS, scrypt_log2_n=FAST), PASS) == b


def test_default_scrypt_is_the_key_files() -> None:
    # The header says what was used; decoding the default takes ~0.4 s, so only the header.
    data = encode_backup(sample(), PASS)
    assert data[7:10] == bytes([DEFAULT_LOG2_N, 8, 1])


def test_the_private_key_is_not_shown_or_pickled() -> None:
    b = sample()
    assert b.private_key.hex() not in repr(b) and repr(b.private_key) not in repr(b)
    with pytest.raises(TypeError):
        pickle.dumps(b)


def test_invalid_backups_are_refused() -> None:
    key = IdentityKey.generate().private_bytes()
    with pytest.raises(LocalProtocolError):
        IdentityBackup("", ACCOUNT, key, None, (), 0, "v")
    with pytest.raises(LocalProtocolError):
        IdentityBackup(SERVER, ACCOUNT, key[:31], None, (), 0, "v")
    with pytest.raises(LocalProtocolError):  # pins without the server they belong to
        IdentityBackup(SERVER, ACCOUNT, key, None, sample().peers, 0, "v")
    with pytest.raises(LocalProtocolError):
        IdentityBackup(SERVER, ACCOUNT, key, PIN, (), -1, "v")
    with pytest.raises(LocalProtocolError):
        encode_backup(sample(), PASS, scrypt_log2_n=40)


# -- passphrase --------------------------------------------------------------------------------


def test_wrong_passphrase_is_said_plainly(encoded: tuple[IdentityBackup, bytes]) -> None:
    _, data = encoded
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        decode_backup(data, PASS + "!")


def test_passphrase_is_nfc_normalised() -> None:
    b = sample()
    data = encode_backup(b, "caf\u00e9 au lait", scrypt_log2_n=FAST)
    assert decode_backup(data, "cafe\u0301 au lait") == b


@pytest.mark.parametrize("short", ["", "1234567", "e\u0301" * 4])  # 8 code points, NFC: 4
def test_short_passphrases_are_refused_when_writing(short: str) -> None:
    with pytest.raises(PassphraseTooShort, match="at least 8"):
        check_backup_passphrase(short)
    with pytest.raises(PassphraseTooShort):
        encode_backup(sample(), short, scrypt_log2_n=FAST)


def test_eight_characters_are_enough() -> None:
    check_backup_passphrase("12345678")
    check_backup_passphrase("🔑🔑🔑🔑🔑🔑🔑🔑")


# -- damaged, truncated, crafted ----------------------------------------------------------------

#: (first byte, end, error every single-bit change there gives)
REGIONS = [
    ("magic", 0, 5, BackupCorrupt),
    ("kdf", 6, 7, BackupCorrupt),
    ("log2 N", 7, 8, WrongPassphrase),  # 10 -> 11: in range, derives another key
    ("r", 8, 9, WrongPassphrase),  # 8 -> 9
    ("p", 9, 10, BackupCorrupt),  # 1 -> 0: out of range
    ("salt", 10, 26, WrongPassphrase),
    ("nonce", 26, 38, BackupCorrupt),
    ("length", 38, 42, BackupCorrupt),
    ("check", 42, HEADER_LEN, WrongPassphrase),
    ("ciphertext", HEADER_LEN, HEADER_LEN + 40, BackupCorrupt),
]


@pytest.mark.parametrize(("name", "start", "end", "error"), REGIONS, ids=[r[0] for r in REGIONS])
def test_every_byte_of_each_region_is_protected(
    encoded: tuple[IdentityBackup, bytes], name: str, start: int, end: int, error: type[Exception]
) -> None:
    _, data = encoded
    for offset in range(start, end):
        bad = bytearray(data)
        bad[offset] ^= 0x01
        with pytest.raises(error):
            decode_backup(bytes(bad), PASS)


def test_the_tag_and_the_last_byte_are_protected(encoded: tuple[IdentityBackup, bytes]) -> None:
    _, data = encoded
    for offset in range(len(data) - 16, len(data)):
        bad = bytearray(data)
        bad[offset] ^= 0x80
        with pytest.raises(BackupCorrupt, match="damaged or was modified"):
            decode_backup(bytes(bad), PASS)


def test_version_byte(encoded: tuple[IdentityBackup, bytes]) -> None:
    _, data = encoded
    with pytest.raises(BackupTooNew, match="newer voipclient"):
        decode_backup(data[:5] + b"\x02" + data[6:], "any passphrase at all")
    with pytest.raises(BackupCorrupt, match="unknown backup format 0"):
        decode_backup(data[:5] + b"\x00" + data[6:], PASS)


def test_every_truncation_says_truncated(
    encoded: tuple[IdentityBackup, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = encoded
    monkeypatch.setattr(backup_mod, "derive_passphrase_key", _no_scrypt)
    for n in range(len(data)):
        with pytest.raises(BackupTruncated):
            decode_backup(data[:n], PASS)


def test_trailing_bytes_are_refused(encoded: tuple[IdentityBackup, bytes]) -> None:
    _, data = encoded
    with pytest.raises(BackupCorrupt, match="too many"):
        decode_backup(data + b"\x00", PASS)


def test_other_files_are_not_backups() -> None:
    key_file = KeyFileCodec(PASS, scrypt_log2_n=FAST).encode(
        SERVER, ACCOUNT, IdentityKey.generate()
    )
    for other in (key_file, b"PK\x03\x04" + bytes(100), b"{}", b"\x00" * 200):
        with pytest.raises(BackupCorrupt, match="not a voipclient key backup"):
            decode_backup(other, PASS)


def _no_scrypt(*_args: object, **_kwargs: object) -> bytes:
    raise AssertionError("scrypt must not run for this file")


def _header(log2_n: int, r: int, p: int, body_len: int = 100) -> bytes:
    return (
        BACKUP_MAGIC
        + bytes([1, 1, log2_n, r, p])
        + bytes(28)
        + body_len.to_bytes(4, "big")
        + bytes(16)
    )


@pytest.mark.parametrize(
    ("log2_n", "r", "p"),
    [
        (20, 8, 1),  # 1 GiB
        (18, 16, 1),  # 512 MiB
        (30, 8, 1),
        (255, 255, 255),
        (21, 1, 1),
        (9, 8, 1),  # too cheap: not written by voipclient
        (14, 0, 1),
        (14, 8, 5),
    ],
)
def test_crafted_scrypt_parameters_are_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, log2_n: int, r: int, p: int
) -> None:
    monkeypatch.setattr(backup_mod, "derive_passphrase_key", _no_scrypt)
    with pytest.raises(BackupCorrupt, match="out of range"):
        decode_backup(_header(log2_n, r, p) + bytes(100), PASS)


@pytest.mark.parametrize("body_len", [0, 49, 8 * 1024 * 1024 + 1, 2**32 - 1])
def test_crafted_lengths_are_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, body_len: int
) -> None:
    monkeypatch.setattr(backup_mod, "derive_passphrase_key", _no_scrypt)
    with pytest.raises(BackupCorrupt, match="impossible length"):
        decode_backup(_header(FAST, 8, 1, body_len) + bytes(100), PASS)


# -- names and the plaintext -------------------------------------------------------------------

names = st.text(min_size=1, max_size=40)
emoji = st.text(st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), min_size=1)


@given(
    server=st.one_of(names, emoji),
    account=st.one_of(names, emoji, st.just("a\u0301\u200b🔊 ann")),
    peers=st.dictionaries(
        st.one_of(names, emoji),
        st.tuples(st.binary(min_size=32, max_size=32), st.booleans()),
        max_size=5,
    ),
    created=st.integers(min_value=0, max_value=2**53),
    version=st.text(max_size=20),
)
@settings(max_examples=40, deadline=None)
def test_any_names_round_trip(
    server: str,
    account: str,
    peers: dict[str, tuple[bytes, bool]],
    created: int,
    version: str,
) -> None:
    tofu = TofuStore()
    for i, (peer, (key, verified)) in enumerate(peers.items()):
        tofu.observe(PIN, peer, key, i)
        if verified:
            tofu.mark_verified(PIN, peer, key, i)
    b = IdentityBackup.of(
        server,
        account,
        IdentityKey.generate(),
        server_pin=PIN,
        tofu=tofu,
        created_ms=created,
        software_version=version,
    )
    got = decode_backup(encode_backup(b, "🔑 passphrase", scrypt_log2_n=FAST), "🔑 passphrase")
    assert got == b
    assert {a for a, _ in got.peers} == set(peers)
    assert suggested_file_name(server, account).endswith(BACKUP_SUFFIX)


def test_suggested_file_name() -> None:
    assert suggested_file_name("voice.example.org:64738", "ann") == (
        "ann@voice.example.org_64738.vc1backup"
    )
    assert suggested_file_name("[::1]:64738", "bo/b 🎧") == "bo_b 🎧@[__1]_64738.vc1backup"


# -- the peers' pins -----------------------------------------------------------------------------


def test_peers_of_server_takes_only_that_server() -> None:
    peers = dict(peers_of_server(sample_tofu(), OTHER_PIN))
    assert peers == {"erin": PinnedKey(K2, 10, TrustLevel.VERIFIED)}
    assert peers_of_server(TofuStore(), PIN) == ()


def test_merge_into_an_empty_store_restores_every_pin_as_it_was() -> None:
    source = sample_tofu()
    store = TofuStore()
    outcome = merge_peers(store, PIN, peers_of_server(source, PIN))
    assert (outcome.added, outcome.verified, outcome.conflicts) == (3, 2, ())
    assert peers_of_server(store, PIN) == peers_of_server(source, PIN)
    assert store.is_blocked(PIN, "dave", K3)  # the pending change of a verified key


def test_merge_keeps_local_pins_upgrades_marks_and_reports_conflicts() -> None:
    store = TofuStore()
    store.observe(PIN, "bob", K1, 50)  # same key, tofu here: becomes verified
    store.observe(PIN, "carol", K3, 60)  # another key than the backup's: kept, reported
    store.mark_verified(PIN, "carol", K3, 61)
    store.observe(PIN, "zed", K2, 70)  # not in the backup: untouched
    outcome = merge_peers(store, PIN, peers_of_server(sample_tofu(), PIN))
    assert outcome.added == 1  # dave
    assert outcome.verified == 2  # bob raised, dave added verified
    assert store.get(PIN, "bob") == PinnedKey(K1, 50, TrustLevel.VERIFIED)  # local first-seen
    assert store.get(PIN, "carol") == PinnedKey(K3, 60, TrustLevel.VERIFIED)
    assert store.get(PIN, "zed") == PinnedKey(K2, 70, TrustLevel.TOFU)
    [conflict] = outcome.conflicts
    assert conflict.account == "carol"
    assert (conflict.local_key, conflict.local_verified) == (K3, True)
    assert (conflict.backup_key, conflict.backup_verified) == (K2, False)


def test_a_key_change_seen_here_blocks_once_the_old_key_is_verified() -> None:
    store = TofuStore()
    store.observe(PIN, "bob", K1, 50)
    store.observe(PIN, "bob", K2, 80)  # warning here, not yet a block
    assert not store.is_blocked(PIN, "bob", K2)
    outcome = merge_peers(store, PIN, peers_of_server(sample_tofu(), PIN)[:1])
    assert outcome.verified == 1
    assert store.get(PIN, "bob") == PinnedKey(K1, 50, TrustLevel.VERIFIED, K2, 80)
    assert store.is_blocked(PIN, "bob", K2)


def test_merging_twice_changes_nothing_more() -> None:
    store = TofuStore()
    peers = peers_of_server(sample_tofu(), PIN)
    merge_peers(store, PIN, peers)
    before = store.to_bytes()
    again = merge_peers(store, PIN, peers)
    assert (again.added, again.verified, again.conflicts) == (0, 0, ())
    assert store.to_bytes() == before
