"""The desktop client's connection to a server: a QObject that owns the QSslSocket (control) and the
QUdpSocket (voice) and drives the pure ``ClientSession`` + ``SecureSession``, like Mumble's
ServerHandler. It is an adapter: every decision is in the sans-IO core it feeds.

Thread: create it, ``moveToThread(thread)``, start the thread, then talk to it only through its
slots (queued) and signals (queued). The crypto objects it drives have one owner: this thread.
Voice crosses threads through two mailboxes, never through the UI thread:

* ``send_voice(targets, ending, payload)`` (from the capture worker, queued): sealed here once per
  channel and sent over UDP, or over the TLS tunnel when UDP is not available;
* opened voice frames are appended to ``inbox`` (a ``collections.deque``: ``append`` and
  ``popleft`` are atomic in CPython) for the playback worker, which drains it every frame.

Trust: TLS 1.3 with no CA. When the encrypted channel is up and *before any application byte is
written*, the SPKI pin of the presented certificate is compared with the pin we hold for this
host:port: equal → log in; different → abort and say why (``refused``); none known → emit
``pin_approval_needed`` and wait for ``approve_pin(True/False)``, sending nothing meanwhile.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from PySide6.QtNetwork import QAbstractSocket, QHostAddress, QSsl, QSslSocket, QUdpSocket

from voipclient.audio.redundancy import (
    LEVEL_CLEAN,
    LossReport,
    RedundancyLevel,
    RedundancyPolicy,
)
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keylog import KeyLogSink
from voipclient.crypto.media import VoiceFrame
from voipclient.crypto.replay import ReplayWindow
from voipclient.crypto.tofu import TofuStore
from voipclient.errors import LocalProtocolError
from voipclient.fileio import atomic_write
from voipclient.net import e2ee, hopctl
from voipclient.net import events as ev
from voipclient.net import supervisor as sv
from voipclient.net.client import ClientSession
from voipclient.net.pins import PinFile, server_key
from voipclient.server.tls import pin_of_der_certificate

log = logging.getLogger("voipclient.net.connection")

TICK_MS = 50  # session timers and key upkeep


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """The voice path's health as the status bar shows it."""

    transport: str  # "udp" | "tunnel"
    rtt_ms: float | None  # UDP hop RTT (smoothed), else the control channel's
    loss: float | None  # UDP ping loss 0..1
    kbps_out: float  # voice sent, kbit/s over the last second (datagrams, all channels)
    kbps_in: float
    datagrams_in: int
    datagrams_out: int


