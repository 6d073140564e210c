"""Server pin store: first contact, match, mismatch; the JSON file (atomic, errors name lines).
The peers' pinned keys file (TofuFile): atomic like it, an unreadable one kept aside."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from voipclient.crypto.tofu import TofuStore, TrustLevel
from voipclient.net.pins import PinStatus, PinStore, PinStoreCorrupt, server_key
from voipclient.storage.trust import PinFile, TofuFile

PIN_A = "sha256/" + base64.b64encode(bytes(range(32))).decode()
PIN_B = "sha256/" + base64.b64encode(bytes(range(1, 33))).decode()
SERVER = "voice.example.org:64738"


def test_first_contact_needs_approval_then_ok() -> None:
    store = PinStore()
    verdict = store.check(SERVER, PIN_A)
    assert verdict.status is PinStatus.NEEDS_APPROVAL and not verdict.ok
    assert verdict.presented == PIN_A and verdict.stored is None
    assert PIN_A in verdict.message and SERVER in verdict.message
    store.approve(SERVER, PIN_A, now_ms=1000)
    assert store.check(SERVER, PIN_A).ok
    assert store.get(SERVER) == PIN_A and len(store) == 1


def test_mismatch_names_both_pins_and_what_to_do() -> None:
    store = PinStore()
    store.approve(SERVER, PIN_A, 0)
    verdict = store.check(SERVER, PIN_B)
    assert verdict.status is PinStatus.MISMATCH
    assert verdict.stored == PIN_A and verdict.presented == PIN_B
    assert PIN_A in verdict.message and PIN_B in verdict.message
    assert "remove the stored pin" in verdict.message
    assert store.get(SERVER) == PIN_A  # a mismatch never replaces the pin
    store.forget(SERVER)
    assert store.check(SERVER, PIN_B).status is PinStatus.NEEDS_APPROVAL


def test_pins_are_per_host_and_port() -> None:
    store = PinStore()
    store.approve(server_key("Voice.Example.org", 64738), PIN_A, 0)
    assert store.check(server_key("voice.example.org", 64738), PIN_A).ok
    assert store.check(server_key("voice.example.org", 64739), PIN_A).status is (
        PinStatus.NEEDS_APPROVAL
    )
    assert server_key("::1", 5) == "[::1]:5" == server_key("[::1]", 5)
    with pytest.raises(ValueError):
        server_key("", 1)
    with pytest.raises(ValueError):
        server_key("h", 0)


@pytest.mark.parametrize("pin", ["", "sha256/", "sha1/" + PIN_A[7:], PIN_A[:-4], PIN_A + "x"])
def test_approve_refuses_non_pins(pin: str) -> None:
    with pytest.raises(ValueError):
        PinStore().approve(SERVER, pin, 0)


def test_file_round_trip_atomic_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "config" / "voipclient" / "server-pins.json"
    pins = PinFile(path)
    assert len(pins.load()) == 0  # no file yet: empty, nothing created
    assert not path.exists()
    store = pins.load()
    store.approve(SERVER, PIN_A, 1234)
    store.approve("[::1]:1", PIN_B, 5)
    pins.save(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left over
    again = PinFile(path).load()
    assert again.servers() == {SERVER: PIN_A, "[::1]:1": PIN_B}
    doc = json.loads(path.read_text())
    assert doc["format"] == "voipclient-server-pins" and doc["version"] == 1
    assert doc["servers"][SERVER] == {"pin": PIN_A, "approved_ms": 1234}


def test_json_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    good = PinStore()
    good.approve(SERVER, PIN_A, 1)
    text = good.to_bytes().decode().replace('"approved_ms": 1', '"approved_ms": 1,')
    path.write_text(text)
    with pytest.raises(PinStoreCorrupt) as info:
        PinFile(path).load()
    err = info.value
    assert err.line == 8 and err.column == 3  # the "}" after the trailing comma
    assert str(path) in err.message and "line 8 column 3" in err.message
    assert "fix or remove the file" in err.message
    assert path.read_text() == text  # never reset


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[]", 1, "JSON object"),
        ('{"format": "x", "version": 1, "servers": {}}', 1, "'format'"),
        ('{"format": "voipclient-server-pins",\n "version": 2, "servers": {}}', 2, "version 2"),
        ('{"format": "voipclient-server-pins",\n "version": 1,\n "servers": []}', 3, "servers"),
        (
            '{"format": "voipclient-server-pins", "version": 1, "servers": {\n'
            ' "a:1": {"pin": "sha256/abc", "approved_ms": 1}}}',
            2,
            "not a sha256/ key pin",
        ),
        (
            '{"format": "voipclient-server-pins", "version": 1, "servers": {\n'
            f' "a:1": {{"pin": "{PIN_A}", "approved_ms": -1}}}}}}',
            2,
            "approved_ms",
        ),
        (
            '{"format": "voipclient-server-pins", "version": 1, "servers": {\n'
            f' "a:1": {{"pin": "{PIN_A}", "approved_ms": 1}},\n'
            f' "a:1": {{"pin": "{PIN_B}", "approved_ms": 1}}}}}}',
            3,
            "appears twice",
        ),
    ],
)
def test_content_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PinStoreCorrupt) as info:
        PinStore.from_bytes(text.encode(), source="pins.json")
    assert info.value.line == line, info.value.message
    assert words in info.value.message and f"pins.json, line {line}" in info.value.message


def test_not_utf8_names_the_line() -> None:
    with pytest.raises(PinStoreCorrupt, match="line 2: not UTF-8"):
        PinStore.from_bytes(b'{\n"\xff"}')


def test_unreadable_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    with pytest.raises(PinStoreCorrupt, match="cannot read"):
        PinFile(tmp_path).load()  # a directory


# -- the peers' pinned identity keys ---------------------------------------------------------------

IK = bytes(range(32))
NOON = 1_700_000_000.0  # a fixed wall clock: names the file kept aside
BROKEN = b'{"format": "voipclient-tofu", "version": 1, "entries": [{"account": 7'


def test_tofu_file_round_trip_atomic_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "data" / "peer-keys.json"
    tofu = TofuFile(path)
    loaded = tofu.load()
    assert len(loaded.store) == 0 and loaded.problem == "" and loaded.kept_as is None
    assert not path.exists()  # no file yet: nothing created
    store = loaded.store
    store.observe(PIN_A, "bob", IK, 1000)
    store.mark_verified(PIN_A, "bob", IK, 2000)
    tofu.save(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left over
    again = TofuFile(path).load()
    assert again.problem == "" and again.store.to_bytes() == store.to_bytes()
    pinned = again.store.get(PIN_A, "bob")
    assert pinned is not None and pinned.level is TrustLevel.VERIFIED


def test_an_unreadable_tofu_file_is_kept_aside_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "peer-keys.json"
    path.write_bytes(BROKEN)
    tofu = TofuFile(path, clock=lambda: NOON)
    loaded = tofu.load()
    assert len(loaded.store) == 0 and tofu.writable
    assert loaded.kept_as is not None and loaded.kept_as.read_bytes() == BROKEN
    assert loaded.kept_as.name.startswith("peer-keys.json.unreadable-")
    assert not path.exists()
    assert f"({path}) could not be read" in loaded.problem
    assert f"It was kept as {loaded.kept_as}." in loaded.problem
    assert "not verified" in loaded.problem
    # broken again within the same second: a second name; the first one kept is never replaced
    path.write_bytes(BROKEN + b"2")
    second = TofuFile(path, clock=lambda: NOON).load()
    assert second.kept_as is not None and second.kept_as != loaded.kept_as
    assert second.kept_as.name == loaded.kept_as.name + "-2"
    assert loaded.kept_as.read_bytes() == BROKEN and second.kept_as.read_bytes() == BROKEN + b"2"
    # the next save writes a fresh file beside what was kept
    tofu.save(TofuStore())
    assert TofuFile(path).load().problem == ""
    assert loaded.kept_as.read_bytes() == BROKEN


def test_a_tofu_file_that_cannot_be_moved_aside_is_left_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "peer-keys.json"
    path.write_bytes(BROKEN)

    def refuse(self: Path, target: object) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    tofu = TofuFile(path, clock=lambda: NOON)
    loaded = tofu.load()
    assert len(loaded.store) == 0 and loaded.kept_as is None
    assert "could not be moved aside" in loaded.problem and "left untouched" in loaded.problem
    assert not tofu.writable
    tofu.save(TofuStore())  # writes nothing: the unreadable file must not be overwritten
    assert path.read_bytes() == BROKEN
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_tofu_file_that_is_not_a_file_is_reported_too(tmp_path: Path) -> None:
    path = tmp_path / "peer-keys.json"
    path.mkdir()
    loaded = TofuFile(path, clock=lambda: NOON).load()
    assert "could not be read" in loaded.problem and loaded.kept_as is not None
    assert loaded.kept_as.is_dir() and not path.exists()
