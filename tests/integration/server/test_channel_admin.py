"""Channel administration and the admin flag over real TLS: the embedded local server (the
desktop app's, first user is the administrator) and a real ``voipclient-server`` process
(``[admins] first_user``, configured channels locked), each restarted on its data directory."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from voipclient.crypto.identity import IdentityKey
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.server.control import LOBBY_ID
from voipclient.server.embedded import DEFAULT_CHANNELS, EmbeddedServer

from ..conftest import Starter
from ._client import TestClient
from .test_server import run

pytestmark = pytest.mark.timeout(90)

Code = m.ErrorCode


def channel_admin(client: TestClient, op: str, **fields: Any) -> None:
    """The connection's ``channel_admin`` intent, at the loop's clock."""
    client._call(lambda now: client.conn.channel_admin(op, now, **fields))


def channel_named(client: TestClient, name: str) -> int | None:
    found = [c.id for c in client.session.roster.channels.values() if c.name == name]
    return found[0] if found else None


async def done(client: TestClient, count: int) -> ev.ChannelAdminDone:
    """The ``count``-th ChannelAdminDone (1-based) of ``client``."""
    await client.wait_for(lambda: len(client.of(ev.ChannelAdminDone)) >= count, what="done")
    return client.of(ev.ChannelAdminDone)[count - 1]


async def refused(client: TestClient, count: int) -> ev.ServerError:
    await client.wait_for(lambda: len(client.of(ev.ServerError)) >= count, what="refusal")
    error: ev.ServerError = client.of(ev.ServerError)[count - 1]
    assert not error.fatal and client.closed is None
    return error


def test_embedded_server_first_user_administers_channels_across_a_restart(
    tmp_path: Path,
) -> None:
    data = tmp_path / "local-server"
    owner_key, guest_key = IdentityKey.generate(), IdentityKey.generate()

    async def first_run(host: str, port: int, pin: str) -> None:
        connect = functools.partial(TestClient.connect, host, port, pin)
        owner = await connect("owner", identity=owner_key)
        guest = await connect("guest", identity=guest_key)
        try:
            await guest.wait_for(lambda: owner.sid in guest.session.roster.users, what="owner")
            assert owner.conn.is_admin and not guest.conn.is_admin
            roster = guest.session.roster
            assert roster.users[owner.sid or 0].admin and not roster.users[guest.sid or 0].admin
            # The default channels were seeded into the store: the owner may change them.
            names = {c.name for c in roster.channels.values()}
            assert names == {"Lobby", *DEFAULT_CHANNELS}
            afk = channel_named(owner, "AFK")
            general = channel_named(owner, "General")
            assert afk is not None and general is not None
            channel_admin(owner, "update", channel_id=afk, name="Away")
            assert (await done(owner, 1)).channel_id == afk
            await guest.wait_for(lambda: channel_named(guest, "Away") == afk, what="rename")
            # Create (with a password, under General): everyone sees it appear.
            channel_admin(owner, "create", name="Raid", parent=general, password="pw")
            raid = (await done(owner, 2)).channel_id
            await guest.wait_for(lambda: raid in guest.session.roster.channels, what="raid")
            view = guest.session.roster.channels[raid]
            assert (view.parent, view.name, view.password_protected) == (general, "Raid", True)
            # A non-admin is refused and stays connected.
            channel_admin(guest, "delete", channel_id=raid)
            error = await refused(guest, 1)
            assert (error.code, error.channel_id) == (Code.NOT_ADMIN, raid)
            # The Lobby cannot be deleted; a name is unique among siblings.
            channel_admin(owner, "delete", channel_id=LOBBY_ID)
            assert (await refused(owner, 1)).code == Code.CHANNEL_LOCKED
            channel_admin(owner, "create", name="raid", parent=general)
            assert (await refused(owner, 2)).code == Code.CHANNEL_NAME_TAKEN
            # Create and delete.
            channel_admin(owner, "create", name="Temp")
            temp = (await done(owner, 3)).channel_id
            channel_admin(owner, "delete", channel_id=temp)
            await done(owner, 4)
            await guest.wait_for(
                lambda: any(e.channel.id == temp for e in guest.of(ev.ChannelRemoved)),
                what="temp removed",
            )
            assert [e.channel.name for e in guest.of(ev.ChannelAdded)] == ["Raid", "Temp"]
        finally:
            await owner.close()
            await guest.close()

    async def second_run(host: str, port: int, pin: str) -> None:
        connect = functools.partial(TestClient.connect, host, port, pin)
        guest = await connect("guest", identity=guest_key)  # first to log in this time
        owner = await connect("owner", identity=owner_key)
        try:
            assert owner.conn.is_admin and not guest.conn.is_admin
            names = {c.name for c in guest.session.roster.channels.values()}
            assert names == {"Lobby", "General", "Squad A", "Squad B", "Away", "Raid"}
            raid = channel_named(guest, "Raid")
            assert raid is not None
            # The password survived as a hash: the wrong one is refused, the right one opens.
            guest.join(raid, "wrong")
            assert (await refused(guest, 1)).code == Code.WRONG_CHANNEL_PASSWORD
            guest.join(raid, "pw")
            await guest.wait_for(lambda: guest.is_member(raid), what="joined the raid")
            # The owner still administers (a channel made in the first run).
            channel_admin(owner, "update", channel_id=raid, password="")
            await done(owner, 1)
            await guest.wait_for(
                lambda: not guest.session.roster.channels[raid].password_protected,
                what="password removed",
            )
        finally:
            await owner.close()
            await guest.close()

    for scenario in (first_run, second_run):
        server = EmbeddedServer(data, port=0)
        address = server.start()
        try:
            run(lambda s=scenario, a=address: s(a.host, a.port, a.pin))  # type: ignore[misc]
        finally:
            server.stop()


def test_standalone_first_user_and_configured_channels_across_a_restart(
    start_server: Starter,
) -> None:
    config = "[admins]\nfirst_user = true\n"
    server = start_server(config=config, channels=("A", "B"))
    ann_key, bob_key = IdentityKey.generate(), IdentityKey.generate()

    async def first_run() -> None:
        connect = functools.partial(TestClient.connect, server.host, server.port, server.pin)
        ann = await connect("ann", identity=ann_key)
        bob = await connect("bob", identity=bob_key)
        try:
            assert ann.conn.is_admin and not bob.conn.is_admin
            a = channel_named(ann, "A")
            assert a == 2
            # A configured channel belongs to the configuration...
            channel_admin(ann, "update", channel_id=a, name="Alpha")
            assert (await refused(ann, 1)).code == Code.CHANNEL_LOCKED
            # ...but administrators may make channels under it.
            channel_admin(ann, "create", name="Sub", parent=a, description="under A")
            sub = (await done(ann, 1)).channel_id
            await bob.wait_for(lambda: sub in bob.session.roster.channels, what="sub")
            assert bob.session.roster.channels[sub].parent == a
            channel_admin(bob, "create", name="Mine")
            assert (await refused(bob, 1)).code == Code.NOT_ADMIN
        finally:
            await ann.close()
            await bob.close()

    run(first_run)
    assert server.stop() == 0
    log = server.stderr_text()
    assert "first user made administrator name='ann'" in log
    assert "channel create by sender=" in log and "refused code=53" in log
    assert "refused code=50" in log
    for key in (ann_key, bob_key):
        assert key.public_bytes().hex() not in log

    # The configured channels in another order: "Sub" follows "A" by name.
    again = start_server(config=config, channels=("B", "A"), data_dir=server.data_dir)

    async def second_run() -> None:
        connect = functools.partial(TestClient.connect, again.host, again.port, again.pin)
        bob = await connect("bob", identity=bob_key)
        ann = await connect("ann", identity=ann_key)
        try:
            assert ann.conn.is_admin and not bob.conn.is_admin
            a, sub = channel_named(bob, "A"), channel_named(bob, "Sub")
            assert a == 3 and sub is not None
            view = bob.session.roster.channels[sub]
            assert (view.parent, view.description) == (a, "under A")
        finally:
            await ann.close()
            await bob.close()

    run(second_run)