class ServerConnection(QObject):
    """One server session. States (``state_changed``): connecting, awaiting_approval, refused,
    logging_in, ready, closed."""

    #: (state, human-readable detail)
    state_changed = Signal(str, str)
    #: (host, port, presented pin): answer with ``approve_pin``
    pin_approval_needed = Signal(str, int, str)
    #: a ``net.events.ClientEvent`` or ``net.e2ee.SecureEvent`` for the UI models
    session_event = Signal(object)
    #: ("udp" | "tunnel")
    transport_changed = Signal(str)
    #: a ``net.supervisor`` action for the UI: StateChanged, ReconnectScheduled, Stopped,
    #: RestoreSkipped, ApplyLocalSettings (volumes, mutes, push-to-talk bindings to re-apply)
    supervisor_action = Signal(object)
    #: once a second while open: a :class:`ConnectionStats` for the status bar
    stats_changed = Signal(object)
    #: (channel id, why) a text message could not be sent (no sender key yet, not a member)
    text_failed = Signal(int, str)

    def __init__(
        self,
        name: str,
        identity: IdentityKey,
        *,
        password: str | None = None,
        tofu: TofuStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        config: sv.SupervisorConfig | None = None,
        pin_file: PinFile | None = None,
        tofu_file: Path | None = None,
        keylog: KeyLogSink | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._name = name
        self._identity = identity
        self._password = password
        self._tofu = tofu or TofuStore()
        # Peers' pinned identity keys are written here when they change (not secret: public keys).
        self._tofu_file = tofu_file
        # The key log (VOIPCLIENT_KEYLOGFILE, opt-in): every media key and hop secret in clear.
        self._keylog = keylog
        self._clock = clock
        self.inbox: collections.deque[VoiceFrame] = collections.deque(maxlen=2000)
        # Loss reports the playback worker measured, sent on the next tick (a mailbox).
        self.loss_reports_out: collections.deque[LossReport] = collections.deque(maxlen=256)
        # What listeners report about us decides the redundancy the capture worker applies:
        # a latest-value slot it reads every frame.
        self.policy = RedundancyPolicy()
        self.redundancy_level: RedundancyLevel = LEVEL_CLEAN
        self.state = "closed"
        self.transport = "udp"
        self.host = ""
        self.port = 0
        self.presented_pin: str | None = None
        self._expected_pin: str | None = None
        self._tls: QSslSocket | None = None
        self._udp: QUdpSocket | None = None
        self._udp_peer: QHostAddress | None = None
        self.session: ClientSession | None = None
        self.secure: e2ee.SecureSession | None = None
        self._c2s: HopMac | None = None
        self._s2c: HopMac | None = None
        self._hop_seq = 0
        self._hop_window = ReplayWindow()
        self.udp_bound = False
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._stats_mark = (0.0, 0, 0)  # (time, bytes_in, bytes_out) at the last stats_changed
        self._timer: QTimer | None = None
        self.udp_addr: tuple[str, int] | None = None  # voice to this address instead (tests)
        # Approved server pins per host:port; an approval is written here (None: not stored).
        self._pin_file = pin_file
        self.supervisor = sv.ConnectionSupervisor(config, rng=random.random)
        self._generation = 0  # which TLS connection the socket callbacks belong to
        self._retired: list[QSslSocket] = []  # closed sockets waiting to be deleted

    # -- slots: called through queued connections from other threads -----------------------------

    @Slot(str, int, object)
    def open(self, host: str, port: int, expected_pin: str | None) -> None:
        """Connect and stay connected (the supervisor reconnects with backoff, restores
        memberships and settings); ``expected_pin`` None means first contact (the user will be
        asked). ``close()`` ends it."""
        self.close()
        if expected_pin is None and self._pin_file is not None:
            expected_pin = self._pin_file.load().get(server_key(host, port))
        self.host, self.port, self._expected_pin = host, port, expected_pin
        if self._timer is None:
            self._timer = QTimer(self)
            self._timer.setInterval(TICK_MS)
            self._timer.timeout.connect(self._tick)
        self._timer.start()
        self._feed(sv.Open())

    def _connect(self) -> None:
        """The supervisor's Connect: a fresh TLS connection (and later fresh sessions)."""
        self._drop_sockets()
        self._generation += 1
        generation = self._generation
        tls = QSslSocket(self)
        tls.setProtocol(QSsl.SslProtocol.TlsV1_3OrLater)
        # No CA: the SPKI pin is the check, made in _encrypted before any application byte.
        tls.setPeerVerifyMode(QSslSocket.PeerVerifyMode.VerifyNone)
        tls.encrypted.connect(lambda: self._encrypted(generation))
        tls.readyRead.connect(lambda: self._tls_ready_read(generation))
        tls.disconnected.connect(lambda: self._tls_disconnected(generation))
        tls.errorOccurred.connect(lambda error: self._tls_error(generation, error))
        self._tls = tls
        self.session = self.secure = None
        self.udp_bound = False
        self._set_state("connecting", f"{self.host}:{self.port}")
        tls.connectToHostEncrypted(self.host, self.port)

    @Slot(bool)
    def approve_pin(self, approved: bool) -> None:
        """The user's answer to ``pin_approval_needed``."""
        if self.state != "awaiting_approval" or self.presented_pin is None:
            return
        if not approved:
            self._refuse(f"you did not trust the key of {self.host}:{self.port}")
            return
        self._expected_pin = self.presented_pin
        if self._pin_file is not None:
            store = self._pin_file.load()
            store.approve(
                server_key(self.host, self.port), self.presented_pin, int(time.time() * 1000)
            )
            self._pin_file.save(store)
        self._feed(sv.PinApproved())
        self._start_session()

    @Slot(str, bool)
    def approve_presented_pin(self, pin: str, approved: bool) -> None:
        """The user's answer about the pin the dialog showed: ignored when the connection has
        moved on (a reconnect presented a key the user has not seen yet)."""
        if pin == self.presented_pin:
            self.approve_pin(approved)

    @Slot(int)
    def join(self, channel_id: int, password: str | None = None) -> None:
        if self.session is not None and self.state == "ready":
            self.session.join(channel_id, password)
            if password is not None:
                self._feed(sv.ChannelPasswordUsed(channel_id, password))
            self._flush()

    @Slot(object)
    def set_local_settings(self, settings: object) -> None:
        """The user's volumes, mutes and push-to-talk bindings, re-applied after a reconnect."""
        self._feed(sv.LocalSettingsChanged(settings))

    @Slot(int)
    def leave(self, channel_id: int) -> None:
        if self.session is not None and self.state == "ready":
            self.session.leave(channel_id)
            self._flush()

    @Slot(bool, bool)
    def set_self_state(self, muted: bool, deafened: bool) -> None:
        """Self-mute / deafen: announced now and again after every reconnect."""
        self._feed(sv.SelfStateChanged(muted, deafened))
        if self.session is not None and self.state == "ready":
            self.session.set_self_state(muted, deafened)
            self._flush()

    @Slot(int, str)
    def send_text(self, channel_id: int, text: str) -> None:
        """Seal and send a chat message (``text_failed`` says why when it cannot be sent)."""
        sec = self.secure
        if sec is None or self.state != "ready":
            self.text_failed.emit(channel_id, "not connected")
            return
        try:
            sec.send_text(channel_id, text, self._clock())
        except LocalProtocolError as exc:
            self.text_failed.emit(channel_id, str(exc))
            return
        self._emit_secure(sec.flush(self._clock()))
        self._flush()

    @Slot(int, bool, object)
    def set_verified(self, sender_id: int, verified: bool, ik_pub: bytes) -> None:
        """The user compared the safety number computed from ``ik_pub`` with ``sender_id`` (or
        takes a verification back). Identity comes from the E2E layer only: if that member
        holds another key now, nothing is verified. The member view follows as an event."""
        sec = self.secure
        if sec is None:
            return
        if sec.set_verified(sender_id, ik_pub, verified, self._clock()):
            self._save_tofu()
        self._emit_secure(sec.take_events(self._clock()))
        self._flush()

    def _save_tofu(self) -> None:
        if self._tofu_file is not None:
            try:
                atomic_write(self._tofu_file, self._tofu.to_bytes())
            except OSError as exc:
                log.warning("cannot save the pinned peer keys to %s: %s", self._tofu_file, exc)

    @Slot(object, object, bytes)
    def send_voice(self, targets: Sequence[int], ending: Sequence[int], payload: bytes) -> None:
        """Seal one encoded payload for each target channel (VOICE_LAST for ``ending``) and send."""
        sec = self.secure
        if sec is None or self.state != "ready" or sec.scheduler is None:
            return
        now = self._clock()
        datagrams = sec.seal_voice(targets, payload, now) if targets else []
        if ending:
            datagrams += sec.seal_voice(ending, payload, now, last=True)
        for datagram in datagrams:
            self._send_datagram(datagram)
        self._emit_secure(sec.flush(now))
        self._flush()

    @Slot()
    def close(self) -> None:
        """Say goodbye (when logged in), close both sockets and stop reconnecting."""
        if self.supervisor.state not in {sv.ConnState.IDLE, sv.ConnState.STOPPED}:
            self._feed(sv.Close())
        self._drop_sockets()
        if self._timer is not None:
            self._timer.stop()
        if self.state not in {"closed", "refused"}:
            self._set_state("closed", "closed by us")

    def _drop_sockets(self) -> None:
        self._generation += 1  # callbacks of the old sockets are ignored from now on
        if self.session is not None and self.state in {"logging_in", "ready"}:
            self.session.close(now=self._clock())
            self._flush()
        if self._tls is not None:
            tls, self._tls = self._tls, None
            if tls.state() != QAbstractSocket.SocketState.UnconnectedState:
                tls.disconnectFromHost()
            # Deleted on a later tick, never from inside one of its own signals (deleting an
            # aborted QSslSocket from its handler chain crashed PySide6 6.12 here).
            self._retired.append(tls)
        if self._udp is not None:
            udp, self._udp = self._udp, None
            udp.close()
            udp.deleteLater()
        self.udp_bound = False

    # -- TLS ---------------------------------------------------------------------------------------

    def _encrypted(self, generation: int) -> None:
        tls = self._tls
        if tls is None or generation != self._generation:
            return
        der = bytes(tls.peerCertificate().toDer().data())
        self.presented_pin = pin_of_der_certificate(der) if der else None
        if self.presented_pin is None:
            self._refuse("the server presented no certificate")
        elif self._expected_pin is None:
            self._set_state("awaiting_approval", self.presented_pin)
            self._feed(sv.PinApprovalPending())
            self.pin_approval_needed.emit(self.host, self.port, self.presented_pin)
        elif self.presented_pin != self._expected_pin:
            self._refuse(
                f"{self.host}:{self.port} presented the key {self.presented_pin}, but this "
                f"server's key is {self._expected_pin}: someone may be intercepting the "
                "connection, or the server's key was replaced. Nothing was sent. Connect again "
                "only if the server's operator confirms the new key."
            )
        else:
            self._start_session()

    def _start_session(self) -> None:
        assert self._expected_pin is not None
        self.session = ClientSession(
            self._name, self._identity.public_bytes(), self._identity.sign, self._password
        )
        self.secure = e2ee.SecureSession(
            self.session,
            self._identity,
            self.session.name,  # as sent: NFC-normalised
            self._tofu,
            self._expected_pin,
            wall_clock=time.time,
            keylog=self._keylog,
        )
        self._set_state("logging_in", self._name)
        self.session.start(self._clock())
        self._flush()

    def _tls_ready_read(self, generation: int) -> None:
        tls, session = self._tls, self.session
        if tls is None or generation != self._generation:
            return
        data = bytes(tls.readAll().data())
        if session is None:
            # Bytes before we started the session (we sent none): a confused server. Drop them.
            return
        self._handle(session.receive_data(data, self._clock()))

    def _tls_disconnected(self, generation: int) -> None:
        if generation != self._generation:
            return
        if self.session is not None and self.state in {"logging_in", "ready"}:
            self._handle(self.session.connection_lost(self._clock()))
        elif self.state not in {"refused", "closed"}:
            self._feed(sv.TransportFailed("the connection closed before login"))
        if self.state not in {"refused", "closed"}:
            self._set_state("closed", "the server closed the connection")

    def _tls_error(self, generation: int, error: QAbstractSocket.SocketError) -> None:
        if generation != self._generation:
            return
        tls = self._tls
        detail = tls.errorString() if tls is not None else str(error)
        if self.state == "connecting":
            why = f"cannot connect to {self.host}:{self.port}: {detail}"
            self._set_state("closed", why)
            self._feed(sv.TransportFailed(why))

    def _refuse(self, why: str) -> None:
        self._set_state("refused", why)  # first: abort() emits disconnected synchronously
        self._generation += 1
        if self._tls is not None:
            self._tls.abort()  # no close_notify round trip, no application byte
        self._feed(sv.PinRefused(why))

    def _flush(self) -> None:
        if self.session is None or self._tls is None:
            return
        data = self.session.data_to_send()
        if data:
            self._tls.write(data)

    def _tick(self) -> None:
        now = self._clock()
        while len(self._retired) > 1 or (
            self._retired
            and self._retired[0].state() == QAbstractSocket.SocketState.UnconnectedState
        ):
            self._retired.pop(0).deleteLater()
        if now - self._stats_mark[0] >= 1.0:
            self._emit_stats(now)
        due = self.supervisor.get_timer()
        if due is not None and now >= due:
            self._act(self.supervisor.handle_timer(now))
        session, sec = self.session, self.secure
        if session is None or sec is None:
            return
        self._handle(session.handle_timer(now))
        self._emit_secure(sec.tick(now))
        if self.loss_reports_out and self.state == "ready":
            reports = [self.loss_reports_out.popleft() for _ in range(len(self.loss_reports_out))]
            session.send_loss_reports(reports)
        self.redundancy_level = self.policy.level(now)
        self._flush()

    def _emit_stats(self, now: float) -> None:
        then, b_in, b_out = self._stats_mark
        span = now - then if then > 0 else 1.0
        self._stats_mark = (now, self.bytes_in, self.bytes_out)
        link = self.supervisor.stats
        rtt = link.udp_srtt_ms if self.transport == "udp" and self.udp_bound else None
        self.stats_changed.emit(
            ConnectionStats(
                transport=self.transport,
                rtt_ms=rtt if rtt is not None else link.tls_srtt_ms,
                loss=link.udp_ping_loss,
                kbps_out=(self.bytes_out - b_out) * 8 / 1000 / span,
                kbps_in=(self.bytes_in - b_in) * 8 / 1000 / span,
                datagrams_in=self.datagrams_in,
                datagrams_out=self.datagrams_out,
            )
        )

    def _handle(self, events: list[ev.ClientEvent]) -> None:
        sec = self.secure
        now = self._clock()
        # The E2E layer first (key upkeep takes milliseconds at login), so a LoggedIn or a join
        # reaches the window right before the member view it implies, never long before it.
        secure_events = sec.handle_events(events, now) if sec is not None and events else []
        for event in events:
            if isinstance(event, ev.LoggedIn):
                k_c2s, k_s2c = derive_hop_keys(event.hop_secret)
                self._c2s, self._s2c = HopMac(k_c2s), HopMac(k_s2c)
                self._hop_window = ReplayWindow()
                self._set_state("ready", f"logged in as {self._name}")
                self._open_udp()
            elif isinstance(event, ev.VoiceTunnelReceived):
                self._voice_in(event.datagram)
            elif isinstance(event, ev.LossReportReceived):
                report = LossReport(
                    event.listener_id, event.loss, event.burst, event.jitter_ms, event.frames
                )
                self.redundancy_level = self.policy.add_report(event.listener_id, report, now)
            elif isinstance(event, ev.UserLeft):
                self.policy.forget(event.user.sender_id)
            elif isinstance(event, ev.ConnectionClosed) and self.state != "refused":
                self._set_state("closed", event.message or str(event.reason.value))
            self.session_event.emit(event)
        self._emit_secure(secure_events)
        for event in events:
            self._act(self.supervisor.handle_event(event, now))
        self._flush()

    def _emit_secure(self, events: list[e2ee.SecureEvent]) -> None:
        for event in events:
            if isinstance(event, e2ee.VoiceReleased):
                self.inbox.append(event.frame)
            else:
                if isinstance(event, e2ee.PeerTrust):
                    self._save_tofu()  # a new pin, or a change recorded beside it
                self.session_event.emit(event)

    # -- UDP ---------------------------------------------------------------------------------------

    def _open_udp(self) -> None:
        """A UDP socket for this session; the supervisor's SendBind actions validate it."""
        tls = self._tls
        if tls is None:
            return
        udp = QUdpSocket(self)
        peer = tls.peerAddress()
        if self.udp_addr is not None:
            peer = QHostAddress(self.udp_addr[0])
        any_address = (
            QHostAddress.SpecialAddress.AnyIPv6
            if peer.protocol() == QAbstractSocket.NetworkLayerProtocol.IPv6Protocol
            else QHostAddress.SpecialAddress.AnyIPv4
        )
        if not udp.bind(QHostAddress(any_address), 0):
            log.warning("cannot open a UDP socket: %s", udp.errorString())
            udp.deleteLater()
            return  # the supervisor gets no BIND_OK and moves voice to the tunnel
        udp.readyRead.connect(self._udp_ready_read)
        self._udp, self._udp_peer = udp, peer

    def _next_seq(self) -> int:
        seq = self._hop_seq
        self._hop_seq += 1
        return seq

    def _send_udp(self, datagram: bytes) -> None:
        if self._udp is not None and self._udp_peer is not None:
            port = self.udp_addr[1] if self.udp_addr is not None else self.port
            self._udp.writeDatagram(datagram, self._udp_peer, port)

    def _send_datagram(self, datagram: bytes) -> None:
        self.datagrams_out += 1
        self.bytes_out += len(datagram)
        if self.transport == "tunnel" or not self.udp_bound:
            if self.session is not None:
                self.session.send_voice_tunnel(datagram)
        else:
            self._send_udp(datagram)

    def _udp_ready_read(self) -> None:
        udp = self._udp
        while udp is not None and udp.hasPendingDatagrams():
            datagram = udp.receiveDatagram()
            self._udp_datagram(bytes(datagram.data().data()))

    def _udp_datagram(self, data: bytes) -> None:
        if len(data) == hopctl.HOP_CONTROL_LEN and data[1] in hopctl.S2C_PTYPES:
            session = self.session
            if self._s2c is None or self._c2s is None or session is None:
                return
            sid = session.sender_id
            msg = hopctl.open_hop_control(
                data, self._s2c, self._hop_window, ptypes=hopctl.S2C_PTYPES
            )
            if msg is None or sid is None:
                return
            now = self._clock()
            if msg.ptype == hopctl.PTYPE_CHALLENGE:
                self._act(self.supervisor.handle_event(sv.UdpChallenge(msg.body), now))
            elif msg.ptype == hopctl.PTYPE_BIND_OK:
                self._act(self.supervisor.handle_event(sv.UdpBindOk(), now))
            elif msg.ptype == hopctl.PTYPE_PONG:
                client_ms, received = hopctl.decode_pong(msg.body)
                self._act(self.supervisor.handle_event(sv.UdpPong(client_ms, received), now))
            return
        self._act(self.supervisor.handle_event(sv.UdpDatagramReceived(), self._clock()))
        self._voice_in(data)

    def _voice_in(self, data: bytes) -> None:
        self.datagrams_in += 1
        self.bytes_in += len(data)
        sec = self.secure
        if sec is None:
            return
        frame = sec.open_voice(data, self._clock())
        if frame is not None:
            self.inbox.append(frame)

    # -- the supervisor ------------------------------------------------------------------------

    def _feed(self, event: sv.SupervisorEvent) -> None:
        self._act(self.supervisor.handle_event(event, self._clock()))

    def _act(self, actions: list[sv.SupervisorAction]) -> None:
        """Carry out what the supervisor decided, in order."""
        for action in actions:
            session = self.session
            sid = None if session is None else session.sender_id
            if isinstance(action, sv.Connect):
                self._connect()
            elif isinstance(action, sv.Disconnect):
                self._drop_sockets()
                if self.state not in {"closed", "refused"}:
                    self._set_state("closed", action.reason)
            elif isinstance(action, sv.SendBind):
                if self._c2s is not None and sid is not None:
                    self._send_udp(hopctl.encode_bind(self._c2s, sid, self._next_seq()))
            elif isinstance(action, sv.SendBindConfirm):
                if self._c2s is not None and sid is not None:
                    self._send_udp(
                        hopctl.encode_bind_confirm(
                            self._c2s, sid, self._next_seq(), action.challenge
                        )
                    )
            elif isinstance(action, sv.SendUdpPing):
                if self._c2s is not None and sid is not None:
                    self._send_udp(
                        hopctl.encode_ping(self._c2s, sid, self._next_seq(), action.client_time_ms)
                    )
            elif isinstance(action, sv.SetVoiceTransport):
                self.udp_bound = not action.tunnel
                transport = "tunnel" if action.tunnel else "udp"
                if session is not None and self.state == "ready":
                    session.set_voice_transport(action.tunnel)
                if transport != self.transport:
                    self.transport = transport
                    self.transport_changed.emit(transport)
            elif isinstance(action, sv.SetSelfState):
                if session is not None and self.state == "ready":
                    session.set_self_state(action.muted, action.deafened)
            elif isinstance(action, sv.JoinChannel):
                if session is not None and self.state == "ready":
                    session.join(action.channel_id, action.password)
            elif isinstance(action, sv.LeaveChannel):
                if session is not None and self.state == "ready":
                    session.leave(action.channel_id)
            else:
                self.supervisor_action.emit(action)
        self._flush()

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        log.info("connection %s: %s", state, detail)
        self.state_changed.emit(state, detail)
