"""The desktop client's connection to a server: a thin Qt driver of the pure
:class:`~voipclient.net.connection.ClientConnection` (like Mumble's ServerHandler, minus the
decisions). It owns the QSslSocket (control), the QUdpSocket (voice) and one single-shot QTimer
re-armed from ``ClientConnection.get_timer()``; everything else — the pin verdict, login, the
end-to-end layer, reconnects, the UDP hop handshake, the UDP ↔ TLS-tunnel decision, loss reports
and the redundancy policy — is decided in the core it feeds.

Thread: create it, ``moveToThread(thread)``, start the thread, then talk to it only through its
slots (queued) and signals (queued). Voice never crosses the GUI thread:

* ``send_voice(targets, ending, payload)`` (from the capture worker, queued): sealed by the core
  once per channel and sent over UDP, or over the TLS tunnel;
* opened voice frames (UDP, tunnel, or released when a key arrived) are appended to ``inbox``
  (a ``collections.deque``: ``append``/``popleft`` are atomic in CPython) for the playback worker;
* the playback worker's loss reports arrive in ``loss_reports_out`` (a deque) and go out with the
  next timer; what listeners report about us lands in the ``redundancy_level`` slot, which the
  capture worker reads (``redundancy_slot`` hands the level straight to it when set).

Trust: TLS 1.3 with no CA. When the encrypted channel is up and *before any application byte is
written*, the presented certificate's SPKI pin goes to the core, which compares it with the pin we
hold for this host:port: equal → log in; different → abort; none known → ``pin_approval_needed``
and nothing is written until ``approve_presented_pin``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from PySide6.QtNetwork import QAbstractSocket, QHostAddress, QSsl, QSslSocket, QUdpSocket

from voipclient.audio.redundancy import DEFAULT_POLICY, LEVEL_CLEAN, LossReport, RedundancyLevel
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keylog import KeyLogSink
from voipclient.crypto.media import VoiceFrame
from voipclient.crypto.tofu import TofuStore
from voipclient.net import connection as cc
from voipclient.net import e2ee
from voipclient.net import supervisor as sv
from voipclient.net.client import ClientSession
from voipclient.net.pins import pin_of_der_certificate, server_key
from voipclient.net.states import ConnectionState
from voipclient.storage.paths import PathMemoryFile
from voipclient.storage.trust import PinFile, TofuFile

log = logging.getLogger("voipclient.net.connection")
_UNCONNECTED = QAbstractSocket.SocketState.UnconnectedState


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
    """One server session. States (``state_changed``): the values of
    :class:`~voipclient.net.states.ConnectionState` — connecting, awaiting_approval, logging_in,
    ready, waiting (reconnecting), refused, closed."""

    #: (state, human-readable detail)
    state_changed = Signal(str, str)
    #: (host, port, presented pin): answer with ``approve_presented_pin``
    pin_approval_needed = Signal(str, int, str)
    #: a ``net.events.ClientEvent`` or ``net.e2ee.SecureEvent`` for the UI models (never voice)
    session_event = Signal(object)
    #: ("udp" | "tunnel")
    transport_changed = Signal(str)
    #: a ``net.supervisor`` action for the UI: ReconnectScheduled, Stopped, RestoreSkipped,
    #: ApplyLocalSettings (volumes, mutes, push-to-talk bindings to re-apply)
    supervisor_action = Signal(object)
    #: once a second while connected: a :class:`ConnectionStats` for the status bar
    stats_changed = Signal(object)
    #: (channel id, why) a text message could not be sent (no sender key yet, not a member)
    text_failed = Signal(int, str)
    #: why an administrator's request could not be sent (not connected, a name too long, ...)
    admin_failed = Signal(str)
    #: (channel_id, text): a chat message was sealed and sent (in order with ``text_failed``)
    text_sent = Signal(int, str)

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
        tofu_file: TofuFile | None = None,
        keylog: KeyLogSink | None = None,
        inbox: collections.deque[VoiceFrame] | None = None,
        loss_reports: collections.deque[LossReport] | None = None,
        path_memory: PathMemoryFile | None = None,
        bitrate: int = 32_000,
        frame_ms: int = 20,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.core = cc.ClientConnection(
            name,
            identity,
            wall_clock=time.time,
            password=password,
            tofu=tofu,
            config=config,
            keylog=keylog,
            redundancy=replace(DEFAULT_POLICY, bitrate=bitrate, frame_ms=frame_ms),
        )
        self._clock = clock
        # What the last session learned about this server's voice path (loss, a congestion
        # cap): the first talk spurt starts with it, and it is saved again when we close.
        self._path_memory = path_memory
        self._path_key: str | None = None
        self._pin_file = pin_file
        # Peers' pinned identity keys are written here when they change (public keys only).
        self._tofu_file = tofu_file
        # The workers' mailboxes: handed in by the owner (they outlive a connection) or our own.
        self.inbox: collections.deque[VoiceFrame] = (
            inbox if inbox is not None else collections.deque(maxlen=2000)
        )
        self.loss_reports_out: collections.deque[LossReport] = (
            loss_reports if loss_reports is not None else collections.deque(maxlen=256)
        )
        #: latest-value slot for the capture worker: the redundancy listeners ask of us
        self.redundancy_level: RedundancyLevel = LEVEL_CLEAN
        #: when set, called (on this thread) with each new level: the capture worker's slot
        self.redundancy_slot: Callable[[RedundancyLevel], None] | None = None
        #: called after each frame appended to ``inbox``: wakes the playback worker at once
        self.voice_wake: Callable[[], None] | None = None
        self.udp_addr: tuple[str, int] | None = None  # voice to this address instead (tests)
        self._tls: QSslSocket | None = None
        self._tls_generation = -1
        self._retired: list[QSslSocket] = []  # closed sockets, deleted on a later call
        self._udp: QUdpSocket | None = None
        self._udp_generation = -1
        self._udp_peer: tuple[QHostAddress, int] | None = None
        self._timer: QTimer | None = None
        self._reap_timer = QTimer(self)  # ours: destroyed with us, never fires after
        self._reap_timer.setSingleShot(True)
        self._reap_timer.setInterval(250)
        self._reap_timer.timeout.connect(self._reap)

    # -- what the UI and the tests read ----------------------------------------------------------

    @property
    def state(self) -> str:
        return self.core.state.value

    @property
    def transport(self) -> str:
        return self.core.transport.value

    @property
    def session(self) -> ClientSession | None:
        return self.core.session

    @property
    def secure(self) -> e2ee.SecureSession | None:
        return self.core.secure

    @property
    def supervisor(self) -> sv.ConnectionSupervisor:
        return self.core.supervisor

    @property
    def presented_pin(self) -> str | None:
        return self.core.presented_pin

    @property
    def host(self) -> str:
        return self.core.host

    @property
    def port(self) -> int:
        return self.core.port

    @property
    def udp_bound(self) -> bool:
        return self.core.udp_bound

    @property
    def datagrams_in(self) -> int:
        return self.core.datagrams_in

    @property
    def datagrams_out(self) -> int:
        return self.core.datagrams_out

    # -- slots: called through queued connections from other threads -----------------------------

    @Slot(str, int, object)
    def open(self, host: str, port: int, expected_pin: str | None) -> None:
        """Connect and stay connected (the core reconnects with backoff and restores memberships
        and settings); ``expected_pin`` None: the stored one, else first contact (the user is
        asked). ``close()`` ends it."""
        if expected_pin is None and self._pin_file is not None:
            expected_pin = self._pin_file.load().get(server_key(host, port))
        if self._path_memory is not None:
            self._path_key = server_key(host, port)
            self.core.set_path_memory(self._path_memory.recall(self._path_key))
        if self._timer is None:
            self._timer = QTimer(self)
            self._timer.setSingleShot(True)
            self._timer.timeout.connect(self._on_timer)
        self.core.connect(host, port, expected_pin, self._clock())
        self._pump()

    @Slot(bool)
    def approve_pin(self, approved: bool) -> None:
        """The user's answer about the pin presented now."""
        pin = self.core.presented_pin
        if pin is not None:
            self.approve_presented_pin(pin, approved)

    @Slot(str, bool)
    def approve_presented_pin(self, pin: str, approved: bool) -> None:
        """The user's answer about the pin the dialog showed: ignored by the core when the
        connection has moved on (a reconnect presented a key the user has not seen yet)."""
        self.core.approve_pin(pin, approved, self._clock())
        self._pump()

    @Slot(int, object)
    def join(self, channel_id: int, password: str | None = None) -> None:
        self.core.join(channel_id, password, self._clock())
        self._pump()

    @Slot(int)
    def leave(self, channel_id: int) -> None:
        self.core.leave(channel_id, self._clock())
        self._pump()

    @Slot(object)
    def administer(self, request: object) -> None:
        """An administrator's request: ``("user", action, target, channel_id, reason)`` or
        ``("channel", op, fields)``; one the schema refuses comes back as ``admin_failed``."""
        from voipclient.errors import LocalProtocolError

        now = self._clock()
        try:
            if not isinstance(request, tuple):
                raise LocalProtocolError(f"not an admin request: {request!r}")
            if request[0] == "user":
                _kind, action, target, channel_id, reason = request
                sent = self.core.admin(action, target, now, channel_id=channel_id, reason=reason)
            else:
                _kind, op, fields = request
                sent = self.core.channel_admin(op, now, **fields)
        except LocalProtocolError as exc:
            self.admin_failed.emit(str(exc))
            return
        if not sent:
            self.admin_failed.emit("not connected")
        self._pump()

    @Slot(object)
    def set_local_settings(self, settings: object) -> None:
        """The user's volumes, mutes and push-to-talk bindings, re-applied after a reconnect."""
        self.core.set_local_settings(settings, self._clock())
        self._pump()

    @Slot(int, int)
    def set_voice_rate(self, bitrate: int, frame_ms: int) -> None:
        """The user's Opus bitrate or frame size changed (the redundancy policy's model)."""
        self.core.set_voice_rate(bitrate, frame_ms, self._clock())
        self._pump()

    @Slot(bool, bool)
    def set_self_state(self, muted: bool, deafened: bool) -> None:
        """Self-mute / deafen: announced now and again after every reconnect."""
        self.core.set_self_state(muted, deafened, self._clock())
        self._pump()

    @Slot(int, str)
    def send_text(self, channel_id: int, text: str) -> None:
        """Seal and send a chat message (``text_failed`` says why when it cannot be sent)."""
        sent = self.core.send_text(channel_id, text, self._clock())
        self._pump()  # a failure is emitted here (text_failed), before what follows
        if sent:
            self.text_sent.emit(channel_id, text)

    @Slot(int, bool, object)
    def set_verified(self, sender_id: int, verified: bool, ik_pub: bytes) -> None:
        """The user compared the safety number computed from ``ik_pub`` with ``sender_id`` (or
        takes it back); refused by the E2E layer if that member holds another key by now."""
        self.core.set_verified(sender_id, ik_pub, verified, self._clock())
        self._pump()

    @Slot(object, object, bytes)
    def send_voice(self, targets: Sequence[int], ending: Sequence[int], payload: bytes) -> None:
        """Seal one encoded payload for each target channel (VOICE_LAST for ``ending``) and send."""
        self.core.send_voice(targets, ending, payload, self._clock())
        self._pump()

    @Slot()
    def close(self) -> None:
        """Say goodbye (when logged in), close both sockets and stop reconnecting."""
        learned = self.core.path_memory(self._clock())
        self.core.close(self._clock())
        self._pump()
        if self._timer is not None:
            self._timer.stop()
        self._reap_timer.stop()  # a socket still closing stays our child until we go
        for sock in (self._tls, self._udp):  # none should be left; if one is, it stays quiet
            if sock is not None:
                _silence(sock, _signals_of(sock))
        if self._path_memory is not None and self._path_key is not None:
            self._path_memory.remember(self._path_key, learned)  # never raises

    # -- driving the core --------------------------------------------------------------------------

    def _on_timer(self) -> None:
        now = self._clock()
        if self.loss_reports_out:
            reports = [self.loss_reports_out.popleft() for _ in range(len(self.loss_reports_out))]
            self.core.send_loss_reports(reports, now)
        self.core.handle_timer(now)
        self._pump()

    def _pump(self) -> None:
        """Carry out what the core decided, then write, send and re-arm the one timer."""
        core = self.core
        while (event := core.next_event()) is not None:
            self._carry_out(event)
        data = core.data_to_send()
        if data and self._tls is not None:
            self._tls.write(data)
        for datagram in core.datagrams_to_send():
            if self._udp is not None and self._udp_peer is not None:
                self._udp.writeDatagram(datagram, *self._udp_peer)
        due = core.get_timer()
        if self._timer is not None:
            if due is None:
                self._timer.stop()
            else:
                self._timer.start(max(0, round((due - self._clock()) * 1000)))

    def _carry_out(self, event: Any) -> None:
        if isinstance(event, cc.VoiceReceived):
            self.inbox.append(event.frame)  # to the playback worker, never the GUI
            wake = self.voice_wake
            if wake is not None:
                wake()
        elif isinstance(event, cc.RedundancyChanged):
            self.redundancy_level = event.level
            if self.redundancy_slot is not None:
                self.redundancy_slot(event.level)
        elif isinstance(event, cc.OpenTransport):
            self._open_tls(event)
        elif isinstance(event, cc.CloseTransport):
            self._close_transport(event)
        elif isinstance(event, cc.OpenUdp):
            self._open_udp(event)
        elif isinstance(event, cc.StateChanged):
            log.info("connection %s: %s", event.state.value, event.detail)
            self.state_changed.emit(event.state.value, event.detail)
        elif isinstance(event, cc.PinApprovalNeeded):
            self.pin_approval_needed.emit(event.host, event.port, event.pin)
        elif isinstance(event, cc.StorePin):
            if self._pin_file is not None:
                store = self._pin_file.load()
                store.approve(server_key(event.host, event.port), event.pin, event.approved_ms)
                self._pin_file.save(store)
        elif isinstance(event, cc.SaveTrustStore):
            self._save_tofu()
        elif isinstance(event, cc.TransportChanged):
            self.transport_changed.emit(event.transport.value)
        elif isinstance(event, cc.TextFailed):
            self.text_failed.emit(event.channel_id, event.why)
        elif isinstance(event, cc.Stats):
            self.stats_changed.emit(
                ConnectionStats(
                    event.transport.value,
                    event.rtt_ms,
                    event.loss,
                    event.kbps_out,
                    event.kbps_in,
                    event.datagrams_in,
                    event.datagrams_out,
                )
            )
        elif isinstance(event, sv.SupervisorAction):
            self.supervisor_action.emit(event)
        else:
            self.session_event.emit(event)

    def _reap(self) -> None:
        """Delete retired sockets once they are unconnected, from our own timer: never inside
        their own signals, never while closing (both crashed PySide6 here)."""
        for tls in [t for t in self._retired if t.state() == _UNCONNECTED]:
            self._retired.remove(tls)
            tls.deleteLater()
        if self._retired and self.core.state is not ConnectionState.CLOSED:
            self._reap_timer.start()

    def _save_tofu(self) -> None:
        if self._tofu_file is not None:
            try:
                self._tofu_file.save(self.core.tofu)
            except OSError as exc:
                log.warning("cannot save the pinned peer keys to %s: %s", self._tofu_file.path, exc)

    # -- sockets -----------------------------------------------------------------------------------

    def _open_tls(self, event: cc.OpenTransport) -> None:
        generation = event.generation
        tls = QSslSocket(self)
        tls.setProtocol(QSsl.SslProtocol.TlsV1_3OrLater)
        # No CA: the SPKI pin is the check, made by the core before any application byte.
        tls.setPeerVerifyMode(QSslSocket.PeerVerifyMode.VerifyNone)
        tls.encrypted.connect(lambda: self._encrypted(generation))
        tls.readyRead.connect(lambda: self._ready_read(generation))
        tls.disconnected.connect(lambda: self._disconnected(generation))
        tls.errorOccurred.connect(lambda error: self._error(generation, error))
        self._tls, self._tls_generation = tls, generation
        tls.connectToHostEncrypted(event.host, event.port)

    def _close_transport(self, event: cc.CloseTransport) -> None:
        if event.generation == self._tls_generation and self._tls is not None:
            tls, self._tls = self._tls, None
            self._tls_generation = -1  # its late callbacks are ignored from now on
            if event.abort:
                tls.abort()  # no close_notify round trip, no application byte
            else:
                if event.data and tls.state() == QAbstractSocket.SocketState.ConnectedState:
                    tls.write(event.data)
                if tls.state() != QAbstractSocket.SocketState.UnconnectedState:
                    tls.disconnectFromHost()
            # Its late callbacks would be ignored anyway (the generation moved on): disconnect
            # them now, so that nothing of it calls into Python again, not even while Qt
            # destroys it with us (a QSslSocket emits while it is destroyed; a lambda into a
            # half-destroyed ServerConnection crashed the process).
            _silence(tls, (tls.encrypted, tls.readyRead, tls.disconnected, tls.errorOccurred))
            self._retired.append(tls)
            # Deleted later from a timer of our own, never from inside one of its own signals
            # (deleting an aborted QSslSocket from its handler chain crashed PySide6 here).
            self._reap_timer.start()
        if event.generation == self._udp_generation and self._udp is not None:
            udp, self._udp = self._udp, None
            self._udp_generation = -1
            _silence(udp, (udp.readyRead,))
            udp.close()
            udp.deleteLater()

    def _open_udp(self, event: cc.OpenUdp) -> None:
        tls = self._tls
        if tls is None or event.generation != self._tls_generation:
            return
        peer, port = tls.peerAddress(), event.port
        if self.udp_addr is not None:
            peer, port = QHostAddress(self.udp_addr[0]), self.udp_addr[1]
        any_address = (
            QHostAddress.SpecialAddress.AnyIPv6
            if peer.protocol() == QAbstractSocket.NetworkLayerProtocol.IPv6Protocol
            else QHostAddress.SpecialAddress.AnyIPv4
        )
        udp = QUdpSocket(self)
        if not udp.bind(QHostAddress(any_address), 0):
            log.warning("cannot open a UDP socket: %s", udp.errorString())
            udp.deleteLater()
            return  # no BIND_OK will come: the core moves voice to the tunnel
        generation = event.generation
        udp.readyRead.connect(lambda: self._udp_ready_read(generation))
        self._udp, self._udp_generation, self._udp_peer = udp, generation, (peer, port)

    def _encrypted(self, generation: int) -> None:
        tls = self._tls
        if tls is None or generation != self._tls_generation:
            return
        der = bytes(tls.peerCertificate().toDer().data())
        pin = pin_of_der_certificate(der) if der else None
        self.core.transport_connected(pin, self._clock(), generation=generation)
        self._pump()

    def _ready_read(self, generation: int) -> None:
        tls = self._tls
        if tls is None or generation != self._tls_generation:
            return
        data = bytes(tls.readAll().data())
        self.core.receive_data(data, self._clock(), generation=generation)
        self._pump()

    def _disconnected(self, generation: int) -> None:
        if generation != self._tls_generation:
            return
        self.core.connection_lost(self._clock(), generation=generation)
        self._pump()

    def _error(self, generation: int, error: QAbstractSocket.SocketError) -> None:
        tls = self._tls
        if tls is None or generation != self._tls_generation:
            return
        if tls.state() == QAbstractSocket.SocketState.ConnectedState and tls.isEncrypted():
            return  # a connected socket's end is reported by ``disconnected``
        why = f"cannot connect to {self.core.host}:{self.core.port}: {tls.errorString()}"
        kind = _FAILURE_KINDS.get(error, sv.FailureKind.OTHER)
        self.core.transport_failed(why, self._clock(), generation=generation, kind=kind)
        self._pump()

    def _udp_ready_read(self, generation: int) -> None:
        udp = self._udp
        now = self._clock()
        while udp is not None and generation == self._udp_generation and udp.hasPendingDatagrams():
            datagram = udp.receiveDatagram()
            self.core.datagram_received(bytes(datagram.data().data()), now, generation=generation)
        self._pump()


