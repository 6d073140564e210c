"""A cluster of relay nodes on NATS (``voipclient-server --cluster nats://HOST:PORT``).

Each node is a whole ``voipclient-server`` (its own TLS sessions and UDP relay, with workers or
not); NATS (``nats-server`` with JetStream, through ``nats-py``) carries what the nodes share:

======================================  =======================================================
subject                                 what
======================================  =======================================================
``vc.roster``                           a roster change of a node's user (UserJoined, UserUpdated,
                                        UserLeft, MembershipChanged: the very messages its clients
                                        got), applied to every other node's roster and sent on to
                                        its clients
``vc.voice.<channel>``                  a voice datagram's body (hop MAC removed) after every check
                                        at the speaker's node; a node subscribes to the channels
                                        its users listen to and adds each listener's own s2c MAC
``vc.node.<node>.keydist`` / ``.loss``  a KeyDist part / loss report for a user of that node
``vc.node.<node>.replace``              that node's user logged in elsewhere: end its session
``vc.node.<node>.admin``                an administrator elsewhere kicked, banned or moved a
                                        user of that node: it carries it out
``vc.text``                             a channel text, for every node's members of the channel
``vc.hb`` / ``vc.hello`` / ``vc.bye``   heartbeats (1 s; a node silent for 3 s is gone and its
                                        users leave), a node's start (the others send it their
                                        users on ``vc.node.<node>.sync``), a clean stop
``vc.node.<node>.resync``               "what I know of your users differs from your heartbeat's
                                        digest": it sends them all again on ``.sync``, then their
                                        complete id list (``members``); a user missing from it
                                        leaves (NATS core is at most once: a lost UserLeft or
                                        MembershipChanged is repaired within ~2 s)
======================================  =======================================================

JetStream key-value buckets: ``vc_nodes`` (sender-id ranges: node slot ``n`` hands out ids
``n << 24 ..``, so ids are unique across the cluster), ``vc_names`` (name bindings: the first
node to bind a name wins, every node refuses the name to other keys), ``vc_bans`` (bans, checked
at every login and by the ban sweep on every node), ``vc_channels`` (the channels
administrators made, with their password *hashes*: a change on one node is made on every node;
node slot ``n`` gives new channels the ids ``10000 + (n - 1) << 24 ..``, so two nodes never
make the same id) and ``vc_admins`` (identities made administrators at run time; in a cluster
the first-user rule is off, see ``docs/server.md``).

**The relay stays blind.** Voice crosses NATS as the speaker sealed it (AES-GCM under a sender
key only channel members hold); KeyDist parts are sealed to their recipient's session key; texts
are end-to-end encrypted. Hop secrets and hop MACs never leave their node. What a node (or
anyone on the NATS network) learns is what any relay learns: who talks in which channel, sizes
and times. Run NATS on a private network or with TLS and credentials (``docs/server.md``).

Every node must run the same ``server.toml`` channels and share the TLS key (``--tls-cert`` /
``--tls-key``, or a copied data directory): clients pin one key for the whole cluster and move
to another node when theirs fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec

from voipclient.errors import ProtocolError
from voipclient.net import messages as m
from voipclient.server.control import FIRST_ADMIN_CHANNEL_ID

if TYPE_CHECKING:  # nats-py is imported only when a server joins a cluster
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.kv import KeyValue

__all__ = ["SLOT_BITS", "ClusterError", "ClusterLink", "ClusterNode", "SharedChannel"]

log = logging.getLogger("voipclient.server.cluster")

PREFIX: Final = "vc"
#: A node's slot n gives it the sender ids n << 24 .. (n << 24) | 0xFFFFFF.
SLOT_BITS: Final = 24
MAX_SLOTS: Final = 255
HEARTBEAT_S: Final = 1.0
#: A node silent this long is gone: its users leave every other node's roster.
NODE_TIMEOUT_S: Final = 3.0
_BUCKETS: Final = ("vc_nodes", "vc_names", "vc_bans", "vc_channels", "vc_admins")
#: The stored records a node reads at start and then follows: bucket -> this link's attribute.
_FOLLOWED: Final = (
    ("vc_names", "names"),
    ("vc_bans", "bans"),
    ("vc_channels", "channels"),
    ("vc_admins", "admins"),
)


class ClusterError(Exception):
    """The cluster cannot be joined (NATS unreachable, no JetStream, no free slot)."""


class _Env(msgspec.Struct, array_like=True, frozen=True):
    """Everything on NATS but voice: one typed envelope (msgpack)."""

    node: str
    inc: int  # the node's incarnation: random per start, so a restart is told from a hiccup
    kind: str
    msg: bytes = b""  # an encoded ServerMessage (roster change, loss report)
    sender: int = 0
    channel: int = 0
    recipient: int = 0
    blob: bytes = b""
    address: str = ""  # heartbeat: where clients reach this node ("host:port")


_ENC: Final = msgspec.msgpack.Encoder()
_DEC: Final = msgspec.msgpack.Decoder(_Env)


class SharedChannel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A channel an administrator made, as the cluster's channel store keeps it (the node's
    ``StoredChannel``: a password only as its scrypt hash)."""

    id: int
    parent: int | None
    parent_name: str | None
    name: str
    description: str = ""
    password_hash: str | None = None
    max_members: int = 0
    speakers: tuple[str, ...] | None = None


