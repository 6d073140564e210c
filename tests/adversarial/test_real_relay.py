"""End to end: a real relay process patched to lie (``evil_server``), two real desktop apps.

The relay shows a ghost — a real identity key with a validly signed session key — to alice only,
in the same TCP write as the honest ``membership`` message of her joining channel A, which bob is
in too. Played both ways a malicious relay would:

* **invisible**: the ghost joins A, then a ``user_updated`` publishes its session key with no
  channels. Before issue 12 alice's E2E layer sent the ghost her keys while her window drew it
  nowhere. Now alice's client refuses the roster rewrite (ROSTER_INCONSISTENT), says so, and no
  KeyDist of hers ever names the ghost.
* **visible**: the ghost joins A and publishes its key without hiding. It may get alice's keys —
  a relay can add members — but it cannot hide: alice's member list draws it as a new, unverified
  key, her conversation in A gets a lasting line, and the channel privacy codes of alice and bob
  (who sees no ghost) differ, while they were equal before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import A, ServerProcess, Starter
from tests.integration.ui.conftest import AppFactory, member_text, pair_in

from .evil_server import GHOST_ID, GHOST_NAME

pytestmark = pytest.mark.timeout(120)


def _evil(start_server: Starter, tmp_path: Path, attack: str) -> tuple[ServerProcess, Path]:
    log = tmp_path / f"evil-{attack}.jsonl"
    server = start_server(
        module="tests.adversarial.evil_server",
        env={
            "VC_EVIL_ATTACK": attack,
            "VC_EVIL_VICTIM": "alice",
            "VC_EVIL_CHANNEL": str(A),
            "VC_EVIL_LOG": str(log),
        },
    )
    return server, log


def _records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _ghost_keydists(log: Path) -> list[dict[str, Any]]:
    return [r for r in _records(log) if GHOST_ID in r.get("recipients", ())]


def test_an_invisible_eavesdropper_is_refused_and_never_sent_a_key(
    qtbot: Any, make_app: AppFactory, start_server: Starter, tmp_path: Path
) -> None:
    server, log = _evil(start_server, tmp_path, "invisible")
    errors: list[str] = []
    alice, bob = pair_in(qtbot, make_app, server)
    alice.controller.message.connect(lambda level, text: errors.append(f"{level}: {text}"))
    bob.controller.join(A)  # bob first: he holds A's keys when the ghost appears to alice
    qtbot.waitUntil(lambda: bob.controller.model.row(A).joined, timeout=10_000)
    refused_session = alice.controller.model.me  # sender ids are never reused by the server
    assert refused_session in bob.controller.model.roster.users
    alice.controller.join(A)  # the relay answers with the honest membership... and the ghost
    qtbot.waitUntil(lambda: any(r.get("injected") for r in _records(log)), timeout=10_000)
    qtbot.waitUntil(lambda: any("honest server never does" in e for e in errors), timeout=10_000)
    # Whatever alice would have sent the ghost, she sent on the session she then closed: once
    # the relay has handled that session's end (bob sees her leave), it has handled every
    # KeyDist before it, and logged it.
    qtbot.waitUntil(
        lambda: refused_session not in bob.controller.model.roster.users, timeout=10_000
    )
    assert _ghost_keydists(log) == []
    # The supervisor reconnects alice to a consistent roster (a new session: her channel tree,
    # cleared when she refused the lie, is drawn again), where the ghost is drawn nowhere; bob
    # never saw a ghost.
    qtbot.waitUntil(
        lambda: (
            alice.controller.state == "ready"
            and alice.controller.model.me not in (None, refused_session)
            and alice.window.tree.item_for(A) is not None
        ),
        timeout=20_000,
    )
    assert member_text(alice, A, GHOST_NAME) == ""
    assert member_text(bob, A, GHOST_NAME) == ""
    assert _ghost_keydists(log) == []


def test_a_ghost_shown_to_one_user_is_drawn_logged_and_breaks_the_privacy_code(
    qtbot: Any, make_app: AppFactory, start_server: Starter, tmp_path: Path
) -> None:
    server, log = _evil(start_server, tmp_path, "visible")
    alice, bob = pair_in(qtbot, make_app, server)
    notices: list[str] = []
    alice.controller.chat_notice.connect(lambda cid, text: notices.append(f"{cid}: {text}"))
    bob.controller.join(A)
    qtbot.waitUntil(lambda: "bob" in member_text(bob, A, "bob"), timeout=10_000)
    honest_code = bob.controller.model.row(A).privacy_code  # bob alone in A
    assert honest_code
    alice.controller.join(A)
    qtbot.waitUntil(lambda: GHOST_NAME in member_text(alice, A, GHOST_NAME), timeout=10_000)
    # The ghost is drawn, as a new key nobody verified, with a lasting line in A's conversation.
    ghost = alice.controller.model.holder(GHOST_ID)
    assert ghost is not None and ghost.trust == "tofu" and ghost.new_key
    assert any(
        n.startswith(f"{A}: ") and "Now holds this channel's keys: ghost (new key" in n
        for n in notices
    ), notices
    # ... and in her key-holder log, which outlives the window.
    record = (alice.controller.data_dir / "key-holders.log").read_text()
    assert " #A Now holds this channel's keys: ghost (new key, not verified" in record
    # Alice and bob compare the channel privacy code: it differs (bob's view has no ghost).
    qtbot.waitUntil(
        lambda: (
            "bob" in member_text(alice, A, "bob")
            and bool(alice.controller.model.row(A).privacy_code)
        ),
        timeout=10_000,
    )
    # bob's view changes too (alice joined): wait until he draws her before reading his code
    qtbot.waitUntil(lambda: "alice" in member_text(bob, A, "alice"), timeout=10_000)
    alice_code = alice.controller.model.row(A).privacy_code
    bob_code = bob.controller.model.row(A).privacy_code
    assert alice_code and bob_code and alice_code != bob_code
    assert bob_code != honest_code  # bob's changed too: alice joined
    shown = alice.window.controls
    alice.window.tree.setCurrentItem(alice.window.tree.item_for(A))
    qtbot.waitUntil(lambda: shown.privacy_code.text() == alice_code, timeout=5_000)
    # Whatever alice sent the ghost, she sent to a member she can see.
    assert all(GHOST_NAME in member_text(alice, A, GHOST_NAME) for _ in _ghost_keydists(log))
