"""The client side of the control session, sans-IO (h11/aioquic style).

The adapter owns the TLS socket and a clock and drives the session::

    session = ClientSession(name, ik_pub, sign)
    session.start(now)                       # queues Hello
    send(session.data_to_send())
    ...
    events = session.receive_data(data, now) # bytes from the socket → events
    events += session.handle_timer(now)      # when get_timer() is due
    send(session.data_to_send())             # after every call above and every intent

The handshake (Hello → ServerHello → Login → LoginOk [→ RosterPage…]) runs by itself; ``LoggedIn``
marks the end of it. Intents (``join``, ``send_text``, …) are only allowed once READY and raise
:class:`~voipclient.errors.LocalProtocolError` otherwise (or when their arguments break the
schema bounds). A server that breaks the protocol costs only this connection: the session queues a
fatal Error frame, returns :class:`~voipclient.net.events.ConnectionClosed` carrying the
:class:`~voipclient.errors.RemoteProtocolError`, and ignores anything that arrives later.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from voipclient import __version__
from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.names import InvalidName, check_name, prepare_name
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.bucket import TokenBucket
from voipclient.net.frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from voipclient.net.roster import ChannelView, Roster, RosterError, RosterSnapshot, UserView
from voipclient.net.states import ClientState, Direction, Trigger, next_client_state

__all__ = ["ClientSession", "LossReportLike"]

#: Seconds between Pings once READY.
DEFAULT_PING_INTERVAL: Final = 5.0
#: Seconds without any data (before READY) or without a Pong (READY) before we give up.
DEFAULT_TIMEOUT: Final = 30.0
#: Seconds we wait for the server's Bye after our own before calling the close done.
DEFAULT_CLOSE_TIMEOUT: Final = 5.0

#: Our pace under the server's announced control-message limit (``Limits.rate_per_s`` and
#: ``rate_burst``; a session over it is closed): this share of its rate, and of its burst, so
#: that sends the network delivers bunched together still fit.
PACE_RATE_SHARE: Final = 0.9
PACE_BURST_SHARE: Final = 0.5
#: Not paced: voice and loss reports have buckets of their own (excess dropped, not fatal);
#: Bye and Error are last words; a Ping (one per 5 s, well inside the headroom) must not wait,
#: or the round-trip time it measures would include the wait.
_UNPACED: Final = (m.VoiceTunnel, m.Bye, m.Error, m.Ping)

_RECV: Final = Direction.RECV
_SEND: Final = Direction.SEND


class LossReportLike(Protocol):
    """What :meth:`ClientSession.send_loss_reports` takes: one listener-side measurement of one
    speaker (``voipclient.audio.redundancy.LossReport`` is one)."""

    @property
    def sender_id(self) -> int:
        """The speaker the report is about."""
        ...

    @property
    def loss(self) -> float: ...

    @property
    def burst(self) -> float: ...

    @property
    def jitter_ms(self) -> float: ...

    @property
    def window_frames(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Counters:
    """UDP counters at one point in time, to compute loss over the interval between Pongs."""

    sent: int = 0
    server_received: int = 0
    received: int = 0
    lost: int = 0


@dataclass(frozen=True, slots=True)
class _PendingPing:
    sent_at: float  # our clock, seconds
    stats: m.UdpStats  # what the Ping reported


class ClientSession:
    """One control connection to a server, from ``start`` to ``ConnectionClosed``.

    Args:
        name: the user name to log in with (schema: 1..32 visible characters).
        ik_pub: our Ed25519 identity public key, raw 32 bytes.
        sign: signs bytes with the identity private key (Ed25519, 64-byte signature); called
            once, for the login transcript.
        password: the server password, if the server has one.
        rng: randomness source (bytes of the requested length); injected for tests.
        ping_interval: seconds between Pings when READY.
        timeout: seconds without data (handshake) or Pong (READY) before closing as timed out.
        close_timeout: seconds to wait for the server's Bye after ``close()``.
        max_frame_size: the largest frame payload we accept, bytes (at least 64 KiB).
        versions: protocol versions to offer, best first (tests use this to force a mismatch).
        client_name, client_version: announced in Hello, for the server's logs.
    """

    def __init__(
        self,
        name: str,
        ik_pub: bytes,
        sign: Callable[[bytes], bytes],
        password: str | None = None,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        versions: Iterable[str] = (m.PROTOCOL_VERSION,),
        client_name: str = "voipclient",
        client_version: str = __version__,
    ) -> None:
        if ping_interval <= 0 or timeout <= 0 or close_timeout <= 0:
            raise LocalProtocolError("ping_interval, timeout and close_timeout must be > 0")
        if max_frame_size < DEFAULT_MAX_FRAME_SIZE:
            raise LocalProtocolError(f"max_frame_size must be at least {DEFAULT_MAX_FRAME_SIZE}")
        self._hello = m.Hello(
            versions=tuple(versions), client_name=client_name, client_version=client_version
        )
        # Check our own inputs now, not at the first message that would carry them. The name is
        # NFC-normalised and must pass the same rules the server and every peer apply to it.
        name = prepare_name(name)
        try:
            check_name(name)
        except InvalidName as exc:
            raise LocalProtocolError(exc.reason, field="name") from None
        m.encode_checked(self._hello)
        m.encode_checked(m.Login(name=name, ik_pub=ik_pub, signature=bytes(64), password=password))
        self.name: Final = name
        self.ik_pub: Final = ik_pub
        self._sign = sign
        self._password = password
        self._ping_interval = ping_interval
        self._timeout = timeout
        self._close_timeout = close_timeout

        self._state = ClientState.IDLE
        self._decoder = FrameDecoder(max_frame_size)
        self._out = bytearray()
        # Control messages over our pace wait here, in order, for handle_timer.
        self._held: deque[bytes] = deque()
        self._pace: TokenBucket | None = None  # from ServerHello's limits on
        self._now = 0.0  # the adapter's clock at its latest call that gave one
        self._roster = Roster()
        self._roster_dirty = False
        # Account keys (UTS #39 skeletons) of the users in the roster, and every sender id seen
        # in this connection: names are unique by skeleton and sender ids are never reused.
        self._name_keys: dict[str, int] = {}
        self._seen_ids: set[int] = set()

        self._version: str | None = None
        self._server_name = ""
        self._limits: m.Limits | None = None
        self._sender_id: int | None = None
        self._hop_secret: bytes | None = None
        self._udp_port = 0

        # Clocks, all in seconds on the adapter's monotonic clock.
        self._last_rx = 0.0
        self._last_pong = 0.0
        self._next_ping = 0.0
        self._close_deadline = 0.0

        # Pings: a random start makes sessions distinguishable in logs and captures.
        self._ping_seq = int.from_bytes(rng(4), "big")
        self._pending: dict[int, _PendingPing] = {}
        self._pings_sent = 0
        self._pongs_received = 0
        self._srtt_ms: float | None = None
        self._rttvar_ms = 0.0
        self._udp = m.UdpStats()
        self._at_last_pong = _Counters()

    # -- properties ------------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def roster(self) -> RosterSnapshot:
        """The roster as we know it (complete once READY)."""
        return self._roster.snapshot()

    @property
    def sender_id(self) -> int | None:
        """Our sender id, from LoginOk on."""
        return self._sender_id

    @property
    def hop_secret(self) -> bytes | None:
        return self._hop_secret

    @property
    def is_admin(self) -> bool:
        """The server counts us as one of its administrators (the ``admin`` flag of our own
        roster entry): show the admin menus. False until LoginOk, and from servers that do not
        send the flag. A hint only: the server checks every admin request itself."""
        me = self._roster.user(self._sender_id) if self._sender_id is not None else None
        return me is not None and me.admin

    @property
    def udp_port(self) -> int:
        return self._udp_port

    @property
    def limits(self) -> m.Limits | None:
        """The server's limits, from ServerHello on."""
        return self._limits

    @property
    def version(self) -> str | None:
        return self._version

    # -- I/O -------------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The transport is connected: queue Hello and start the handshake clock."""
        self._now = now
        self._send(self._hello)
        self._last_rx = now

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport, in order (empties the buffer)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes, now: float) -> list[ev.ClientEvent]:
        """Feed bytes read from the transport (any chunking) and return the resulting events."""
        if self._state is ClientState.IDLE:
            raise LocalProtocolError("receive_data() before start()")
        if self._state is ClientState.CLOSED or not data:
            return []
        self._last_rx = now
        self._now = now
        self._release(now)
        events: list[ev.ClientEvent] = []
        try:
            for payload in self._decoder.feed(data):
                self._handle(m.decode(payload), now, events)
                if self._is_closed():
                    break
        except RemoteProtocolError as exc:
            self._fail(exc, events)
        if self._roster_dirty and self._state is ClientState.READY:
            self._roster_dirty = False
            events.append(ev.RosterChanged(self._roster.snapshot()))
        return events

    def connection_lost(self, now: float) -> list[ev.ClientEvent]:
        """The transport closed (EOF or error)."""
        if self._state in (ClientState.IDLE, ClientState.CLOSED):
            self._state = ClientState.CLOSED
            return []
        reason = (
            ev.CloseReason.LOCAL_CLOSE
            if self._state is ClientState.CLOSING
            else ev.CloseReason.CONNECTION_LOST
        )
        self._state = next_client_state(self._state, Trigger.ABORT)
        return [ev.ConnectionClosed(reason, message="transport closed")]

    # -- timers ----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (adapter clock, seconds), or None."""
        state = self._state
        if state in (ClientState.IDLE, ClientState.CLOSED):
            return None
        if state is ClientState.CLOSING:
            return min(self._close_deadline, self._last_rx + self._timeout)
        due = (
            min(self._next_ping, self._last_pong + self._timeout)
            if state is ClientState.READY
            else self._last_rx + self._timeout
        )
        if self._held and self._pace is not None:
            due = min(due, self._pace.ready_at(self._now))
        return due

    @property
    def held_messages(self) -> int:
        """Control messages waiting for our pace under the server's rate limit."""
        return len(self._held)

    def handle_timer(self, now: float) -> list[ev.ClientEvent]:
        """Send a due Ping or held messages, or close a connection that went silent. Safe to
        call early."""
        state = self._state
        if state in (ClientState.IDLE, ClientState.CLOSED):
            return []
        self._now = now
        self._release(now)
        if state is ClientState.CLOSING:
            if now >= self._close_deadline or now >= self._last_rx + self._timeout:
                self._state = next_client_state(state, Trigger.ABORT)
                return [ev.ConnectionClosed(ev.CloseReason.LOCAL_CLOSE, message="no Bye")]
            return []
        silent_since = self._last_pong if state is ClientState.READY else self._last_rx
        if now >= silent_since + self._timeout:
            message = f"nothing from the server for {now - silent_since:.1f} s"
            self._send(m.Error(code=m.ErrorCode.TIMEOUT, message=message, fatal=True))
            return [ev.ConnectionClosed(ev.CloseReason.TIMEOUT, m.ErrorCode.TIMEOUT, message)]
        if state is ClientState.READY and now >= self._next_ping:
            self._send_ping(now)
        return []

    # -- intents (READY only) --------------------------------------------------------------------

    def join(self, channel_id: int, password: str | None = None) -> None:
        """Ask to become a member of ``channel_id`` (in addition to current memberships).

        Success arrives as a MembershipChanged event about us; failure as a ServerError
        with ``channel_id`` set.
        """
        self._send(m.JoinChannel(channel_id=channel_id, password=password))

    def leave(self, channel_id: int) -> None:
        """Ask to stop being a member of ``channel_id`` (answered like :meth:`join`)."""
        self._send(m.LeaveChannel(channel_id=channel_id))

    def publish_session_key(self, sk_pub: bytes, skc: bytes) -> None:
        """Publish our session KEM key and its certificate; everyone (us too) gets UserUpdated."""
        self._send(m.PublishSessionKey(sk_pub=sk_pub, skc=skc))

    def send_keydist(self, channel_id: int, recipients: Iterable[int], blob: bytes) -> None:
        """Send a KeyDist batch; the server hands it to the named recipients that are members
        of ``channel_id`` and connected (1..64 recipients, blob ≤ 63 KiB)."""
        self._send(m.KeyDist(channel_id=channel_id, recipients=tuple(recipients), blob=blob))

    def send_text(self, channel_id: int, blob: bytes) -> None:
        """Send an encrypted text message to the other members of ``channel_id``."""
        self._send(m.Text(channel_id=channel_id, blob=blob))

    def send_voice_tunnel(self, datagram: bytes) -> None:
        """Send one voice datagram over TLS (when UDP is blocked); ≤ 1200 bytes."""
        self._send(m.VoiceTunnel(datagram=datagram))

    def set_voice_transport(self, tunnel: bool) -> None:
        """Tell the relay to send our incoming voice through the tunnel (True) or UDP."""
        self._send(m.SetVoiceTransport(tunnel=tunnel))

    def set_self_state(self, muted: bool, deafened: bool) -> None:
        """Announce self-mute/deafen (a deafened user gets no voice from the relay)."""
        self._send(m.SetSelfState(muted=muted, deafened=deafened))

    def admin(
        self,
        action: m.AdminOp | str,
        target: int,
        channel_id: int | None = None,
        reason: str = "",
    ) -> None:
        """Ask the server to kick, ban or move (into ``channel_id``, required for a move and
        only for it) the user with sender id ``target``; ``action`` is an AdminOp or its name
        (``"kick"``, ``"ban"``, ``"move"``). Only works when our identity key is one of the
        server's administrators.

        Success arrives as an AdminNoticeReceived event (plus UserLeft or MembershipChanged);
        failure as a non-fatal ServerError (NOT_ADMIN, NO_SUCH_USER, NO_SUCH_CHANNEL,
        ALREADY_MEMBER).
        """
        try:
            op = m.AdminOp[action.upper()] if isinstance(action, str) else m.AdminOp(action)
        except (KeyError, ValueError):
            raise LocalProtocolError(f"unknown admin action {action!r}") from None
        try:
            msg = m.AdminAction(
                action=op,
                target=target,
                channel_id=channel_id,
                reason=m.clean_text(reason, m.MAX_REASON_LEN),
            )
        except ValueError as exc:
            raise LocalProtocolError(str(exc), code=m.ErrorCode.MALFORMED_MESSAGE) from None
        self._send(msg)

    def channel_admin(
        self,
        op: m.ChannelOp | str,
        channel_id: int | None = None,
        *,
        name: str | None = None,
        parent: int | None = None,
        description: str | None = None,
        password: str | None = None,
        max_members: int | None = None,
        speakers: Iterable[str] | None = None,
        everyone_speaks: bool = False,
    ) -> None:
        """Ask the server to create, change or delete a channel; ``op`` is a ChannelOp or its
        name (``"create"``, ``"update"``, ``"delete"``). Only works when our identity key is one
        of the server's administrators (:attr:`is_admin`).

        CREATE needs ``name`` and no ``channel_id`` (``parent`` defaults to the Lobby); UPDATE
        needs ``channel_id`` and changes only the fields given (None: unchanged); DELETE needs
        ``channel_id`` only. ``password``: None unchanged, ``""`` removes it, else the new one.
        ``speakers``: only these names may transmit (empty: nobody); ``everyone_speaks``: every
        member may (the two exclude each other; neither: unchanged).

        Success arrives as the roster events (ChannelAdded, ChannelUpdated, MembershipChanged,
        ChannelRemoved) and then ChannelAdminDone with the channel's id; failure as a non-fatal
        ServerError (NOT_ADMIN, NO_SUCH_CHANNEL, CHANNEL_LOCKED, CHANNEL_HAS_SUBCHANNELS,
        INVALID_CHANNEL, CHANNEL_NAME_TAKEN).

        Raises:
            LocalProtocolError: not READY, an unknown ``op``, fields that do not fit ``op``, or a
                value outside the schema (``field`` names it: a name of 1..64 visible
                characters, a description of <= 512, a password of <= 128, <= 256 speakers).
        """
        if isinstance(speakers, str):
            raise LocalProtocolError("speakers is a list of names, not one string")
        try:
            kind = m.ChannelOp[op.upper()] if isinstance(op, str) else m.ChannelOp(op)
        except (KeyError, ValueError):
            raise LocalProtocolError(f"unknown channel admin op {op!r}") from None
        try:
            msg = m.ChannelAdmin(
                op=kind,
                channel_id=channel_id,
                name=name,
                parent=parent,
                description=description,
                password=password,
                max_members=max_members,
                speakers=None if speakers is None else tuple(speakers),
                everyone_speaks=everyone_speaks,
            )
        except ValueError as exc:
            raise LocalProtocolError(str(exc), code=m.ErrorCode.MALFORMED_MESSAGE) from None
        self._send(msg)

    def send_loss_reports(self, reports: Iterable[LossReportLike]) -> None:
        """Send our loss/jitter measurements of the speakers we hear (one per speaker, e.g. from
        ``LossMeter.take_report``); the server forwards each to its speaker if it shares a
        channel with us, which gets a LossReportReceived event.

        Up to 64 reports go in one ``loss_report`` message (more are split over several). Call
        it once per report interval with every due report: the server drops (and counts)
        ``loss_report`` messages beyond ~4/s per session. Nothing is sent for no reports.

        Raises:
            LocalProtocolError: not READY, or a figure is out of range (``field`` names it, e.g.
                ``reports[0].loss``: loss 0..1, burst >= 0, jitter_ms >= 0, frames >= 0, no NaN);
                then nothing at all is sent.
        """
        next_client_state(self._state, (_SEND, m.LossReports))  # READY only (it stays READY)
        try:
            entries = [
                m.LossReportEntry(
                    to=r.sender_id,
                    loss=float(r.loss),
                    burst=float(r.burst),
                    jitter_ms=float(r.jitter_ms),
                    frames=r.window_frames,
                )
                for r in reports
            ]
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(
                f"not a loss report: {exc}", code=m.ErrorCode.MALFORMED_MESSAGE
            ) from None
        if not entries:
            return
        msgs = [
            m.LossReports(reports=tuple(entries[i : i + m.MAX_LOSS_REPORTS]))
            for i in range(0, len(entries), m.MAX_LOSS_REPORTS)
        ]
        # Every message's bounds first: all of them go out, or none.
        payloads = []
        for k, msg in enumerate(msgs):
            try:
                payloads.append(m.encode_checked(msg))
            except LocalProtocolError as exc:
                raise LocalProtocolError(
                    exc.message, code=exc.code, field=_offset_field(exc.field, k)
                ) from None
        for payload in payloads:
            self._out += encode_frame(payload)

    def report_udp_stats(
        self, sent: int, received: int, lost: int, rtt_ms: float = 0.0, jitter_ms: float = 0.0
    ) -> None:
        """Record the UDP path's cumulative counters since login; the next Ping carries them
        and PingStats derives loss from them. Allowed in any state."""
        self._udp = m.UdpStats(
            sent=sent, received=received, lost=lost, rtt_ms=rtt_ms, jitter_ms=jitter_ms
        )

    def close(self, reason: str = "", now: float | None = None) -> None:
        """Say Bye. ConnectionClosed follows when the server's Bye arrives, the transport
        closes, or ``close_timeout`` seconds pass after ``now`` (default: the last time data
        arrived). Idempotent; before ``start`` it just ends the session."""
        if self._state is ClientState.IDLE:
            self._state = next_client_state(self._state, Trigger.ABORT)
            return
        if self._state in (ClientState.CLOSING, ClientState.CLOSED):
            return
        self._send(m.Bye(reason=m.clean_text(reason, m.MAX_REASON_LEN)))
        self._close_deadline = (self._last_rx if now is None else now) + self._close_timeout

    # -- internals -------------------------------------------------------------------------------

    def _send(self, msg: m.ClientMessage) -> None:
        nxt = next_client_state(self._state, (_SEND, type(msg)))
        frame = encode_frame(m.encode_checked(msg))
        self._state = nxt
        pace = self._pace
        if pace is None or isinstance(msg, _UNPACED):
            if isinstance(msg, m.Bye | m.Error):
                self._held.clear()  # nothing goes after last words
            self._out += frame
        elif not self._held and pace.take(self._now):
            self._out += frame
        else:
            # Over the server's limit it would close the session (a client rejoining with many
            # others at once hands out keys to every newcomer): later, in order.
            self._held.append(frame)

    def _release(self, now: float) -> None:
        held, pace = self._held, self._pace
        while held and pace is not None and pace.take(now):
            self._out += held.popleft()

    def _is_closed(self) -> bool:
        # A method, so type checkers don't narrow the state across calls that change it.
        return self._state is ClientState.CLOSED

    def _fail(self, exc: RemoteProtocolError, events: list[ev.ClientEvent]) -> None:
        """The server broke the protocol: tell it why (fatal Error) and close."""
        code = exc.code or m.ErrorCode.PROTOCOL_ERROR
        if self._state is not ClientState.CLOSED:
            self._send(m.Error(code=code, message=m.clean_text(exc.message), fatal=True))
        events.append(
            ev.ConnectionClosed(ev.CloseReason.PROTOCOL_ERROR, code, exc.message, error=exc)
        )

    def _handle(self, msg: m.Message, now: float, events: list[ev.ClientEvent]) -> None:
        prev = self._state
        nxt = next_client_state(prev, (_RECV, type(msg)))
        if prev is ClientState.CLOSING:
            # After our Bye only the end matters; everything else is discarded.
            self._state = nxt
            if isinstance(msg, m.Error) and msg.fatal:
                self._state = next_client_state(self._state, Trigger.ABORT)
            if self._state is ClientState.CLOSED:
                reason = (
                    ev.CloseReason.SHUTDOWN
                    if isinstance(msg, m.ServerShutdown)
                    else ev.CloseReason.LOCAL_CLOSE
                )
                events.append(ev.ConnectionClosed(reason))
            return
        self._state = nxt
        try:
            self._dispatch(msg, now, events)
        except RosterError as exc:
            raise RemoteProtocolError(
                f"roster update rejected: {exc}", code=m.ErrorCode.ROSTER_INCONSISTENT
            ) from exc

    def _dispatch(self, msg: m.Message, now: float, events: list[ev.ClientEvent]) -> None:
        roster = self._roster
        match msg:
            case m.ServerHello():
                self._on_server_hello(msg, events)
            case m.LoginOk():
                self._sender_id = msg.sender_id
                self._hop_secret = msg.hop_secret
                self._udp_port = msg.udp_port
                self._admit_users(msg.users)
                roster.load_page(msg.channels, msg.users)
                if not msg.more:
                    self._roster_complete(now, events)
            case m.RosterPage():
                self._admit_users(msg.users)
                roster.load_page(msg.channels, msg.users)
                if not msg.more:
                    self._roster_complete(now, events)
            case m.UserJoined():
                self._admit_users((msg.user,))
                roster.apply(msg)
                events.append(
                    ev.UserJoined(
                        UserView.from_wire(msg.user),
                        frozenset(mb.channel_id for mb in msg.user.channels),
                    )
                )
                self._roster_dirty = True
            case m.UserLeft():
                if msg.sender_id == self._sender_id:
                    raise RosterError("the server announced our own departure")
                user = roster.user(msg.sender_id)
                channels = roster.channels_of(msg.sender_id)
                roster.apply(msg)
                assert user is not None  # apply() raised otherwise
                self._name_keys.pop(check_name(user.name), None)
                events.append(ev.UserLeft(user, channels, int(msg.reason)))
                self._roster_dirty = True
            case m.UserUpdated():
                previous = roster.user(msg.user.sender_id)
                if previous is None:
                    raise RosterError(f"user_updated for unknown user {msg.user.sender_id}")
                _check_unchanged(previous, msg.user, roster)
                roster.apply(msg)
                user = UserView.from_wire(msg.user)
                events.append(ev.UserUpdated(user, previous))
                if (
                    user.sk_pub is not None
                    and user.skc is not None
                    and ((user.sk_pub, user.skc) != (previous.sk_pub, previous.skc))
                ):
                    events.append(ev.SessionKeyPublished(user.sender_id, user.sk_pub, user.skc))
                self._roster_dirty = True
            case m.MembershipChanged():
                roster.apply(msg)
                events.append(
                    ev.MembershipChanged(msg.sender_id, msg.channel_id, msg.joined, msg.may_speak)
                )
                self._roster_dirty = True
            case m.ChannelAdded():
                channel = ChannelView.from_wire(msg.channel)
                roster.add_channel(channel)
                events.append(ev.ChannelAdded(channel))
                self._roster_dirty = True
            case m.ChannelUpdated():
                channel = ChannelView.from_wire(msg.channel)
                events.append(ev.ChannelUpdated(channel, roster.update_channel(channel)))
                self._roster_dirty = True
            case m.ChannelRemoved():
                members = roster.members(msg.channel_id)
                removed = roster.remove_channel(msg.channel_id)
                events.append(ev.ChannelRemoved(removed, members))
                self._roster_dirty = True
            case m.KeyDistDelivery():
                events.append(ev.KeyDistReceived(msg.sender_id, msg.channel_id, msg.blob))
            case m.TextDelivery():
                events.append(ev.TextReceived(msg.sender_id, msg.channel_id, msg.blob))
            case m.VoiceTunnel():
                events.append(ev.VoiceTunnelReceived(msg.datagram))
            case m.AdminNotice():
                events.append(
                    ev.AdminNoticeReceived(
                        msg.action, msg.by, msg.target, msg.channel_id, msg.reason
                    )
                )
            case m.ChannelAdminOk():
                events.append(ev.ChannelAdminDone(msg.op, msg.channel_id))
            case m.LossReportDelivery():
                events.append(
                    ev.LossReportReceived(msg.from_, msg.loss, msg.burst, msg.jitter_ms, msg.frames)
                )
            case m.ClusterNodes():
                events.append(ev.ClusterNodesLearned(msg.nodes))
            case m.Pong():
                self._on_pong(msg, now, events)
            case m.Error():
                events.append(ev.ServerError(msg.code, msg.message, msg.fatal, msg.channel_id))
                if msg.fatal:
                    self._state = next_client_state(self._state, Trigger.ABORT)
                    events.append(
                        ev.ConnectionClosed(ev.CloseReason.PEER_ERROR, msg.code, msg.message)
                    )
            case m.ServerShutdown():
                events.append(ev.ServerShuttingDown(msg.reason, msg.reconnect_after_ms))
                events.append(ev.ConnectionClosed(ev.CloseReason.SHUTDOWN, message=msg.reason))
            case m.Bye():
                events.append(ev.ConnectionClosed(ev.CloseReason.PEER_BYE, message=msg.reason))
            case _:  # pragma: no cover - the transition table admits nothing else
                raise LocalProtocolError(f"no handler for {type(msg).__name__}")

    def _admit_users(self, users: Iterable[m.UserInfo]) -> None:
        """Check users about to enter the roster: a valid name (NFC, no invisible, bidi or
        format characters, one script), unique by its confusable skeleton, and a sender id
        never seen before in this connection (a relay cannot bring a departed user back, nor
        seat a look-alike of someone beside them)."""
        for user in users:
            try:
                key = check_name(user.name)
            except InvalidName as exc:
                raise RosterError(
                    f"user {user.sender_id} has an invalid name: {exc.reason}"
                ) from None
            if user.sender_id in self._seen_ids:
                raise RosterError(f"sender id {user.sender_id} was already used")
            other = self._name_keys.get(key)
            if other is not None:
                raise RosterError(
                    f"user {user.sender_id} ({user.name!r}) looks like user {other}'s name"
                )
            self._seen_ids.add(user.sender_id)
            self._name_keys[key] = user.sender_id

    def _on_server_hello(self, msg: m.ServerHello, events: list[ev.ClientEvent]) -> None:
        if msg.version not in self._hello.versions:
            raise RemoteProtocolError(
                f"server chose version {msg.version!r}, we offered {list(self._hello.versions)}",
                code=m.ErrorCode.UNSUPPORTED_VERSION,
                field="version",
            )
        self._version = msg.version
        self._server_name = msg.server_name
        self._limits = msg.limits
        lim = msg.limits
        self._pace = TokenBucket(
            lim.rate_per_s * PACE_RATE_SHARE,
            max(1.0, lim.rate_burst * PACE_BURST_SHARE),
            self._now,
        )
        events.append(
            ev.Negotiated(msg.version, msg.server_name, msg.limits, msg.password_required)
        )
        signature = self._sign(m.login_transcript(msg.challenge, self.name, self.ik_pub))
        if len(signature) != m.ED25519_SIG_LEN:
            raise LocalProtocolError(f"sign() returned {len(signature)} bytes, expected 64")
        self._send(
            m.Login(
                name=self.name, ik_pub=self.ik_pub, signature=signature, password=self._password
            )
        )

    def _roster_complete(self, now: float, events: list[ev.ClientEvent]) -> None:
        me = self._roster.user(self._sender_id or 0)
        if me is None or me.name != self.name or me.ik_pub != self.ik_pub:
            raise RosterError("our own user is missing from the roster or differs")
        self._state = next_client_state(self._state, Trigger.ROSTER_COMPLETE)
        self._last_pong = now
        self._next_ping = now + self._ping_interval
        self._roster_dirty = False
        assert self._sender_id is not None and self._hop_secret is not None
        events.append(
            ev.LoggedIn(self._sender_id, self._hop_secret, self._udp_port, self._roster.snapshot())
        )

    def _send_ping(self, now: float) -> None:
        seq = self._ping_seq
        self._ping_seq = (seq + 1) & m.U32_MAX
        # Forget pings that can no longer be answered in time: they count as lost.
        for old in [s for s, p in self._pending.items() if now - p.sent_at >= self._timeout]:
            del self._pending[old]
        self._pending[seq] = _PendingPing(now, self._udp)
        self._pings_sent += 1
        self._next_ping = now + self._ping_interval
        self._send(m.Ping(seq=seq, client_time_ms=max(0, int(now * 1000)), udp=self._udp))

    def _on_pong(self, msg: m.Pong, now: float, events: list[ev.ClientEvent]) -> None:
        ping = self._pending.pop(msg.seq, None)
        if ping is None:
            # A Pong we gave up on, or one for a Ping we never sent: either way no sample.
            return
        self._last_pong = now
        self._pongs_received += 1
        # Our own send time, not the echoed client_time_ms: a server cannot skew our RTT.
        rtt_ms = max(0.0, (now - ping.sent_at) * 1000.0)
        if self._srtt_ms is None:  # RFC 6298 §2.2: first sample
            self._srtt_ms = rtt_ms
            self._rttvar_ms = rtt_ms / 2
        else:  # RFC 6298 §2.3 with alpha = 1/8, beta = 1/4
            self._rttvar_ms = 0.75 * self._rttvar_ms + 0.25 * abs(self._srtt_ms - rtt_ms)
            self._srtt_ms = 0.875 * self._srtt_ms + 0.125 * rtt_ms
        before = self._at_last_pong
        now_counters = _Counters(
            sent=ping.stats.sent,
            server_received=msg.udp_received,
            received=ping.stats.received,
            lost=ping.stats.lost,
        )
        self._at_last_pong = now_counters
        events.append(
            ev.PingStats(
                seq=msg.seq,
                rtt_ms=rtt_ms,
                srtt_ms=self._srtt_ms,
                rttvar_ms=self._rttvar_ms,
                pings_sent=self._pings_sent,
                pongs_received=self._pongs_received,
                udp_received_by_server=msg.udp_received,
                udp_loss_up=_loss(
                    now_counters.sent - before.sent,
                    now_counters.server_received - before.server_received,
                ),
                udp_loss_down=_loss(
                    (now_counters.received - before.received) + (now_counters.lost - before.lost),
                    now_counters.received - before.received,
                ),
            )
        )


