"""Per-packet and per-message costs of the pure core, with same-run references.

Prints human-readable lines, then one JSON line with every figure (µs per operation, medians of
several repeats) and the ratio of each per-packet figure to the bare primitive measured in the
same run (AES-256-GCM seal of the same size with a reused AESGCM object; a pre-keyed HMAC copy),
so noisy shared machines still compare like with like.
"""

from __future__ import annotations

import json
import os
import statistics
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voipclient.crypto import keydist, text
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.media import PTYPE_VOICE, SenderKey, VoiceReceiver
from voipclient.crypto.replay import ReplayWindow
from voipclient.crypto.session import SessionKemKey
from voipclient.net import messages
from voipclient.net.frames import FrameDecoder, encode_frame

PAYLOAD = bytes(84)  # frame_no (4) + an 80-byte Opus frame: 32 kb/s at 20 ms
REPEATS = 7


def per_op_us(fn: Callable[[], object], number: int) -> float:
    """Median over REPEATS of the mean time of ``number`` calls, in microseconds."""
    runs = timeit.repeat(fn, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e6


def fanout_figures(datagram: bytes) -> dict[str, float]:
    """The relay's fan-out of one datagram to 9 listeners into a sendmmsg batch, filled by
    Python and by the native fan-out (Linux, built by make), per datagram: the body, one s2c
    MAC, the name and the iovecs per copy. The batch's send is a FAKE (no system call), so
    this is the filling alone."""
    from voipclient.server import mmsg

    if not mmsg.available():
        return {}
    native = mmsg.native_library()
    keys = [os.urandom(32) for _ in range(9)]
    entries = [
        (i, mmsg.sockaddr(("127.0.0.1", 40000 + i)), HopMac(k).fresh, native.key_state(k))
        if native is not None
        else (i, mmsg.sockaddr(("127.0.0.1", 40000 + i)), HopMac(k).fresh, b"")
        for i, k in enumerate(keys)
    ]
    plan = mmsg.wire_plan(entries, -1)
    body_len = len(datagram) - 10

    def fake_send(fd: int, msgvec: int, vlen: int, flags: int) -> int:
        return vlen

    senders: list[tuple[str, mmsg.SendMmsg]] = [("python", mmsg.SendMmsg(-1, send=fake_send))]
    if native is not None:
        senders.append(("native", mmsg.NativeSendMmsg(-1, send=fake_send)))
    out: dict[str, float] = {}
    for name, tx in senders:

        def fill(tx: mmsg.SendMmsg = tx) -> None:
            for _ in range(50):
                tx.add(datagram, body_len, plan)
            tx.flush()

        out[f"relay_fanout_9_{name}_us"] = per_op_us(fill, 200) / 50
    if native is not None:
        out["ratio_fanout_native_to_python"] = (
            out["relay_fanout_9_native_us"] / out["relay_fanout_9_python_us"]
        )
    return out


def main() -> dict[str, float]:
    figures: dict[str, float] = {}
    key = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    figures["ref_aesgcm_seal_100B_us"] = per_op_us(
        lambda: key.encrypt(nonce, PAYLOAD, PAYLOAD[:20]), 20_000
    )
    mac = hmac.HMAC(os.urandom(32), hashes.SHA256())
    figures["ref_hmac_copy_us"] = per_op_us(lambda: mac.copy().update(PAYLOAD) or None, 20_000)

    k_c2s, k_s2c = derive_hop_keys(os.urandom(32))
    c2s, s2c = HopMac(k_c2s), HopMac(k_s2c)
    sender = SenderKey(7, 42)
    base = os.urandom(64)
    sender.new_generation(1, base)
    figures["seal_us"] = per_op_us(lambda: sender.seal(PTYPE_VOICE, PAYLOAD), 20_000)
    figures["seal_and_hop_mac_us"] = per_op_us(
        lambda: c2s.append(sender.seal(PTYPE_VOICE, PAYLOAD)), 20_000
    )

    # Receive: a fresh datagram each call (a replay would stop early), prepared beforehand.
    sender2 = SenderKey(7, 42)
    sender2.new_generation(1, base)
    n = 20_000 * (REPEATS + 1)
    datagrams = [s2c.append(sender2.seal(PTYPE_VOICE, PAYLOAD)[:]) for _ in range(n)]
    receiver = VoiceReceiver(k_s2c)
    receiver.add_key(7, 42, 1, 0, base, 0.0)
    it = iter(datagrams)
    figures["receive_open_us"] = per_op_us(lambda: receiver.receive(next(it), 1.0), 20_000)
    bad = bytearray(datagrams[0])
    bad[-1] ^= 1
    bad_bytes = bytes(bad)
    figures["receive_bad_mac_us"] = per_op_us(lambda: receiver.receive(bad_bytes, 1.0), 20_000)
    figures["receive_replay_us"] = per_op_us(lambda: receiver.receive(datagrams[0], 1.0), 20_000)

    # Relay per datagram and listener: verify c2s, replay window, re-MAC for one listener.
    window = ReplayWindow()
    relay_in = c2s.append(sender.seal(PTYPE_VOICE, PAYLOAD))
    ctr = iter(range(10**9))

    def relay_one() -> bytes:
        c2s.verify(relay_in)
        window.accept(next(ctr))
        return s2c.append(relay_in[:-10])

    figures["relay_check_and_remac_us"] = per_op_us(relay_one, 20_000)
    figures.update(fanout_figures(relay_in))

    # Key distribution and text.
    ik = IdentityKey.generate()
    sessions = [SessionKemKey.generate() for _ in range(48)]
    recips = [keydist.KeyDistRecipient(100 + i, s.public_bytes()) for i, s in enumerate(sessions)]
    signing = IdentityKey.generate()

    def build(count: int) -> list[bytes]:
        return keydist.build_keydists(
            ik,
            kind=keydist.KeyDistKind.NEW_GENERATION,
            channel_id=7,
            sender_id=42,
            gen=1,
            step=0,
            created_ms=0,
            base_key=base,
            text_signing_pub=signing.public_bytes(),
            recipients=recips[:count],
        )

    for count in (1, 10, 48):
        figures[f"keydist_build_{count}_us"] = per_op_us(lambda c=count: build(c), 5)
    blob = build(1)[0]
    figures["keydist_open_us"] = per_op_us(
        lambda: keydist.open_keydist(
            blob,
            sender_ik_pub=ik.public_bytes(),
            my_sender_id=100,
            my_session_key=sessions[0],
            last_accepted=None,
            now_ms=0,
        ),
        50,
    )
    sealer = text.TextSealer(7, 42, 1, 0, base, signing)
    figures["text_seal_100B_us"] = per_op_us(lambda: sealer.seal("x" * 100, 0), 500)
    sealed = [sealer.seal("x" * 100, 0) for _ in range(500 * (REPEATS + 1))]
    opener = text.TextOpener()
    opener.add_key(
        channel_id=7,
        sender_id=42,
        gen=1,
        step=0,
        base_key=base,
        text_signing_pub=signing.public_bytes(),
    )
    texts = iter(sealed)
    figures["text_open_100B_us"] = per_op_us(lambda: opener.open(next(texts)), 500)

    # Control path: a tunnelled voice datagram through frame + schema, both ways.
    msg = messages.VoiceTunnel(datagram=relay_in)
    frame = encode_frame(messages.encode(msg))
    decoder = FrameDecoder()
    figures["control_encode_voice_tunnel_us"] = per_op_us(
        lambda: encode_frame(messages.encode(msg)), 20_000
    )
    figures["control_decode_voice_tunnel_us"] = per_op_us(
        lambda: [messages.decode(p) for p in decoder.feed(frame)], 20_000
    )

    figures["ratio_seal_to_bare_aesgcm"] = figures["seal_us"] / figures["ref_aesgcm_seal_100B_us"]
    figures["ratio_receive_to_bare_aesgcm_plus_hmac"] = figures["receive_open_us"] / (
        figures["ref_aesgcm_seal_100B_us"] + figures["ref_hmac_copy_us"]
    )
    figures = {k: round(v, 3) for k, v in figures.items()}
    for k, v in figures.items():
        print(f"{k:<42} {v}")
    print(json.dumps({"benchmark": "crypto_core", **figures}))
    return figures


if __name__ == "__main__":
    main()
