"""``voipclient --self-test``: what a bundle or an install needs to work, one line per check.

The crypto core against the protocol's published vectors (shipped as package data,
``voipclient/data``, kept identical to ``tests/data`` by ``tests/unit/test_selfcheck.py``), then
the native parts a bundle must carry: libopus (an encode/decode round trip), PortAudio (the device
list; zero devices is not a failure, a missing library is), TLS (Python's ssl and Qt's TLS backend),
the keyring backend (which one; none is reported, not a failure: passphrase files are used), and a
Qt window on the offscreen platform.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from voipclient.crypto import fingerprint, hop, keydist, sframe, text
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.media import PTYPE_VOICE, PTYPE_VOICE_LAST, SenderKey, VoiceReceiver
from voipclient.crypto.session import SessionKemKey


def _vectors(name: str) -> Any:
    return json.loads(resources.files("voipclient.data").joinpath(name).read_text("utf-8"))


def _check_sframe() -> str:
    cases = _vectors("rfc9605-sframe-gcm-vectors.json")["sframe"]
    for c in cases:
        suite = int(c["cipher_suite"])
        key, salt = sframe.derive_key_salt(int(c["kid"]), bytes.fromhex(c["base_key"]), suite)
        ct = sframe.encrypt(
            int(c["kid"]),
            int(c["ctr"]),
            bytes.fromhex(c["base_key"]),
            bytes.fromhex(c["metadata"]),
            bytes.fromhex(c["pt"]),
            suite,
        )
        if (key.hex(), salt.hex(), ct.hex()) != (c["sframe_key"], c["sframe_salt"], c["ct"]):
            raise AssertionError(f"suite {suite} case differs")
    return f"{len(cases)} AES-GCM cases (suites 0x0004, 0x0005) reproduce"


def _check_datagrams() -> str:
    v = _vectors("vc1-datagram-vectors.json")
    s0 = bytes.fromhex(v["base_key_step0"])
    if sframe.ratchet(s0).hex() != v["base_key_step1"]:
        raise AssertionError("ratchet S0 -> S1 differs")
    k_c2s, k_s2c = hop.derive_hop_keys(bytes.fromhex(v["hop_secret"]))
    if (k_c2s.hex(), k_s2c.hex()) != (v["k_c2s"], v["k_s2c"]):
        raise AssertionError("hop keys differ")
    sender = SenderKey(v["channel_id"], v["sender_id"])
    sender.new_generation(v["gen"], s0)
    c2s, s2c = hop.HopMac(k_c2s), hop.HopMac(k_s2c)
    opus = bytes.fromhex(v["opus"])
    sealed = [c2s.append(sender.seal(PTYPE_VOICE, opus)) for _ in range(2)]
    sender.advance_step()
    sealed.append(c2s.append(sender.seal(PTYPE_VOICE_LAST, opus)))
    expected = [v["pkt_step0_ctr0"], v["pkt_step0_ctr1"], v["pkt_step1_ctr2_last"]]
    if [p.hex() for p in sealed] != expected:
        raise AssertionError("sealed datagrams differ from the vectors")
    receiver = VoiceReceiver(k_s2c)
    receiver.add_key(v["channel_id"], v["sender_id"], v["gen"], 0, s0, 0.0)
    for raw in expected:
        relayed = s2c.append(bytes.fromhex(raw)[: -hop.HOP_MAC_LEN])  # the relay re-MACs
        frame = receiver.receive(relayed, 0.0)
        if frame is None or frame.payload != opus:
            raise AssertionError("a vector datagram did not open")
        if receiver.receive(relayed, 0.0) is not None:
            raise AssertionError("a replayed datagram opened")
    return "3 datagrams seal byte for byte, open, and refuse replay"


def _check_fingerprint() -> str:
    v = _vectors("libsignal-fingerprint.json")
    number = fingerprint.numeric_fingerprint(
        bytes.fromhex(v["local_key"]),
        v["local_id"].encode(),
        bytes.fromhex(v["remote_key"]),
        v["remote_id"].encode(),
    )
    if number != v["displayable"]:
        raise AssertionError("safety number differs from libsignal's vector")
    return "libsignal NumericFingerprint v1 vector reproduces"


def _check_names_and_privacy_code() -> str:
    from voipclient.names import InvalidName, check_name, name_key

    for case in _vectors("vc1-privacy-code.json")["cases"]:
        holders = [(a, bytes.fromhex(k)) for a, k in case["holders"]]
        if fingerprint.privacy_code(case["channel_id"], holders) != case["code"]:
            raise AssertionError("channel privacy code differs from its vector")
    try:
        check_name("b\u043eb")
    except InvalidName:
        pass
    else:
        raise AssertionError("a mixed-script name was accepted")
    if name_key("\u0392\u039f\u0392") != name_key("bob"):  # Greek capitals
        raise AssertionError("the confusable skeleton tables are missing")
    return "privacy code vectors reproduce; name rules and confusable tables load"


def _check_keydist_and_text() -> str:
    alice = IdentityKey.generate()
    bob_session = SessionKemKey.generate()
    base = bytes(range(64))
    text_key = IdentityKey.generate()
    blobs = keydist.build_keydists(
        alice,
        kind=keydist.KeyDistKind.NEW_GENERATION,
        channel_id=1,
        sender_id=10,
        gen=1,
        step=0,
        created_ms=0,
        base_key=base,
        text_signing_pub=text_key.public_bytes(),
        recipients=[keydist.KeyDistRecipient(20, bob_session.public_bytes())],
    )
    accepted = keydist.open_keydist(
        blobs[0],
        sender_ik_pub=alice.public_bytes(),
        my_sender_id=20,
        my_session_key=bob_session,
        last_accepted=None,
        now_ms=0,
    )
    if accepted.base_key != base:
        raise AssertionError("KeyDist did not carry the base key")
    sealed = text.TextSealer(1, 10, 1, 0, base, text_key).seal("self-check", 0)
    opener = text.TextOpener()
    opener.add_accepted(accepted)
    if opener.open(sealed).text != "self-check":
        raise AssertionError("text did not round-trip")
    return f"ML-KEM-768+X25519 KeyDist ({len(blobs[0])} bytes) and signed text round-trip"


def _check_opus() -> str:
    import math

    import numpy as np

    from voipclient.audio.opus import OpusDecoder, OpusEncoder, frame_samples

    n = frame_samples(20)
    t = np.arange(n * 10) / 48_000
    tone = (8000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
    enc, dec = OpusEncoder(), OpusDecoder()
    out = np.concatenate([dec.decode(enc.encode(tone[i * n : (i + 1) * n])) for i in range(10)])
    # the codec's delay shifts the signal: compare the energy of the second half
    rms_in = float(np.sqrt(np.mean(tone[n * 5 :].astype(np.float64) ** 2)))
    rms_out = float(np.sqrt(np.mean(out[n * 5 :].astype(np.float64) ** 2)))
    if not 0.7 < rms_out / rms_in < 1.3:
        raise AssertionError(f"decoded level {rms_out:.0f} vs {rms_in:.0f}")
    import opuslib_next

    version = opuslib_next.api.info.get_version_string()
    version = version.decode() if isinstance(version, bytes) else str(version)
    return f"{version}: 10 frames encode and decode (level {rms_out / rms_in:.2f})"


def _check_audio_devices() -> str:
    from voipclient.audio.sd_engine import _sounddevice, list_devices

    sd = _sounddevice()  # AudioDeviceError when the PortAudio library is missing
    devices = list_devices()
    inputs = sum(1 for d in devices if d.max_input_channels > 0)
    outputs = sum(1 for d in devices if d.max_output_channels > 0)
    note = "" if devices else " (no sound server or card here: the app says so and what to do)"
    version = str(sd.get_portaudio_version()[1]).split(",")[0]
    return f"{version}: {inputs} input, {outputs} output devices{note}"


def _check_tls() -> str:
    import ssl

    if not ssl.HAS_TLSv1_3:
        raise AssertionError(f"{ssl.OPENSSL_VERSION} has no TLS 1.3")
    from PySide6.QtNetwork import QSslSocket

    if not QSslSocket.supportsSsl():
        raise AssertionError("Qt has no TLS backend (the openssl plugin or libssl is missing)")
    backend = QSslSocket.activeBackend()
    return f"{ssl.OPENSSL_VERSION}; Qt {backend} backend, {QSslSocket.sslLibraryVersionString()}"


def _check_keyring() -> str:
    import keyring

    backend = keyring.get_keyring()
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    if "fail" in name.lower() or "null" in name.lower():
        return f"none ({name}): identity keys go to passphrase-encrypted files"
    return name


def _check_qt_window() -> str:
    import os

    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance()
    if app is None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        app = QApplication(["voipclient-self-test"])
    window = QLabel("voipclient self-test")
    window.resize(200, 50)
    window.show()
    QApplication.processEvents()
    image = window.grab()
    window.close()
    if image.isNull() or image.width() < 100:
        raise AssertionError("the window did not render")
    from PySide6.QtCore import QCollator, QLocale

    # ICU (collation, case mapping) works with the data the bundle carries
    names = sorted(["bob", "Émile", "alice", "Zoë"], key=QCollator(QLocale("en_US")).sortKey)
    if names != ["alice", "bob", "Émile", "Zoë"] or QLocale("en_US").toUpper("straße") != "STRASSE":
        raise AssertionError(f"ICU collation or case mapping is broken: {names}")
    platform = QApplication.platformName()
    return f"Qt {qt_version()} window rendered on the {platform} platform"


def _check_hosting() -> str:
    """What "Host for friends" needs: the UPnP client with aiohttp (the bundle ships aiohttp
    without its C speed-ups) and the QR code writer."""
    from importlib.metadata import version

    import segno
    from async_upnp_client.aiohttp import AiohttpRequester
    from async_upnp_client.client_factory import UpnpFactory
    from async_upnp_client.profiles.igd import IgdDevice

    UpnpFactory(AiohttpRequester())
    if not IgdDevice.DEVICE_TYPES:
        raise AssertionError("async-upnp-client has no IGD profile")
    qr = segno.make("voipclient://self.test:64738/?pin=sha256/x")
    if qr.symbol_size()[0] < 21:
        raise AssertionError("segno made no QR code")
    import aiohttp

    try:  # a bundle may carry no package metadata
        upnp = version("async-upnp-client")
    except ImportError:  # importlib.metadata.PackageNotFoundError is one
        upnp = "(version unknown)"
    return f"async-upnp-client {upnp}, aiohttp {aiohttp.__version__}, segno {segno.__version__}"


def _check_relay_fanout() -> str:
    """The relay's native fan-out (``_fanout.c``, built by ``make`` and carried by the bundle)
    is loaded and passed its MAC self-test, where the platform has ``sendmmsg`` (Linux)."""
    from voipclient.server import mmsg

    if not mmsg.available():
        return "one sendto per copy (no sendmmsg on this platform)"
    loaded, why = mmsg.native_available()
    if not loaded:
        raise RuntimeError(f"the native fan-out is not used: {why}")
    _check_native_voice()
    return (
        f"native voice path {mmsg.NATIVE_LIBRARY.name} on loopback (recvmmsg, every check, "
        "sendmmsg): MACs checked, a replay and a forgery refused"
    )


class _TwoInOneChannel:
    """A roster for :func:`_check_native_voice`: sessions 1 and 2, both in channel 7."""

    roster_version = 1

    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        return channel_id == 7 and sender_id in (1, 2)

    def listeners(self, channel_id: int, exclude: int | None = None) -> list[int]:
        return [s for s in (1, 2) if s != exclude] if channel_id == 7 else []


def _check_native_voice() -> None:
    """The relay's voice path in C on real loopback sockets, as the server runs it
    (``mmsg.drain_native``: ``recvmmsg``, ``vc_voice``'s checks, ``sendmmsg`` from C): a sealed
    datagram from session 1 reaches session 2 under 2's own s2c MAC; its replay and a forged
    MAC are dropped."""
    import socket

    from voipclient.server import mmsg
    from voipclient.server.relay import RelayCore, RelayDrop

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.settimeout(2.0)
        relay_sock, one, two = socks
        relay_sock.setblocking(False)
        batch = mmsg.NativeSendMmsg(relay_sock.fileno())
        native = mmsg.make_native_voice(batch, socket.AF_INET)
        assert native is not None
        relay = RelayCore(_TwoInOneChannel(), pack_address=mmsg.sockaddr, native=native)
        secrets = {1: bytes(range(32)), 2: bytes(range(1, 33))}
        for sid, secret, s in ((1, secrets[1], one), (2, secrets[2], two)):
            relay.add_session(sid, secret)
            relay.set_address(sid, s.getsockname())
        k_c2s, _ = hop.derive_hop_keys(secrets[1])
        _, k_s2c = hop.derive_hop_keys(secrets[2])
        sender = SenderKey(7, 1)
        sender.new_generation(1, bytes(64))
        datagram = hop.HopMac(k_c2s).append(sender.seal(PTYPE_VOICE, b"\0\0\0\1opus"))
        to = relay_sock.getsockname()

        def wake_up() -> None:  # loopback: what was sent is already queued at relay_sock
            mmsg.drain_native(relay_sock, relay, native, 1.0, mmsg.UdpTally(), 64)

        one.sendto(datagram, to)
        wake_up()
        got = two.recv(2048)
        if (
            not hop.HopMac(k_s2c).verify(got)
            or got[: -hop.HOP_MAC_LEN] != datagram[: -hop.HOP_MAC_LEN]
        ):
            raise RuntimeError("the native voice path did not forward a valid datagram")
        one.sendto(datagram, to)
        one.sendto(datagram[:-1] + bytes([datagram[-1] ^ 1]), to)
        wake_up()
        drops = relay.drops()
        if (drops[RelayDrop.REPLAY], drops[RelayDrop.BAD_HOP_MAC]) != (1, 1):
            raise RuntimeError(f"the native voice path counted {drops}")
        if relay.stats()["forwarded"] != 1 or batch.sent != 1:
            raise RuntimeError("the native voice path forwarded a replay or a forgery")
    finally:
        for s in socks:
            s.close()


def qt_version() -> str:
    from PySide6.QtCore import qVersion

    return str(qVersion())


Check = tuple[str, Callable[[], str]]

#: The pure core against the vectors: no native library beyond cryptography's.
CORE_CHECKS: tuple[Check, ...] = (
    ("sframe", _check_sframe),
    ("datagram", _check_datagrams),
    ("safety-number", _check_fingerprint),
    ("names+code", _check_names_and_privacy_code),
    ("keydist+text", _check_keydist_and_text),
)
#: Everything ``--self-test`` runs: the core, then the native parts a bundle must carry.
CHECKS: tuple[Check, ...] = (
    *CORE_CHECKS,
    ("opus", _check_opus),
    ("audio-devices", _check_audio_devices),
    ("tls", _check_tls),
    ("keyring", _check_keyring),
    ("hosting", _check_hosting),
    ("relay-fanout", _check_relay_fanout),
    ("qt-window", _check_qt_window),
)


def run(out: Callable[[str], object], checks: tuple[Check, ...] | None = None) -> bool:
    """Run the checks (all of :data:`CHECKS` by default), print ``ok``/``FAIL`` lines through
    ``out``; True when all pass."""
    all_ok = True
    for name, check in CHECKS if checks is None else checks:
        start = time.perf_counter()
        try:
            detail = check()
        except Exception as exc:  # a self-check reports every failure, whatever its type
            all_ok = False
            out(f"FAIL {name:<14} {type(exc).__name__}: {exc}")
        else:
            ms = (time.perf_counter() - start) * 1000.0
            out(f"ok   {name:<14} {detail} ({ms:.1f} ms)")
    return all_ok