_CH_ENC: Final = msgspec.json.Encoder()
_CH_DEC: Final = msgspec.json.Decoder(SharedChannel)


class ClusterNode(msgspec.Struct, frozen=True):
    """Another node as last heard."""

    node: str
    address: str
    seen: float


def _key(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unkey(key: str) -> bytes:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))


class ClusterLink:
    """This node's side of the cluster. ``await connect()`` (claims the sender-id slot and
    reads the shared name bindings and bans), then ``await start(host)`` once the server's
    core exists; ``publish_*`` from the adapter; ``await stop()``.

    ``host`` is the :class:`~voipclient.server.app.RelayServer`: it gets ``cluster_roster``,
    ``cluster_node_gone``, ``cluster_keydist``, ``cluster_text``, ``cluster_loss``,
    ``cluster_voice`` and ``cluster_local_users`` calls on its event loop.
    """

    def __init__(self, url: str, node: str, address: str) -> None:
        self.url = url
        self.node = node
        self.address = address
        self.incarnation = int.from_bytes(os.urandom(6), "big")
        self.slot = 0
        self.next_channel_id = 0
        self._nc: NatsClient | None = None
        self._kv: dict[str, KeyValue] = {}
        self._host: Any = None
        self._subs: list[Subscription] = []
        self._voice_subs: dict[int, Subscription] = {}
        self._want: set[int] = set()
        self._reconciling = False
        self._nodes: dict[str, tuple[int, str, float]] = {}  # node -> (incarnation, addr, seen)
        self._mismatch: dict[str, int] = {}  # node -> heartbeats in a row whose digest differed
        self._tasks: set[asyncio.Task[None]] = set()
        self._hb: asyncio.TimerHandle | None = None
        self.names: dict[str, bytes] = {}  # account key -> identity key, from vc_names
        self.bans: set[bytes] = set()  # identity keys, from vc_bans
        self.channels: dict[int, SharedChannel] = {}  # from vc_channels
        self.admins: set[bytes] = set()  # identity keys, from vc_admins
        self.counters = {
            "published": 0,
            "received": 0,
            "voice_out": 0,
            "voice_in": 0,
            "bad": 0,
            "nodes_gone": 0,
            "resyncs": 0,
        }

    # -- joining ---------------------------------------------------------------------------------

    @property
    def first_sender_id(self) -> int:
        return self.slot << SLOT_BITS

    @property
    def last_sender_id(self) -> int:
        return (self.slot << SLOT_BITS) | ((1 << SLOT_BITS) - 1)

    @property
    def first_channel_id(self) -> int:
        return FIRST_ADMIN_CHANNEL_ID + (max(self.slot, 1) - 1 << SLOT_BITS)

    @property
    def last_channel_id(self) -> int:
        return self.first_channel_id + (1 << SLOT_BITS) - 1

    async def connect(self, timeout: float = 10.0, *, claim_slot: bool = True) -> None:
        """Join: NATS, the shared buckets and (a node, not an operator command) a slot."""
        try:
            import nats
            from nats.js.errors import KeyWrongLastSequenceError
        except ImportError as exc:  # pragma: no cover - a dependency of the server
            raise ClusterError(f"nats-py is not installed ({exc})") from None
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    self.url,
                    name=f"voipclient-{self.node}",
                    no_echo=True,  # never our own messages back
                    max_reconnect_attempts=2,  # at start: a wrong URL fails in ~1 s
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=self._nats_reconnected,
                ),
                timeout,
            )
        except (OSError, TimeoutError, Exception) as exc:
            await self._close_quietly()
            raise ClusterError(
                f"no NATS server answered at {self.url} (is nats-server running there?) "
                f"[{type(exc).__name__}]"
            ) from None
        # Once in, never give up: a NATS restart must not end the node (nats-py reads this
        # option at each reconnect).
        self._nc.options["max_reconnect_attempts"] = -1
        try:
            js = self._nc.jetstream()
            for bucket in _BUCKETS:
                self._kv[bucket] = await asyncio.wait_for(
                    js.create_key_value(bucket=bucket, history=1), timeout
                )
        except (OSError, TimeoutError, Exception) as exc:
            await self._close_quietly()
            raise ClusterError(
                f"the NATS server at {self.url} has no JetStream (start it with -js): "
                f"{type(exc).__name__}"
            ) from None
        nodes = self._kv["vc_nodes"]
        for slot in range(1, MAX_SLOTS + 1 if claim_slot else 1):
            try:
                await nodes.create(f"slot{slot}", self.node.encode())
            except KeyWrongLastSequenceError:
                entry = await nodes.get(f"slot{slot}")
                if entry.value != self.node.encode():
                    continue  # another node's
            self.slot = slot
            break
        else:
            if claim_slot:
                raise ClusterError(f"no free node slot (at most {MAX_SLOTS} nodes)")
        if claim_slot:
            # The next id for a channel made here: kept with the slot, so an id is never given
            # twice (a client may still hold a deleted channel's id in a push-to-talk binding).
            with contextlib.suppress(Exception):  # none yet
                entry = await nodes.get(f"chan{self.slot}")
                self.next_channel_id = int((entry.value or b"0").decode())
        for bucket, target in _FOLLOWED:
            with contextlib.suppress(Exception):  # an empty bucket has no keys
                for key in await self._kv[bucket].keys():
                    entry = await self._kv[bucket].get(key)
                    self._store(target, key, entry.value)
        log.info(
            "joined the cluster url=%s node=%s slot=%d names=%d bans=%d channels=%d admins=%d",
            self.url,
            self.node,
            self.slot,
            len(self.names),
            len(self.bans),
            len(self.channels),
            len(self.admins),
        )

    async def _close_quietly(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 2.0)
            self._nc = None

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("cluster: NATS error=%r", exc)  # one line: nats-py would print a traceback

    async def _nats_disconnected(self) -> None:
        log.warning("cluster: NATS connection lost, reconnecting url=%s", self.url)

    async def _nats_reconnected(self) -> None:
        log.info("cluster: NATS connection back url=%s", self.url)
        if self._host is not None:
            # Roster changes may have been lost meanwhile (NATS core is at most once): say
            # hello again, so the others send us their users; ours go to them once more.
            self._send(_Env(self.node, self.incarnation, "hello", address=self.address))
            for user in self._host.cluster_local_users():
                self.publish_roster(m.UserJoined(user=user))

    def _store(self, target: str, key: str, value: bytes | None) -> None:
        try:
            if target == "names":
                name = _unkey(key).decode()
                if value:
                    self.names[name] = value
                else:
                    self.names.pop(name, None)
            elif target == "channels":
                cid = int(key.removeprefix("ch"))
                if value:
                    self.channels[cid] = _CH_DEC.decode(value)
                else:
                    self.channels.pop(cid, None)
            else:
                ik = _unkey(key)
                keys = self.bans if target == "bans" else self.admins
                if value is not None:
                    keys.add(ik)
                else:
                    keys.discard(ik)
        except (ValueError, UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            self.counters["bad"] += 1

    async def start(self, host: Any) -> None:
        """Subscribe, watch the shared buckets, say hello, start the heartbeat."""
        nc = self._nc
        assert nc is not None
        self._host = host
        me = f"{PREFIX}.node.{self.node}"
        for subject, cb in (
            (f"{PREFIX}.roster", self._on_env),
            (f"{PREFIX}.text", self._on_env),
            (f"{PREFIX}.hb", self._on_env),
            (f"{PREFIX}.hello", self._on_env),
            (f"{PREFIX}.bye", self._on_env),
            (f"{me}.keydist", self._on_env),
            (f"{me}.loss", self._on_env),
            (f"{me}.sync", self._on_env),
            (f"{me}.replace", self._on_env),
            (f"{me}.admin", self._on_env),
            (f"{me}.resync", self._on_env),
        ):
            self._subs.append(await nc.subscribe(subject, cb=cb))
        for bucket, target in _FOLLOWED:
            self._spawn(self._watch(bucket, target))
        await nc.flush()
        self._send(_Env(self.node, self.incarnation, "hello", address=self.address))
        self._heartbeat()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, bucket: str, target: str) -> None:
        watcher = await self._kv[bucket].watchall()
        async for entry in watcher:
            if entry is None:
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            self._store(target, entry.key, None if deleted else entry.value)
            if self._host is None:
                continue
            if target == "bans":
                self._host.cluster_bans_changed()
            elif target == "channels":
                with contextlib.suppress(ValueError):
                    cid = int(entry.key.removeprefix("ch"))
                    self._host.cluster_channel(cid, self.channels.get(cid))
            elif target == "admins":
                if not deleted:
                    with contextlib.suppress(ValueError):
                        self._host.cluster_admin_granted(_unkey(entry.key))
            elif not deleted and entry.value:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    self._host.cluster_name_bound(_unkey(entry.key).decode(), entry.value)

    # -- out -------------------------------------------------------------------------------------

    def _send(self, env: _Env, subject: str | None = None) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        subject = subject or f"{PREFIX}.{env.kind}"
        self.counters["published"] += 1
        self._spawn(nc.publish(subject, _ENC.encode(env)))

    def publish_roster(self, msg: m.ServerMessage) -> None:
        self._send(
            _Env(self.node, self.incarnation, "roster", msg=m.encode_checked(msg)),
            f"{PREFIX}.roster",
        )

    def publish_keydist(
        self, node: str, recipient: int, sender: int, channel: int, blob: bytes
    ) -> None:
        env = _Env(
            self.node,
            self.incarnation,
            "keydist",
            sender=sender,
            channel=channel,
            recipient=recipient,
            blob=blob,
        )
        self._send(env, f"{PREFIX}.node.{node}.keydist")

    def publish_text(self, sender: int, channel: int, blob: bytes) -> None:
        env = _Env(self.node, self.incarnation, "text", sender=sender, channel=channel, blob=blob)
        self._send(env, f"{PREFIX}.text")

    def publish_loss(self, node: str, to: int, msg: m.LossReportDelivery) -> None:
        env = _Env(self.node, self.incarnation, "loss", msg=m.encode_checked(msg), recipient=to)
        self._send(env, f"{PREFIX}.node.{node}.loss")

    def publish_replaced(self, node: str, sender_id: int) -> None:
        env = _Env(self.node, self.incarnation, "replace", sender=sender_id)
        self._send(env, f"{PREFIX}.node.{node}.replace")

    def publish_admin(
        self,
        node: str,
        action: int,
        by: int,
        by_name: str,
        target: int,
        channel: int | None,
        reason: str,
    ) -> None:
        """An administrator's kick, ban or move of a user of ``node``: that node carries it
        out. The text fields ride in ``msg`` (by_name, reason: what AdminNotice carries)."""
        env = _Env(
            self.node,
            self.incarnation,
            "admin",
            msg=_ENC.encode((action, by_name, reason, channel)),
            sender=by,
            recipient=target,
        )
        self._send(env, f"{PREFIX}.node.{node}.admin")

    async def put_channel(self, channel: SharedChannel) -> None:
        """A channel made or changed here, for every node (and this one's next start)."""
        kv = self._kv.get("vc_channels")
        if kv is not None:
            await kv.put(f"ch{channel.id}", _CH_ENC.encode(channel))
            self.channels[channel.id] = channel

    async def create_channel(self, channel: SharedChannel) -> bool:
        """Add a channel unless the store has its id already (a node's channels from before it
        joined). False when the id is taken."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = self._kv.get("vc_channels")
        if kv is None:
            return False
        try:
            await kv.create(f"ch{channel.id}", _CH_ENC.encode(channel))
        except KeyWrongLastSequenceError:
            return False
        self.channels[channel.id] = channel
        return True

    async def note_channel_id(self, channel_id: int) -> None:
        """``channel_id`` was given to a channel made here: never give it again."""
        if channel_id >= self.next_channel_id and self.slot:
            self.next_channel_id = channel_id + 1
            kv = self._kv.get("vc_nodes")
            if kv is not None:
                await kv.put(f"chan{self.slot}", str(channel_id + 1).encode())

    async def delete_channel(self, channel_id: int) -> None:
        kv = self._kv.get("vc_channels")
        if kv is not None:
            await kv.delete(f"ch{channel_id}")
            self.channels.pop(channel_id, None)

    async def grant_admin(self, ik_pub: bytes) -> None:
        """An identity made administrator (on this node): an administrator on every node."""
        kv = self._kv.get("vc_admins")
        if kv is not None:
            await kv.put(_key(ik_pub), b"1")
            self.admins.add(ik_pub)

    def publish_voice(self, bodies: list[bytes]) -> None:
        """Voice bodies (hop MAC removed) for listeners on other nodes: one publish each, on
        their channel's subject (bytes 4..8 of the header)."""
        nc = self._nc
        if nc is None or nc.is_closed or not bodies:
            return
        self.counters["voice_out"] += len(bodies)
        self._spawn(self._publish_voice(nc, bodies))

    @staticmethod
    async def _publish_voice(nc: NatsClient, bodies: list[bytes]) -> None:
        publish = nc.publish
        for body in bodies:
            await publish(f"{PREFIX}.voice.{int.from_bytes(body[4:8], 'big')}", body)

    async def bind_name(self, account_key: str, ik_pub: bytes) -> bool:
        """Record a name binding cluster-wide; False when another key has it already."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = self._kv.get("vc_names")
        if kv is None:
            return True
        try:
            await kv.create(_key(account_key), ik_pub)
        except KeyWrongLastSequenceError:
            entry = await kv.get(_key(account_key))
            return entry.value == ik_pub
        self.names[account_key] = ik_pub
        return True

    async def ban(self, ik_pub: bytes, reason: str) -> None:
        """Ban an identity key on every node."""
        kv = self._kv.get("vc_bans")
        if kv is not None:
            await kv.put(_key(ik_pub), reason.encode())
            self.bans.add(ik_pub)

    async def unban(self, ik_pub: bytes) -> bool:
        """Lift a ban on every node; False if the key was not banned in the cluster."""
        kv = self._kv.get("vc_bans")
        if kv is None or ik_pub not in self.bans:
            return False
        await kv.delete(_key(ik_pub))
        self.bans.discard(ik_pub)
        return True

    def set_listening(self, channels: set[int]) -> None:
        """Subscribe to the voice of exactly these channels (those our users listen to)."""
        self._want = set(channels)
        if not self._reconciling and self._nc is not None and not self._nc.is_closed:
            self._reconciling = True
            self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        nc = self._nc
        assert nc is not None
        try:
            while True:
                want = set(self._want)
                for ch in [c for c in self._voice_subs if c not in want]:
                    await self._voice_subs.pop(ch).unsubscribe()
                for ch in sorted(want - set(self._voice_subs)):
                    sub = await nc.subscribe(f"{PREFIX}.voice.{ch}", cb=self._on_voice)
                    self._voice_subs[ch] = sub
                await nc.flush()
                if want == self._want:
                    return
        finally:
            self._reconciling = False

    def nodes(self) -> list[ClusterNode]:
        """The other nodes heard from, with the address their clients use."""
        return [ClusterNode(n, addr, seen) for n, (_, addr, seen) in sorted(self._nodes.items())]

    # -- in --------------------------------------------------------------------------------------

    async def _on_voice(self, msg: Msg) -> None:
        self.counters["voice_in"] += 1
        if self._host is not None:
            self._host.cluster_voice(msg.data)

    async def _on_env(self, msg: Msg) -> None:
        try:
            env = _DEC.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.counters["bad"] += 1
            return
        if env.node == self.node:
            return
        self.counters["received"] += 1
        host = self._host
        if host is None:
            return
        self._seen(env)
        kind = env.kind
        if kind in ("roster", "loss"):
            try:
                decoded = m.decode(env.msg)
            except (ProtocolError, ValueError):
                self.counters["bad"] += 1
                return
            if kind == "roster":
                if not host.cluster_roster(env.node, decoded):
                    self.counters["bad"] += 1
            elif isinstance(decoded, m.LossReportDelivery):
                host.cluster_loss(env.recipient, decoded)
        elif kind == "keydist":
            host.cluster_keydist(env.sender, env.channel, env.recipient, env.blob)
        elif kind == "text":
            host.cluster_text(env.sender, env.channel, env.blob)
        elif kind == "hello":
            # A node (re)started: it knows nobody yet. Our users, to it alone.
            self._send_users(env.node)
        elif kind == "hb":
            self._compare(env.node, env.blob)
        elif kind == "resync":
            self._send_users(env.node, members=True)
        elif kind == "members":
            try:
                sids = msgspec.msgpack.decode(env.blob, type=list[int])
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.counters["bad"] += 1
                return
            gone = host.cluster_members(env.node, sids)
            log.info("cluster roster resynced node=%s users=%d left=%d", env.node, len(sids), gone)
        elif kind == "replace":
            host.cluster_replaced(env.sender)
        elif kind == "admin":
            try:
                action, by_name, reason, channel = msgspec.msgpack.decode(
                    env.msg, type=tuple[int, str, str, int | None]
                )
                op = m.AdminOp(action)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                self.counters["bad"] += 1
                return
            if not host.cluster_admin(op, env.sender, by_name, env.recipient, channel, reason):
                self.counters["bad"] += 1
        elif kind == "bye":
            self._gone(env.node, "stopped")

    def _send_users(self, node: str, *, members: bool = False) -> None:
        """Every user of ours to ``node`` alone (as UserJoined: one it knows becomes an
        update), then, for a resync, the complete list of their ids."""
        host = self._host
        users = host.cluster_local_users()
        subject = f"{PREFIX}.node.{node}.sync"
        for user in users:
            msg = m.encode_checked(m.UserJoined(user=user))
            self._send(_Env(self.node, self.incarnation, "roster", msg=msg), subject)
        if members:
            sids = _ENC.encode([u.sender_id for u in users])
            self._send(_Env(self.node, self.incarnation, "members", blob=sids), subject)

    def _compare(self, node: str, digest: bytes) -> None:
        """A heartbeat's digest of that node's users against what we know of them: two
        differing in a row (one may race a change in flight) ask it for all of them again."""
        if not digest or self._host is None:
            return
        if self._host.cluster_users_digest(node) == digest:
            self._mismatch.pop(node, None)
            return
        n = self._mismatch.get(node, 0) + 1
        if n >= 2:
            n = 0
            self.counters["resyncs"] += 1
            self._send(_Env(self.node, self.incarnation, "resync"), f"{PREFIX}.node.{node}.resync")
        self._mismatch[node] = n

    def _seen(self, env: _Env) -> None:
        known = self._nodes.get(env.node)
        if known is not None and known[0] != env.inc:
            self._gone(env.node, "restarted")  # its old users are gone with its old run
            known = None
        if env.kind == "bye":
            return
        address = env.address or (known[1] if known else "")
        self._nodes[env.node] = (env.inc, address, time.monotonic())
        if known is None or known[1] != address:
            self._nodes_changed()

    def addresses(self) -> tuple[str, ...]:
        """Every node's client address, this one first."""
        others = [addr for _, addr, _ in (self._nodes[n] for n in sorted(self._nodes)) if addr]
        return (self.address, *others)

    def _nodes_changed(self) -> None:
        if self._host is not None:
            self._host.cluster_nodes_changed(self.addresses())

    def _gone(self, node: str, why: str) -> None:
        if self._nodes.pop(node, None) is not None:
            self._nodes_changed()
        self.counters["nodes_gone"] += 1
        if self._host is not None:
            n = self._host.cluster_node_gone(node)
            log.info("cluster node gone node=%s why=%s users=%d", node, why, n)

    def _heartbeat(self, tick: int = 0) -> None:
        """Every HEARTBEAT_S / 2: every other tick a heartbeat out, every tick a look for
        nodes silent longer than NODE_TIMEOUT_S (so one is gone within 3.5 s)."""
        loop = asyncio.get_running_loop()
        if tick % 2 == 0:
            digest = b"" if self._host is None else self._host.cluster_users_digest()
            self._send(_Env(self.node, self.incarnation, "hb", address=self.address, blob=digest))
        now = time.monotonic()
        for node, (_, _, seen) in list(self._nodes.items()):
            if now - seen > NODE_TIMEOUT_S:
                self._gone(node, "silent")
        self._hb = loop.call_later(HEARTBEAT_S / 2, self._heartbeat, tick + 1)

    # -- leaving ---------------------------------------------------------------------------------

    async def stop(self) -> None:
        if self._hb is not None:
            self._hb.cancel()
        nc = self._nc
        if nc is None:
            return
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.publish(
                    f"{PREFIX}.bye", _ENC.encode(_Env(self.node, self.incarnation, "bye"))
                )
                await asyncio.wait_for(nc.flush(), 1.0)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2.0)