def _check_unchanged(previous: UserView, user: m.UserInfo, roster: Roster) -> None:
    """A user_updated may change the session key, its certificate and the mute/deafen flags,
    nothing else: a user's name and identity key are fixed for its session, and memberships
    change only through membership/user_joined/user_left, which the E2E layer sees."""
    sid = user.sender_id
    if user.name != previous.name:
        raise RosterError(f"user_updated tried to rename user {sid}")
    if user.ik_pub != previous.ik_pub:
        raise RosterError(f"user_updated tried to change user {sid}'s identity key")
    current = {ch: roster.may_speak(sid, ch) for ch in roster.channels_of(sid)}
    if {mb.channel_id: mb.may_speak for mb in user.channels} != current:
        raise RosterError(f"user_updated tried to change user {sid}'s memberships")


def _offset_field(field: str | None, chunk: int) -> str | None:
    """``reports[i]...`` of the ``chunk``-th message → the index in the caller's whole list."""
    if field is None or not chunk or not field.startswith("reports["):
        return field
    index, _, rest = field.removeprefix("reports[").partition("]")
    if not index.isdigit():
        return field
    return f"reports[{int(index) + chunk * m.MAX_LOSS_REPORTS}]{rest}"


def _loss(expected: int, arrived: int) -> float | None:
    """Lost fraction of ``expected`` packets, clamped to 0..1 (counters race by a few packets)."""
    if expected <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - arrived / expected))
