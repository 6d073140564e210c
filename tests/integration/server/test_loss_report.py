"""Loss/jitter reports through a real server process: a listener's report reaches the speaker
only while they share a channel, and the server counts what it dropped."""

from __future__ import annotations

import asyncio
import json

import pytest

from voipclient.audio.redundancy import LossReport
from voipclient.net import events as ev

from ..conftest import LOBBY, A, B, Starter
from ._client import TestClient
from .test_server import clients, run, settle

pytestmark = pytest.mark.timeout(60)


def _reports(client: TestClient) -> list[ev.LossReportReceived]:
    return client.of(ev.LossReportReceived)


async def _only_in(client: TestClient, channel: int) -> None:
    client.join(channel)
    client.leave(LOBBY)
    await client.wait_for(
        lambda: client.session.roster.channels_of(client.sid or 0) == frozenset({channel}),
        what=f"only in {channel}",
    )


def test_report_reaches_the_speaker_only_when_sharing_a_channel(start_server: Starter) -> None:
    server = start_server("--stats-interval", "0.2")

    async def scenario() -> None:
        async with clients(server, "ann", "bob", udp=False) as (ann, bob):
            assert ann.sid is not None and bob.sid is not None
            # Both in the Lobby: bob's report about ann reaches ann, naming bob.
            bob.send_loss_reports([LossReport(ann.sid, 0.05, 2.0, 7.5, 100)])
            await ann.wait_for(lambda: bool(_reports(ann)), what="loss report")
            assert _reports(ann) == [ev.LossReportReceived(bob.sid, 0.05, 2.0, 7.5, 100)]
            # Apart (ann only in A, bob only in B): a report is dropped silently.
            await _only_in(ann, A)
            await _only_in(bob, B)
            await bob.wait_for(
                lambda: ann.sid not in bob.session.roster.members(LOBBY), what="ann left"
            )
            bob.send_loss_reports([LossReport(ann.sid, 0.5, 3.0, 20.0, 100)])
            await settle(0.5)
            assert len(_reports(ann)) == 1
            assert bob.closed is None and ann.closed is None
            # Together again in B: reports flow again.
            ann.join(B)
            await bob.wait_for(lambda: ann.sid in bob.session.roster.members(B), what="join")
            bob.send_loss_reports([LossReport(ann.sid, 0.1, 1.0, 3.0, 50)])
            await ann.wait_for(lambda: len(_reports(ann)) == 2, what="second report")
            assert _reports(ann)[-1] == ev.LossReportReceived(bob.sid, 0.1, 1.0, 3.0, 50)
            assert not _reports(bob)
            await asyncio.sleep(0.5)  # a stats line after all of it

    run(scenario)
    assert server.stop() == 0
    last = json.loads(server.stdout_lines()[-1])
    assert last["loss_reports"] == {
        "received": 3,
        "forwarded": 2,
        "rate_limited": 0,
        "not_shared": 1,
        "duplicate": 0,
    }
