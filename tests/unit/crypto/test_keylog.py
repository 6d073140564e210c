"""The debugging key log (PROTOCOL §7)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from voipclient.crypto import sframe
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.keylog import KEYLOG_ENV, hop_key_line, media_key_line
from voipclient.crypto.media import PTYPE_VOICE, SenderKey, VoiceReceiver
from voipclient.crypto.rotation import SenderKeyScheduler
from voipclient.storage.keylog import FileKeyLog, keylog_from_environment

VECTORS = json.loads((Path(__file__).parents[2] / "data" / "vc1-datagram-vectors.json").read_text())
S0 = bytes.fromhex(VECTORS["base_key_step0"])
S1 = bytes.fromhex(VECTORS["base_key_step1"])


def test_line_formats() -> None:
    assert media_key_line(7, 42, 3, 0, S0) == f"VC1_MEDIA 7 42 3 0 {S0.hex()}"
    secret = bytes.fromhex(VECTORS["hop_secret"])
    assert hop_key_line(42, secret) == f"VC1_HOP 42 {VECTORS['hop_secret']}"


def test_no_sink_without_the_variable() -> None:
    assert keylog_from_environment({}) is None
    assert keylog_from_environment({KEYLOG_ENV: ""}) is None
    assert keylog_from_environment({"SSLKEYLOGFILE": "/tmp/x"}) is None


def test_file_sink_appends_lines_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    sink = keylog_from_environment({KEYLOG_ENV: str(path)})
    assert isinstance(sink, FileKeyLog)
    sink("VC1_HOP 1 00")
    sink("VC1_HOP 2 11")
    assert path.read_text() == "VC1_HOP 1 00\nVC1_HOP 2 11\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_file_sink_never_raises(tmp_path: Path) -> None:
    sink = FileKeyLog(str(tmp_path))  # a directory: open() fails
    sink("VC1_HOP 1 00")
    sink("VC1_HOP 1 00")


def test_sender_logs_every_key_it_creates() -> None:
    lines: list[str] = []
    key = SenderKey(7, 42, keylog=lines.append)
    key.new_generation(3, S0)
    key.advance_step()
    assert lines == [media_key_line(7, 42, 3, 0, S0), media_key_line(7, 42, 3, 1, S1)]


def test_receiver_logs_accepted_and_ratcheted_keys() -> None:
    c2s, s2c = derive_hop_keys(bytes.fromhex(VECTORS["hop_secret"]))
    lines: list[str] = []
    receiver = VoiceReceiver(s2c, keylog=lines.append)
    receiver.add_key(7, 42, 3, 0, S0, 0.0)
    sender = SenderKey(7, 42)
    sender.new_generation(3, S0)
    sender.advance_step()
    sealed = sender.seal(PTYPE_VOICE, b"hello")
    assert receiver.receive(HopMac(s2c).append(sealed), 0.1) is not None
    assert lines == [media_key_line(7, 42, 3, 0, S0), media_key_line(7, 42, 3, 1, S1)]
    # A datagram that fails does not log (nor keep) the key it derived.
    lines.clear()
    sender.advance_step()
    bad = bytearray(sender.seal(PTYPE_VOICE, b"x"))
    bad[-1] ^= 1
    assert receiver.receive(HopMac(s2c).append(bytes(bad)), 0.2) is None
    assert lines == []
    assert c2s != s2c


def test_scheduler_logs_through_its_sender_keys() -> None:
    lines: list[str] = []
    sched = SenderKeyScheduler(42, random_bytes=lambda n: S0[:n], keylog=lines.append, first_gen=3)
    sched.open_channel(7, [1, 2], 0.0)
    assert lines == [media_key_line(7, 42, 3, 0, S0)]
    assert sframe.ratchet(S0) == S1


def test_the_key_log_never_follows_a_symlink_and_narrows_a_wide_mode(tmp_path: Path) -> None:
    """Someone who can create the key log's path before us must not get our keys: a symlink
    is refused (nothing written through it) and an existing file readable by others is made
    0600 before the first key goes in."""
    import os
    import stat

    target = tmp_path / "theirs.txt"
    target.write_text("")
    link = tmp_path / "keys.log"
    link.symlink_to(target)
    FileKeyLog(str(link))("VC1_HOP 1 " + "00" * 32)
    assert target.read_text() == ""
    wide = tmp_path / "wide.log"
    wide.write_text("")
    os.chmod(wide, 0o644)
    FileKeyLog(str(wide))("VC1_HOP 1 " + "00" * 32)
    assert stat.S_IMODE(wide.stat().st_mode) == 0o600
    assert wide.read_text() == "VC1_HOP 1 " + "00" * 32 + "\n"
