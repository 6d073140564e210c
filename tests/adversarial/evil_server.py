"""The real relay server process, patched to misbehave: ``python -m tests.adversarial.evil_server``.

It is ``voipclient-server`` (same arguments, same start line) with one change in its control core:
when the user named by ``VC_EVIL_VICTIM`` joins the channel ``VC_EVIL_CHANNEL``, the relay slips
a ghost into *that user's* view only, in the same TCP write as the honest ``membership`` message.
The ghost has a real Ed25519 identity and a real, validly signed session key, so a client that
believed the frames would hand it its keys. ``VC_EVIL_ATTACK`` picks the lie:

* ``invisible``: ``user_joined`` ghost in the channel, then ``user_updated`` with its session key
  and no channels (the eavesdropper that is sent keys but drawn nowhere);
* ``visible``: ``user_joined`` ghost in the channel, then ``user_updated`` with its session key and
  the same channels (an honest-looking ghost shown to the victim only).

Every KeyDist the relay is asked to deliver is written to ``VC_EVIL_LOG`` (one JSON line: sender,
channel, recipients), so a test can show whether anyone ever sealed a key to the ghost.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.session import SessionCertificate, SessionKemKey
from voipclient.net import messages as m
from voipclient.net.frames import encode_frame
from voipclient.server.control import ServerCore

GHOST_ID = 4_000_000_000  # far above any sender id a test server hands out
GHOST_NAME = "ghost"


def _ghost_frames(attack: str, channel_id: int) -> bytes:
    identity = IdentityKey.generate()
    kem = SessionKemKey.generate()
    skc = SessionCertificate.build(
        identity,
        GHOST_NAME,
        GHOST_ID,
        kem.public_bytes(),
        int(time.time() * 1000) + 3_600_000,
    )
    channels = (m.Membership(channel_id=1), m.Membership(channel_id=channel_id))
    joined = m.UserInfo(
        sender_id=GHOST_ID,
        name=GHOST_NAME,
        ik_pub=identity.public_bytes(),
        channels=channels,
    )
    updated = m.UserInfo(
        sender_id=GHOST_ID,
        name=GHOST_NAME,
        ik_pub=identity.public_bytes(),
        sk_pub=kem.public_bytes(),
        skc=skc.to_bytes(),
        channels=() if attack == "invisible" else channels,
    )
    return encode_frame(m.encode_checked(m.UserJoined(user=joined))) + encode_frame(
        m.encode_checked(m.UserUpdated(user=updated))
    )


def _log(record: dict[str, Any]) -> None:
    path = os.environ.get("VC_EVIL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def patch() -> None:
    attack = os.environ["VC_EVIL_ATTACK"]
    victim = os.environ["VC_EVIL_VICTIM"]
    channel = int(os.environ["VC_EVIL_CHANNEL"])
    honest_join = ServerCore._on_join
    honest_keydist = ServerCore._on_keydist
    done: set[str] = set()

    def evil_join(self: ServerCore, sess: Any, msg: m.JoinChannel) -> None:
        honest_join(self, sess, msg)
        if sess.name == victim and msg.channel_id == channel and victim not in done:
            done.add(victim)
            sess.out += _ghost_frames(attack, channel)
            self._dirty[sess.conn_id] = None
            _log({"injected": attack, "victim": victim, "channel": channel})

    def logging_keydist(self: ServerCore, sess: Any, msg: m.KeyDist) -> None:
        _log(
            {
                "keydist_from": sess.name,
                "channel": msg.channel_id,
                "recipients": list(msg.recipients),
            }
        )
        honest_keydist(self, sess, msg)

    ServerCore._on_join = evil_join  # type: ignore[method-assign]
    ServerCore._on_keydist = logging_keydist  # type: ignore[method-assign]


def main() -> int:
    patch()
    from voipclient.server.__main__ import main as server_main

    return server_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