__all__ = ["ConnectionState", "ConnectionStats", "ServerConnection"]

_E = QAbstractSocket.SocketError
#: Qt's socket errors → what the user is told to check (``net.supervisor.FAILURE_ADVICE``).
_FAILURE_KINDS: dict[QAbstractSocket.SocketError, sv.FailureKind] = {
    _E.ConnectionRefusedError: sv.FailureKind.REFUSED,
    _E.HostNotFoundError: sv.FailureKind.NAME_NOT_FOUND,
    _E.NetworkError: sv.FailureKind.NO_ROUTE,  # EHOSTUNREACH / ENETUNREACH
    _E.SocketTimeoutError: sv.FailureKind.TIMEOUT,
    _E.SslHandshakeFailedError: sv.FailureKind.TLS,
    _E.SslInternalError: sv.FailureKind.TLS,
    _E.SslInvalidUserDataError: sv.FailureKind.TLS,
    _E.RemoteHostClosedError: sv.FailureKind.CLOSED,
}


def _signals_of(sock: Any) -> tuple[Any, ...]:
    if isinstance(sock, QSslSocket):
        return (sock.encrypted, sock.readyRead, sock.disconnected, sock.errorOccurred)
    return (sock.readyRead,)


def _silence(sock: Any, signals: tuple[Any, ...]) -> None:
    """Disconnect our Python slots from a socket we are done with."""
    for signal in signals:
        with contextlib.suppress(RuntimeError, TypeError):  # nothing connected any more
            signal.disconnect()
