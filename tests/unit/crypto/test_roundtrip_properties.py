"""Round-trip properties of the voice datagram and KeyDist codecs over random field values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.crypto import keydist
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.media import (
    MAX_PAYLOAD_LEN,
    PTYPE_VOICE,
    PTYPE_VOICE_LAST,
    SenderKey,
    VoiceReceiver,
    parse_header,
)
from voipclient.crypto.session import SessionKemKey

u32 = st.integers(min_value=0, max_value=2**32 - 1)
RECIPIENT_KEY = SessionKemKey.generate()  # one KEM key: generating is the slow part
SENDER_IK = IdentityKey.generate()


@given(
    channel=u32,
    sender=u32,
    gen=u32,
    steps=st.integers(min_value=0, max_value=16),
    skip=st.integers(min_value=0, max_value=50),
    payload=st.binary(min_size=1, max_size=MAX_PAYLOAD_LEN),
    last=st.booleans(),
    base=st.binary(min_size=64, max_size=64),
    hop_secret=st.binary(min_size=32, max_size=32),
)
@settings(max_examples=60, deadline=None)
def test_datagram_seal_then_open(
    channel: int,
    sender: int,
    gen: int,
    steps: int,
    skip: int,
    payload: bytes,
    last: bool,
    base: bytes,
    hop_secret: bytes,
) -> None:
    _, k_s2c = derive_hop_keys(hop_secret)
    key = SenderKey(channel, sender)
    key.new_generation(gen, base)
    for _ in range(skip):
        key.seal(PTYPE_VOICE, b"x")
    for _ in range(steps):
        key.advance_step()
    ptype = PTYPE_VOICE_LAST if last else PTYPE_VOICE
    datagram = HopMac(k_s2c).append(key.seal(ptype, payload))
    header = parse_header(datagram)
    assert header is not None
    assert (header.channel_id, header.sender_id, header.gen, header.step, header.ctr) == (
        channel,
        sender,
        gen,
        steps,
        skip,
    )
    receiver = VoiceReceiver(k_s2c)
    receiver.add_key(channel, sender, gen, 0, base, 0.0)
    frame = receiver.receive(datagram, 0.0)
    assert frame is not None
    assert (frame.payload, frame.last, frame.step, frame.ctr) == (payload, last, steps, skip)


@given(
    channel=u32,
    sender=u32,
    gen=u32,
    step=st.integers(min_value=0, max_value=2**16 - 1),
    created=st.integers(min_value=0, max_value=2**63 - 1),
    base=st.binary(min_size=64, max_size=64),
    me=u32,
    others=st.lists(u32, max_size=3, unique=True),
    kind=st.sampled_from(list(keydist.KeyDistKind)),
)
@settings(max_examples=25, deadline=None)
def test_keydist_build_then_open(
    channel: int,
    sender: int,
    gen: int,
    step: int,
    created: int,
    base: bytes,
    me: int,
    others: list[int],
    kind: keydist.KeyDistKind,
) -> None:
    text_pub = IdentityKey.generate().public_bytes()
    recipients = [keydist.KeyDistRecipient(me, RECIPIENT_KEY.public_bytes())] + [
        keydist.KeyDistRecipient(o, SessionKemKey.generate().public_bytes())
        for o in others
        if o != me
    ]
    (blob,) = keydist.build_keydists(
        SENDER_IK,
        kind=kind,
        channel_id=channel,
        sender_id=sender,
        gen=gen,
        step=step,
        created_ms=created,
        base_key=base,
        text_signing_pub=text_pub,
        recipients=recipients,
    )
    for part in (blob, keydist.split_for_recipients(blob)[me]):
        got = keydist.open_keydist(
            part,
            sender_ik_pub=SENDER_IK.public_bytes(),
            my_sender_id=me,
            my_session_key=RECIPIENT_KEY,
            last_accepted=None,
            now_ms=0,
        )
        assert (got.channel_id, got.sender_id, got.gen, got.step, got.kind) == (
            channel,
            sender,
            gen,
            step,
            kind,
        )
        assert (got.base_key, got.text_signing_pub, got.created_ms) == (base, text_pub, created)
