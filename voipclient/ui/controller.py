"""The desktop app's composition root below the window: connection, audio, hotkeys, model.

:class:`ClientController` lives on the GUI thread and owns

* the :class:`~voipclient.client.qt_connection.ServerConnection`, moved to its own ``QThread``; the
  controller talks to it only through queued signals and reads its plain attributes;
* the audio pipeline (:class:`AudioPipeline`): engine + capture and playback workers on their
  own threads; settings reach them as commands in their mailboxes, never as shared objects;
* the push-to-talk service (global hotkeys via pynput/evdev, else in-window shortcuts);
* the :class:`~voipclient.ui.model.ClientModel` the window renders, and the preferences.

Nothing here blocks: connecting, reconnecting and network loss are handled on the connection's
thread; the GUI polls the workers' latest-value slots ten times a second for meters and the
talking marks.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMetaObject, QObject, Qt, QThread, QTimer, Signal, Slot

from voipclient import diagnostics
from voipclient.audio import host_engine
from voipclient.audio.aec import EchoCanceller, FarEnd, wants_echo_cancellation
from voipclient.audio.cues import voice_for
from voipclient.audio.dsp import CaptureProcessor, CaptureSettings
from voipclient.audio.engine import AudioEngine, DeviceEvent, NullEngine
from voipclient.audio.host import ATTEMPTS, sides_name
from voipclient.audio.host_engine import HostEngine
from voipclient.audio.mixer import Mixer
from voipclient.audio.opus import OpusDecoder, OpusEncoder, copy_encoder_factory, frame_samples
from voipclient.audio.realtime import prioritise_current_thread
from voipclient.audio.sd_engine import DeviceInfo
from voipclient.audio.voice import TransmitGate, VoicePlayback, VoiceSender
from voipclient.audio.workers import CaptureWorker, PlaybackWorker, RouteSlot
from voipclient.client.qt_connection import ConnectionStats, ServerConnection
from voipclient.crypto.fingerprint import format_safety_number, safety_number
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keylog import KEYLOG_ENV, KeyLogSink
from voipclient.crypto.keystore import KeystoreError
from voipclient.errors import AudioDeviceError
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net import supervisor as sv
from voipclient.net.roster import find_channel
from voipclient.ptt.control import ControlServer
from voipclient.ptt.portal_source import PortalSource, shortcuts_from_bindings
from voipclient.ptt.router import Mode, PttRouter, Route
from voipclient.ptt.service import PttService
from voipclient.ptt.sources import HotkeySource, choose_source, session_kind, source_order
from voipclient.storage.accounts import AskPassphrase, open_identity
from voipclient.storage.keylog import keylog_from_environment
from voipclient.storage.keystore import KeyringStore
from voipclient.storage.paths import PathMemoryFile
from voipclient.storage.trust import PinFile, TofuFile
from voipclient.ui.model import (
    ClientModel,
    binding_conflict,
    binding_warnings,
    checked_hotkeys,
    with_binding,
)
from voipclient.ui.overlay_model import normalise_colour
from voipclient.ui.prefs import Bookmark, Preferences, PrefsBackend, ServerPrefs, save_preferences


def _set_aec(capture: CaptureWorker, aec: EchoCanceller | None, far: FarEnd | None) -> None:
    """On the capture thread: the canceller and its far end, together."""
    capture.aec, capture.far_end = aec, far


#: The app's id for the desktop portal: the desktop file the app installs (voipclient.desktop).
PORTAL_APP_ID = "voipclient"

log = logging.getLogger("voipclient.ui.controller")

POLL_MS = 100  # meters, talking marks, redundancy level hand-over
DEVICE_POLL_MS = 250  # the audio engine's device watch (with the audio host: its news)
#: "0": open the sound devices in the app's own process instead of the audio host
AUDIO_HOST_ENV = "VOIPCLIENT_AUDIO_HOST"


#: (preferences, input wanted, output wanted) → an engine; AudioDeviceError when it cannot
EngineFactory = Callable[[Preferences, bool, bool], AudioEngine]


def device_engine(
    prefs: Preferences, use_input: bool = True, use_output: bool = True
) -> AudioEngine:
    """The real sound devices the user chose (PortAudio); one side can be left out."""
    from voipclient.audio.sd_engine import SoundDeviceEngine

    return SoundDeviceEngine(
        input_device=prefs.audio.input_device,
        output_device=prefs.audio.output_device,
        frame_samples=frame_samples(prefs.audio.frame_ms),
        input_enabled=use_input,
        output_enabled=use_output,
    )


class _VoiceBridge(QObject):
    """The capture thread's door to the connection's thread (a queued signal)."""

    voice = Signal(object, object, bytes)


@dataclass
class _Answer:
    """A passphrase asked on the GUI thread for the identity thread, which waits on ``done``."""

    attempt: int  # the connect_to it belongs to: a superseded one is not asked
    value: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Generated:
    """An identity key made for this run only (the local server without an OS keyring)."""

    key: IdentityKey


def _sender(frame_ms: int, bitrate: int) -> VoiceSender:
    """The capture side's encoder pair: the voice at the user's bitrate, and the second encoder
    that makes compact redundant copies while the path is lossy (issue 15)."""
    sender = VoiceSender(
        OpusEncoder(frame_ms=frame_ms, bitrate=bitrate),
        copy_encoder=copy_encoder_factory(frame_ms),
    )
    sender.set_bitrate(bitrate)
    return sender


class AudioPipeline:
    """One engine and its two workers, built from the preferences; rebuilt when the device or
    the frame size changes, reconfigured in place (through commands) for everything else."""

    def __init__(
        self,
        prefs: Preferences,
        engine: AudioEngine,
        inbox: Any,
        reports: Any,
        send: Any,
        route: RouteSlot,
    ) -> None:
        a, t = prefs.audio, prefs.transmit
        n = engine.frame_samples
        self.engine = engine
        self.processor = CaptureProcessor(self._capture_settings(prefs), frame_size=n)
        self.capture = CaptureWorker(
            engine,
            self.processor,
            _sender(a.frame_ms, a.bitrate),
            TransmitGate(t.release_ms),
            send,
            route=route,  # the push-to-talk router's slot: who hears each frame
        )
        self.mixer = Mixer(frame_samples=n, output_channels=getattr(engine, "output_channels", 1))
        self.playback = PlaybackWorker(
            engine,
            VoicePlayback(
                self.mixer,
                lambda: OpusDecoder(frame_ms=a.frame_ms),
                frame_ms=a.frame_ms,
                max_delay_ms=a.jitter_max_ms,
            ),
            inbox,
            cues=self.capture.cues,
        )
        self.playback.reports = reports  # straight into the connection's mailbox
        self.capture.cues_enabled = a.cues
        self.echo_cancelling = False
        self.set_echo_cancellation(wants_echo_cancellation(a.echo_cancellation, a.output_device))
        self.frame_ms = a.frame_ms
        self.devices = (a.input_device, a.output_device)
        self.jitter_max_ms = a.jitter_max_ms

    @staticmethod
    def _capture_settings(prefs: Preferences) -> CaptureSettings:
        a, t = prefs.audio, prefs.transmit
        return CaptureSettings(
            highpass=a.highpass,
            noise_suppression=a.noise_suppression,
            agc=a.agc,
            vad_threshold=t.vad_threshold,
        )

    def needs_rebuild(self, prefs: Preferences) -> bool:
        a = prefs.audio
        return (
            (a.input_device, a.output_device) != self.devices
            or a.frame_ms != self.frame_ms
            or a.jitter_max_ms != self.jitter_max_ms
        )

    def reconfigure(self, prefs: Preferences) -> None:
        """Bitrate, DSP, activation threshold, release delay, cues: between two frames."""
        settings = self._capture_settings(prefs)
        bitrate = prefs.audio.bitrate
        release_s = prefs.transmit.release_ms / 1000.0
        capture = self.capture

        def apply() -> None:
            capture.processor.configure(settings)
            capture.sender.set_bitrate(bitrate)
            capture.gate.release_s = release_s

        capture.commands.append(apply)
        capture.cues_enabled = prefs.audio.cues
        a = prefs.audio
        self.set_echo_cancellation(wants_echo_cancellation(a.echo_cancellation, a.output_device))

    def set_echo_cancellation(self, on: bool) -> None:
        """Turn the echo canceller on (a new one, and a far-end mailbox both workers share) or
        off, between two frames of each worker."""
        if on == self.echo_cancelling:
            return
        self.echo_cancelling = on
        capture, playback = self.capture, self.playback
        if not on:
            playback.far_end = None
            capture.commands.append(lambda: _set_aec(capture, None, None))
            return
        far_end = FarEnd(capture.engine.frame_samples)
        aec = EchoCanceller(capture.engine.sample_rate)
        capture.commands.append(lambda: _set_aec(capture, aec, far_end))
        playback.far_end = far_end

    def start(self) -> None:
        self.engine.start()
        self.capture.start()
        self.playback.start()

    def stop(self) -> None:
        self.capture.stop()
        self.playback.stop()
        stats = self.engine.stats()
        n = max(1, self.engine.frame_samples)
        # What the device lost because we were late (the soak benchmark reads this line).
        log.info(
            "audio engine stopped: %d frames in, %d out; capture overrun %d frames, playback "
            "underrun %d frames",
            stats.frames_in,
            stats.frames_out,
            -(-stats.overruns // n),
            -(-stats.underruns // n),
        )
        self.engine.stop()
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
        self.processor.close()


class ClientController(QObject):
    """See the module docstring. Every method is for the GUI thread."""

    #: the model's rows changed (roster, talking marks, trust, preferences)
    model_changed = Signal()
    #: (state, detail): connecting, awaiting_approval, refused, logging_in, ready, closed
    connection_state = Signal(str, str)
    #: a ServerConnection ConnectionStats, once a second
    stats_changed = Signal(object)
    #: reconnect banner text; "" hides it
    banner = Signal(str)
    #: ("info" | "warning" | "error", text) for the status bar and message boxes
    message = Signal(str, str)
    #: (channel id, author, text, sent ms, own)
    text_received = Signal(int, str, str, object, bool)
    #: (channel id, text): system lines in a channel's chat
    chat_notice = Signal(int, str)
    #: an invite link handed over the control socket by a second start (GUI thread slot)
    invite_received = Signal(str)
    #: (channel_id, text): our message left (the chat shows it as sent, and forgets the copy)
    text_sent = Signal(int, str)
    #: (channel_id, why): our oldest pending message of the channel could not be sent
    text_not_sent = Signal(int, str)
    #: (host, port, pin): ask the user, then call approve_pin
    pin_approval_needed = Signal(str, int, str)
    #: (input peak dBFS, output peak dBFS, transmitting, speech probability 0..1)
    levels = Signal(float, float, bool, float)
    #: the preferences changed (saved already)
    prefs_changed = Signal(object)
    #: "" when audio works, else what is wrong and what to do
    audio_status = Signal(str)
    #: how push-to-talk keys are read ("global hotkeys (pynput)" or why only in-window)
    hotkeys_status = Signal(str)
    #: the transport: "udp" or "tunnel"
    transport_changed = Signal(str)
    #: (server label, why): the server wants a (different) password; ask and connect again
    password_needed = Signal(str, str)
    #: (muted, deafened): our own microphone / hearing state, for the window and the tray
    self_state_changed = Signal(bool, bool)

    # the identity look-up's thread → the GUI thread
    _identity_opened = Signal(int, object)  # (attempt, IdentityKey or KeystoreError)
    _passphrase_wanted = Signal(object, object)  # (PassphraseRequest, _Answer)

    # queued calls into the connection's thread
    _open = Signal(str, int, object)
    _close = Signal()
    _approve = Signal(str, bool)
    _join = Signal(int, object)
    _leave = Signal(int)
    _administer = Signal(object)
    _self_state = Signal(bool, bool)
    _text = Signal(int, str)
    _verify = Signal(int, bool, object)
    _local_settings = Signal(object)
    _voice_rate = Signal(int, int)  # bitrate, frame_ms: the connection's redundancy model

    def __init__(
        self,
        backend: PrefsBackend,
        prefs: Preferences,
        data_dir: Path,
        *,
        engine_factory: EngineFactory = device_engine,
        ask_passphrase: AskPassphrase | None = None,
        hotkey_sources: Callable[[], Sequence[HotkeySource]] | None = None,
        keyring_store: KeyringStore | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._backend = backend
        self.prefs = prefs
        self.data_dir = data_dir
        self._engine_factory = engine_factory
        self._ask_passphrase = ask_passphrase or (lambda _request: None)
        self._hotkey_sources = hotkey_sources
        self._keyring = keyring_store or KeyringStore()
        self.model = ClientModel()
        self.server_key: str | None = None
        self.bookmark: Bookmark | None = None
        self.identity: IdentityKey | None = None
        self.username = ""
        self.pin: str | None = None
        self.state = "closed"
        self.transport = "udp"
        self.muted = False
        self.deafened = False
        self.conn: ServerConnection | None = None
        #: how the connection's thread is scheduled (set as it starts; Help → Copy diagnostics)
        self.connection_scheduling = "not started"
        self._thread: QThread | None = None
        self._stuck_threads: list[tuple[QThread, ServerConnection]] = []
        self._rejoin_pending = False
        self._key_warned: set[tuple[int, str]] = set()  # (sender id, trust) already alerted
        self._bridge = _VoiceBridge()
        # The workers' mailboxes, for the app's lifetime: every connection writes opened voice
        # into ``_inbox`` and reads loss reports from ``_reports``; the GUI never re-points them.
        self._inbox: collections.deque[Any] = collections.deque(maxlen=2000)
        self._reports: collections.deque[Any] = collections.deque(maxlen=256)
        self.pipeline: AudioPipeline | None = None
        #: the supervised `voipclient --audio-host` process, started with the first pipeline
        self.audio_host: host_engine.AudioHost | None = None
        self._metering = False  # the input meter is on screen (see set_metering)
        self.audio_problem = ""
        self.output_missing = False
        self.router = PttRouter(())
        # The control socket's threads resolve channels against the model's roster snapshot
        # (immutable, replaced whole on the GUI thread): no lock, no GUI round trip.
        self.ptt = PttService(
            self.router, resolve_channel=self._find_channel, channel_name=self._channel_name
        )
        self.ptt.on_route = self._route_changed
        #: the desktop portal's source, when it is the live one: told of every binding change
        self._portal: PortalSource | None = None
        self.control: ControlServer | None = None
        #: where ``voipclient ptt`` reaches this app, or why it cannot
        self.control_status = ""
        self.hotkeys = ""
        self._muted_before_deafen = False
        # The peers' pinned identity keys: read once here, saved by the connection on a change.
        # An unreadable file is moved aside (never overwritten) and this run starts empty.
        self._tofu_file = TofuFile(self.data_dir / "peer-keys.json")
        loaded = self._tofu_file.load()
        self._tofu = loaded.store
        #: why the pinned peer keys could not be read ("" when they could); shown as an error
        self.tofu_problem = loaded.problem
        if loaded.problem:
            log.error("unreadable pinned peer keys: %s", loaded.problem)
        #: the key log (opt-in through VOIPCLIENT_KEYLOGFILE): while set, a warning stays shown
        self.keylog: KeyLogSink | None = keylog_from_environment(os.environ)
        self.keylog_warning = (
            f"Key log on: every voice and chat key is written to {os.environ.get(KEYLOG_ENV)} "
            f"({KEYLOG_ENV}). Anyone who reads that file can decrypt what you say and hear."
            if self.keylog is not None
            else ""
        )
        if self.keylog is not None:
            log.warning("%s is set: session keys are written to a file", KEYLOG_ENV)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._device_timer = QTimer(self)
        self._device_timer.setInterval(DEVICE_POLL_MS)
        self._device_timer.timeout.connect(self._poll_devices)
        self.local_server: Any = None
        self._attempt = 0  # connect_to calls: a late identity answer for an older one is dropped
        #: The channel an invite link named: joined after the next login.
        self._invite_channel: str | None = None
        #: Channels whose join or leave awaits the server's answer (one request at a time).
        self._membership_pending: set[int] = set()
        self._pending_connect: tuple[Bookmark, str, str | None, str] | None = None
        self._closing = False
        self._identity_lock = threading.Lock()
        #: The servers' pinned TLS keys (the connection writes approved ones here).
        self.pin_file = PinFile(self.data_dir / "server-pins.json")
        self._identity_opened.connect(self._on_identity_opened)
        self._passphrase_wanted.connect(self._on_passphrase_wanted)

    # -- start and stop ------------------------------------------------------------------------
    def start(self, shortcut_window: Any = None) -> None:
        """Open the audio devices and the hotkey source; connect nothing yet."""
        if self.tofu_problem:
            self.message.emit("error", self.tofu_problem)
        self._start_audio()
        self._start_hotkeys(shortcut_window)
        self._start_control()
        self._timer.start()
        self._device_timer.start()

    def shutdown(self) -> None:
        """Leave cleanly: say goodbye, stop audio, hotkeys and the local server, save."""
        self._closing = True
        self._pending_connect = None
        self._timer.stop()
        self._device_timer.stop()
        self._remember_joined()
        self.disconnect_server()
        self._stop_connection_thread()
        if self.control is not None:
            self.control.stop()
            self.control = None
        self.ptt.close()
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        if self.audio_host is not None:
            self.audio_host.close()
            self.audio_host = None
        if self.local_server is not None:
            self.local_server.stop()
            self.local_server = None
        self._save()

    def _find_channel(self, text: str) -> int:
        roster = self.model.roster  # one immutable snapshot for the whole look-up
        return find_channel(text, [(c.id, c.name) for c in roster.channels.values()])

    def _channel_name(self, channel_id: int) -> str | None:
        channel = self.model.roster.channels.get(channel_id)
        return None if channel is None else channel.name

    def _control_command(self, line: str) -> str:
        """A control-socket line (its own thread): ``open LINK`` hands an invite link to this
        window (``voipclient voipclient://...`` while the app runs, e.g. a clicked link); the
        rest is push-to-talk (:meth:`PttService.handle_command`)."""
        verb, _, rest = line.strip().partition(" ")
        if verb.lower() != "open":
            return self.ptt.handle_command(line)
        from voipclient.net.invite import InviteError, parse_invite

        try:
            parse_invite(rest)
        except InviteError as exc:
            self.invite_received.emit(rest.strip())  # the window says why too (a click has
            return f"error {exc}"  # no terminal to read the reply in)
        self.invite_received.emit(rest.strip())  # queued to the GUI thread
        return "ok opening"

    def _start_control(self) -> None:
        """The local control socket (``voipclient ptt press General``: Wayland compositor
        shortcuts, stream decks, scripts), for as long as the app runs."""
        server = ControlServer(self._control_command)
        try:
            server.start()
        except OSError as exc:  # another instance holds it, or the runtime dir is unusable
            self.control_status = f"voipclient ptt unavailable: {exc}"
            log.warning("control socket not started: %s", exc)
        else:
            self.control = server
            self.control_status = f"voipclient ptt listens on {server.address}"
            log.info("control socket on %s", server.address)
        self.hotkeys_status.emit(self.hotkeys)

    def _start_hotkeys(self, window: Any) -> None:
        if self._hotkey_sources is not None:
            candidates = list(self._hotkey_sources())
        else:
            candidates = self._default_sources(window)
        source, skipped = choose_source(candidates)
        if source is None:
            why = "; ".join(f"{name}: {reason}" for name, reason in skipped)
            self.hotkeys = f"push-to-talk keys unavailable ({why})"
        else:
            if isinstance(source, PortalSource):
                # one shortcut per binding, all asked for at once; the desktop's answer (its
                # dialog may wait for the user) comes later, from the portal's thread
                self._portal = source
                source.set_bindings(
                    shortcuts_from_bindings(self.ptt.state().bindings, self.model.channel_name)
                )
                source.on_status = lambda text: self.hotkeys_status.emit(f"portal: {text}")
            self.ptt.attach(source)
            # the portal's own status (asking it again would be one more D-Bus round trip on
            # the GUI thread); the other sources answer from the environment at once
            why = source.status if isinstance(source, PortalSource) else source.available()[1]
            self.hotkeys = f"{source.name}: {why}"
            if skipped:
                why = "; ".join(f"{name}: {reason}" for name, reason in skipped)
                self.hotkeys += f" (not used: {why})"
        self.hotkeys_status.emit(self.hotkeys)

    @staticmethod
    def _default_sources(window: Any) -> list[HotkeySource]:
        """The hotkey sources in the order this session wants them (``source_order``)."""
        from voipclient.ptt.evdev_source import EvdevSource
        from voipclient.ptt.pynput_source import PynputSource
        from voipclient.ptt.qt_shortcuts import QtShortcutSource

        makers: dict[str, Callable[[], HotkeySource]] = {
            "pynput": PynputSource,
            "portal": lambda: PortalSource(app_id=PORTAL_APP_ID),
            "evdev": EvdevSource,
        }
        if window is not None:
            makers["qt"] = lambda: QtShortcutSource(window)
        order = source_order(session_kind(os.environ, sys.platform))
        return [makers[name]() for name in order if name in makers]

    # -- audio ---------------------------------------------------------------------------------
    def _start_audio(self) -> None:
        """Open the devices: both sides, else whichever side works (a missing microphone must
        not silence the speakers, nor the other way round), else no device at all. What failed
        is said in the status bar with what to do.

        With the real devices (``device_engine``) on POSIX, the devices live in the audio host
        process (:mod:`voipclient.audio.host_engine`): the pipeline starts at once and what
        opened arrives as an ``"opened"`` device event; the GUI never waits on PortAudio.

        Never after :meth:`shutdown`: a dialog closed by the app's quitting may still apply
        preferences (saved), but no device or audio process starts again to outlive the app."""
        if self._closing:
            return
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        inbox, reports = self._inbox, self._reports
        failures: dict[str, str] = {}
        pipeline: AudioPipeline | None = None
        self.output_missing = False
        if self._engine_factory is device_engine and self._use_audio_host():
            assert self.audio_host is not None
            a = self.prefs.audio
            engine: AudioEngine = HostEngine(
                self.audio_host,
                a.input_device,
                a.output_device,
                frame_samples=frame_samples(a.frame_ms),
            )
            engine.on_event = self._device_event
            pipeline = AudioPipeline(
                self.prefs, engine, inbox, reports, self._bridge.voice.emit, self.ptt.route
            )
            pipeline.start()
            self.audio_problem = ""
            self._audio_started(pipeline)
            return
        for use_input, use_output in ATTEMPTS:
            try:
                engine = self._engine_factory(self.prefs, use_input, use_output)
                engine.on_event = self._device_event
                candidate = AudioPipeline(
                    self.prefs, engine, inbox, reports, self._bridge.voice.emit, self.ptt.route
                )
            except AudioDeviceError as exc:
                failures[sides_name(use_input, use_output)] = str(exc)
                continue
            try:
                candidate.start()
            except AudioDeviceError as exc:
                candidate.stop()
                failures[sides_name(use_input, use_output)] = str(exc)
                continue
            pipeline = candidate
            self.output_missing = not use_output
            break
        if pipeline is None:
            engine = NullEngine(frame_samples=frame_samples(self.prefs.audio.frame_ms))
            engine.on_event = self._device_event
            pipeline = AudioPipeline(
                self.prefs, engine, inbox, reports, self._bridge.voice.emit, self.ptt.route
            )
            pipeline.start()
            self.output_missing = True
        self.audio_problem = _audio_problem(failures, _engine_sides(pipeline.engine))
        self._audio_started(pipeline)

    def _use_audio_host(self) -> bool:
        """Start the audio host if it is not running yet; False where it cannot run (Windows,
        or VOIPCLIENT_AUDIO_HOST=0 for a developer who wants PortAudio in-process)."""
        if self.audio_host is not None:
            return True
        if not host_engine.supported() or os.environ.get(AUDIO_HOST_ENV, "1") == "0":
            return False
        diag = diagnostics.installed()
        try:
            self.audio_host = host_engine.AudioHost(log_dir=None if diag is None else diag.log_dir)
        except OSError as exc:
            log.error("audio host not started (%s): devices open in the app", exc)
            return False
        return True

    def _route_changed(self, route: Route) -> None:
        """Any thread, with the push-to-talk lock held: a press starts the microphone in the
        audio host at once (its capture worker stops it again after a second of nothing)."""
        pipeline = self.pipeline  # one read: a rebuild may replace it meanwhile
        if route.speaking and pipeline is not None:
            want = getattr(pipeline.engine, "want_input", None)
            if want is not None:
                want(True)

    def set_metering(self, on: bool) -> None:
        """The input meter is shown (the settings dialog): keep the microphone running."""
        self._metering = on
        pipeline = self.pipeline
        if pipeline is not None:
            pipeline.capture.metering = on
            want = getattr(pipeline.engine, "want_input", None)
            if on and want is not None:
                want(True)

    def _audio_started(self, pipeline: AudioPipeline) -> None:
        pipeline.capture.metering = self._metering
        ns = pipeline.processor.ns_status
        if ns.reason:
            self.message.emit("warning", ns.reason)
        if self.conn is not None:  # a rebuilt capture worker starts at the current level
            pipeline.capture.level = self.conn.redundancy_level
        self.pipeline = pipeline
        self._apply_transmit()
        self._apply_mixer()
        self.audio_status.emit(self.audio_problem)

    def audio_devices(self) -> list[DeviceInfo]:
        """The devices for the settings dialog: the audio host's last list (no PortAudio call
        in this process), else PortAudio's own."""
        if self.audio_host is not None:
            return list(self.audio_host.devices)
        from voipclient.audio.sd_engine import list_devices

        return list_devices()

    def _device_event(self, event: DeviceEvent) -> None:
        # GUI thread, from the engine's poll: lost/fallback/recovered/returned, and from the
        # audio host also opened (what works after an open) and host_restarted
        kind, detail = event.kind, event.message
        log.info("audio: %s: %s", kind, detail)
        if kind == "opened":
            engine = self.pipeline.engine if self.pipeline is not None else None
            failures = getattr(engine, "failures", {})
            self.audio_problem = _audio_problem(failures, _engine_sides(engine))
            self.audio_status.emit(self.audio_problem)
        elif kind in {"lost", "fallback"}:
            self.audio_problem = f"audio device {kind}: {detail}"
            self.audio_status.emit(self.audio_problem)
        elif kind in {"host_restarted", "host_failed"}:
            self.message.emit("warning", f"{detail}.")
        elif kind in {"recovered", "started", "returned"} and self.audio_problem.startswith(
            "audio device"
        ):
            self.audio_problem = ""
            self.audio_status.emit("")

    def _poll_devices(self) -> None:
        engine = self.pipeline.engine if self.pipeline is not None else None
        poll = getattr(engine, "poll", None)
        if poll is not None:
            poll(time.monotonic())

    # -- preferences ---------------------------------------------------------------------------
    def apply_prefs(self, prefs: Preferences) -> None:
        """New preferences from the settings dialog: saved, and in effect at once. Hotkeys the
        one rule refuses (the same chord twice on a server) are dropped and reported."""
        prefs, dropped = checked_hotkeys(prefs)
        for why in dropped:
            self.message.emit("warning", why)
        old, self.prefs = self.prefs, prefs
        self._save()
        if self.pipeline is None or self.pipeline.needs_rebuild(prefs):
            self._start_audio()
        elif old.audio != prefs.audio or old.transmit != prefs.transmit:
            self.pipeline.reconfigure(prefs)
            self._apply_transmit()
        if self.server_key is not None:
            self._set_server_prefs(prefs.server(self.server_key))
        if self.conn is not None and (
            old.audio.bitrate != prefs.audio.bitrate or old.audio.frame_ms != prefs.audio.frame_ms
        ):
            self._voice_rate.emit(prefs.audio.bitrate, prefs.audio.frame_ms)
        self.prefs_changed.emit(prefs)

    def _save(self) -> None:
        try:
            save_preferences(self._backend, self.prefs)
            sync = getattr(self._backend, "sync", None)
            if sync is not None:
                sync()
        except OSError as exc:
            self.message.emit("error", f"cannot save the settings: {exc}")

    def _server_prefs(self) -> ServerPrefs:
        return self.prefs.server(self.server_key) if self.server_key else ServerPrefs()

    def _set_server_prefs(self, server: ServerPrefs) -> None:
        if self.server_key is None:
            return
        if self.prefs.server(self.server_key) != server:
            self.prefs = self.prefs.with_server(self.server_key, server)
            self._save()
        if self.model.set_server_prefs(server):
            self.model_changed.emit()
        self._apply_bindings()
        self._apply_transmit()
        self._apply_mixer()

    def _apply_bindings(self) -> None:
        bindings, problems = self.model.bindings()
        self.ptt.set_bindings(bindings)
        if self._portal is not None:  # the desktop binds the new keys (a new portal session)
            self._portal.set_bindings(shortcuts_from_bindings(bindings, self.model.channel_name))
        for problem in problems:
            log.info("push-to-talk binding not active: %s", problem)

    def _apply_transmit(self) -> None:
        """The transmission mode, the hot-mic channel and self-mute → the router, which alone
        decides who hears me (the capture worker reads its route every frame)."""
        hot = self.model.hot_mic_channel() if self.state == "ready" else None
        self.ptt.set_muted(self.muted)
        self.ptt.set_mode(Mode(self.prefs.transmit.mode))
        self.ptt.set_hot_mic(hot)

    def _apply_mixer(self) -> None:
        """Volumes and mutes (by name in the preferences) → the mixer (by id), on its thread."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        server, roster = self._server_prefs(), self.model.roster
        deafened = self.deafened
        channel_settings = [
            (
                c.id,
                server.channel_volumes.get(c.name, 1.0),
                c.name in server.channel_muted,
                server.channel_pan.get(c.name, 0.0),
            )
            for c in roster.channels.values()
        ]
        priority = next((c.id for c in roster.channels.values() if c.name == server.priority), None)
        duck_db = self.prefs.audio.duck_db
        # each channel's cue: its own notes (by its place in the tree, like its default colour),
        # at its placement
        cue_voices = {
            row.id: (voice_for(row.slot), server.channel_pan.get(row.name, 0.0))
            for row in self.model.rows()
        }
        worker = pipeline.playback
        user_settings = [
            (u.sender_id, server.user_volumes.get(u.name, 1.0), u.name in server.user_muted)
            for u in roster.users.values()
        ]
        mixer = pipeline.mixer

        def apply() -> None:
            mixer.set_deafened(deafened)
            for cid, volume, muted, pan in channel_settings:
                mixer.set_channel_volume(cid, volume)
                mixer.set_channel_muted(cid, muted)
                mixer.set_channel_pan(cid, pan)
            mixer.set_priority(priority, duck_db)
            worker.cue_voices = cue_voices
            for sid, volume, muted in user_settings:
                mixer.set_user_volume(sid, volume)
                mixer.set_user_muted(sid, muted)

        pipeline.playback.commands.append(apply)

    # -- connection ----------------------------------------------------------------------------
    def connect_to(
        self,
        bookmark: Bookmark,
        username: str,
        *,
        pin: str | None = None,
        password: str = "",
        local: bool = False,
        join: str | None = None,
    ) -> None:
        """Open (or switch to) a server; ``join``: a channel (by name) joined after the login,
        an invite link's. The identity key is looked up off the GUI thread (the
        OS keyring answers over D-Bus, a passphrase file runs scrypt: both take a noticeable
        time); the connection starts when it is there. When it cannot be opened (the keyring
        is locked, the passphrase was refused or cancelled) ``message`` says why.

        ``local``: our own embedded server on loopback. Without an OS keyring its identity key is
        kept in memory for this run (nobody else can reach that server, and a key is never
        written in plaintext) instead of asking for a passphrase on the first start."""
        self.disconnect_server()
        self._invite_channel = join
        self._attempt += 1
        attempt = self._attempt
        self._pending_connect = (bookmark, username, pin, password)
        worker = threading.Thread(
            target=self._open_identity,
            args=(attempt, bookmark.key, username, local),
            name="identity",
            daemon=True,
        )
        worker.start()

    def _open_identity(self, attempt: int, key: str, username: str, local: bool) -> None:
        """The identity thread: the keyring or key file; the answer goes to the GUI thread.
        One look-up at a time (a second connect waits for the first): two threads must never
        both find "no key yet" and create two identities for one account."""
        with self._identity_lock:
            if attempt != self._attempt:
                return  # superseded while waiting: its answer would be dropped anyway
            self._open_identity_now(attempt, key, username, local)

    def _open_identity_now(self, attempt: int, key: str, username: str, local: bool) -> None:
        result: object
        try:
            if local and not self._keyring.is_available():
                result = _Generated(IdentityKey.generate())
            else:
                result = open_identity(
                    key,
                    username,
                    keyring_store=self._keyring,
                    key_dir=self.data_dir / "keys",
                    ask_passphrase=lambda request: self._passphrase_from_gui(attempt, request),
                ).key
        except KeystoreError as exc:
            result = exc
        except Exception as exc:  # never lose the answer: the GUI waits for it
            log.exception("opening the identity key failed")
            result = KeystoreError(f"{type(exc).__name__}: {exc}")
        self._identity_opened.emit(attempt, result)

    def _passphrase_from_gui(self, attempt: int, request: Any) -> str | None:
        """Identity thread: ask on the GUI thread (a dialog) and wait for the answer."""
        answer = _Answer(attempt)
        self._passphrase_wanted.emit(request, answer)
        answer.done.wait()
        return answer.value

    @Slot(object, object)
    def _on_passphrase_wanted(self, request: Any, answer: Any) -> None:
        try:
            stale = self._closing or answer.attempt != self._attempt
            answer.value = None if stale else self._ask_passphrase(request)  # None: cancelled
        finally:
            answer.done.set()

    @Slot(int, object)
    def _on_identity_opened(self, attempt: int, result: object) -> None:
        pending = self._pending_connect
        if attempt != self._attempt or pending is None or self._closing:
            return  # a newer connect_to (or quitting) superseded this one
        self._pending_connect = None
        bookmark, username, pin, password = pending
        key = bookmark.key
        if isinstance(result, KeystoreError):
            self.message.emit("error", f"cannot open your identity key for {key}: {result}")
            return
        if isinstance(result, _Generated):
            result = result.key
            self.message.emit(
                "info",
                "No OS keyring: your identity on the local server lasts until you quit.",
            )
        assert isinstance(result, IdentityKey)
        self.identity = result
        self._start_connection(bookmark, username, pin, password)

    def _start_connection(
        self, bookmark: Bookmark, username: str, pin: str | None, password: str
    ) -> None:
        key = bookmark.key
        identity = self.identity
        assert identity is not None
        self.bookmark, self.server_key, self.username = bookmark, key, username
        if pin is None and bookmark.pin:
            pin = bookmark.pin  # from an invite link: no trust prompt for that key
        self.pin = pin  # the pin this connection was opened with (None: the stored one / ask)
        self.model.reset()
        self.model.set_server_prefs(self.prefs.server(key))
        self.model_changed.emit()  # the previous server's tree goes away now
        self._rejoin_pending = True  # the channels joined last time, once, after this login
        # the name logged in with becomes the default everywhere; the server is selected next time
        if self.prefs.username != username or self.prefs.last_server != key:
            self.prefs = replace(self.prefs, username=username, last_server=key)
            self._save()
        self._stop_connection_thread()
        thread = QThread()
        thread.setObjectName("connection")
        conn = ServerConnection(
            username,
            identity,
            password=password or None,
            tofu=self._tofu,
            pin_file=self.pin_file,
            tofu_file=self._tofu_file,
            keylog=self.keylog,
            inbox=self._inbox,
            loss_reports=self._reports,
            path_memory=PathMemoryFile(self.data_dir / "voice-paths.json"),
            bitrate=self.prefs.audio.bitrate,
            frame_ms=self.prefs.audio.frame_ms,
        )
        # What listeners report about us goes straight from the connection's thread into the
        # capture worker's slot (whichever pipeline is current), no GUI timer in between.
        conn.redundancy_slot = self._redundancy_to_capture
        conn.voice_wake = self._wake_playback
        conn.moveToThread(thread)
        conn.state_changed.connect(self._on_state)
        conn.pin_approval_needed.connect(self._on_pin_needed)
        conn.session_event.connect(self._on_session_event)
        conn.transport_changed.connect(self._on_transport)
        conn.supervisor_action.connect(self._on_supervisor)
        conn.stats_changed.connect(self._on_stats)
        conn.text_failed.connect(self._on_text_failed)
        conn.text_sent.connect(self._on_text_sent)
        self._open.connect(conn.open)
        self._close.connect(conn.close)
        self._approve.connect(conn.approve_presented_pin)
        self._join.connect(conn.join)
        self._leave.connect(conn.leave)
        self._administer.connect(conn.administer)
        conn.admin_failed.connect(self._on_admin_failed)
        self._self_state.connect(conn.set_self_state)
        self._text.connect(conn.send_text)
        self._verify.connect(conn.set_verified)
        self._local_settings.connect(conn.set_local_settings)
        self._voice_rate.connect(conn.set_voice_rate)
        self._bridge.voice.connect(conn.send_voice)
        thread.finished.connect(conn.deleteLater)
        # The connection's thread carries every voice frame both ways: a high nice level (not
        # real-time: it also does TLS and key work) so a game on every core does not delay it.
        thread.started.connect(self._prioritise_connection, Qt.ConnectionType.DirectConnection)
        thread.start()
        self.conn, self._thread = conn, thread
        self._self_state.emit(self.muted, self.deafened)
        self._open.emit(bookmark.host, bookmark.port, pin)

    def _prioritise_connection(self) -> None:
        """Runs on the connection's thread as it starts."""
        self.connection_scheduling = str(prioritise_current_thread())

    def approve_pin(self, pin: str, approved: bool) -> None:
        """The user's answer about ``pin`` (ignored if the connection presents another by now)."""
        self._approve.emit(pin, approved)

    def disconnect_server(self) -> None:
        # A connection still waiting for its identity key is cancelled too (Disconnect clicked
        # during a slow keyring or a passphrase dialog): its late answer is dropped.
        self._pending_connect = None
        self._invite_channel = None  # an invite's channel belongs to the connection it came with
        self._attempt += 1
        if self.conn is not None:
            self._remember_joined()
            self._close.emit()
        self.ptt.release_all()

    def _stop_connection_thread(self) -> None:
        thread, conn = self._thread, self.conn
        if thread is None or conn is None:
            return
        # Close on the connection's thread and wait for it: the goodbye is sent and the sockets
        # are closed before the thread and its objects go away.
        if thread.isRunning():
            QMetaObject.invokeMethod(conn, "close", Qt.ConnectionType.BlockingQueuedConnection)
        for signal in (
            self._open,
            self._close,
            self._approve,
            self._join,
            self._leave,
            self._self_state,
            self._text,
            self._verify,
            self._local_settings,
            self._voice_rate,
            self._administer,
        ):
            signal.disconnect()
        self._bridge.voice.disconnect()
        for source_signal in (
            conn.state_changed,
            conn.pin_approval_needed,
            conn.session_event,
            conn.transport_changed,
            conn.supervisor_action,
            conn.stats_changed,
            conn.text_failed,
            conn.text_sent,
            conn.admin_failed,
        ):
            source_signal.disconnect()
        thread.quit()
        if not thread.wait(5000):
            log.warning("the connection thread did not stop within 5 s; leaving it running")
            self._stuck_threads.append((thread, conn))  # dropping a running QThread aborts
        self.conn, self._thread = None, None
        if self.model.reset():
            self.model_changed.emit()

    def _remember_joined(self) -> None:
        if self.server_key is None or self.model.me is None:
            return
        joined = tuple(name for cid, name in self.model.joined() if cid != 1)
        server = replace(self._server_prefs(), joined=joined)
        if server != self._server_prefs():
            self.prefs = self.prefs.with_server(self.server_key, server)
            self._save()

    # -- user actions --------------------------------------------------------------------------
    # -- administration (the server checks each request: docs/protocol.md) -------------------------
    @property
    def is_admin(self) -> bool:
        """The server counts us as one of its administrators (shows the admin menus)."""
        me = self.model.me
        user = None if me is None else self.model.roster.users.get(me)
        return user is not None and user.admin

    def admin_user(
        self, action: str, sender_id: int, *, channel_id: int | None = None, reason: str = ""
    ) -> None:
        """Kick, ban (a reason) or move (into ``channel_id``) a user."""
        self._administer.emit(("user", action, sender_id, channel_id, reason))

    def admin_channel(self, op: str, channel_id: int | None = None, **fields: Any) -> None:
        """Create (``parent``, ``name``, ...), update or delete a channel."""
        if channel_id is not None:
            fields["channel_id"] = channel_id
        self._administer.emit(("channel", op, fields))

    @Slot(str)
    def _on_admin_failed(self, why: str) -> None:
        if not self._stale():
            self.message.emit("warning", f"not sent: {why}")

    def join(self, channel_id: int, password: str | None = None) -> None:
        """Ask to join; ignored while a join or leave of that channel awaits the server's
        answer, or when already a member (a double click, a key held on Enter)."""
        row = self.model.row(channel_id)
        if channel_id in self._membership_pending or (row is not None and row.joined):
            return
        self._membership_pending.add(channel_id)
        self._join.emit(channel_id, password)

    def leave(self, channel_id: int) -> None:
        """Ask to leave; ignored while a request for that channel is pending, or when not in it."""
        row = self.model.row(channel_id)
        if channel_id in self._membership_pending or (row is not None and not row.joined):
            return
        self._membership_pending.add(channel_id)
        self._leave.emit(channel_id)

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        self.ptt.set_muted(muted)  # first: nothing of what is let go below goes out meanwhile
        if muted:
            self.ptt.release_all()
        self._self_state.emit(self.muted, self.deafened)
        if self.model.set_self_state(self.muted, self.deafened):
            self.model_changed.emit()
        self._apply_transmit()
        self.self_state_changed.emit(self.muted, self.deafened)

    def set_deafened(self, deafened: bool) -> None:
        """Deafen mutes too (as in Mumble/Discord); undeafen restores the previous mute."""
        self.deafened = deafened
        if deafened:
            self._muted_before_deafen = self.muted
            self.set_muted(True)
        else:
            self.set_muted(self._muted_before_deafen)
        self._self_state.emit(self.muted, self.deafened)
        self._apply_mixer()
        self.self_state_changed.emit(self.muted, self.deafened)

    def set_channel_volume(self, channel_id: int, volume: float) -> None:
        self._set_volume("channel_volumes", self.model.channel_name(channel_id), volume)

    def set_channel_muted(self, channel_id: int, muted: bool) -> None:
        self._set_muted("channel_muted", self.model.channel_name(channel_id), muted)

    def set_channel_pan(self, channel_id: int, pan: float) -> None:
        """Place a channel in the stereo mix: -1 hard left, 0 centre, 1 hard right."""
        name = self.model.channel_name(channel_id)
        if name is None:
            return
        server = self._server_prefs()
        pans = dict(server.channel_pan)
        pan = max(-1.0, min(1.0, pan)) if math.isfinite(pan) else 0.0
        if pan == 0.0:
            pans.pop(name, None)
        else:
            pans[name] = pan
        self._set_server_prefs(replace(server, channel_pan=pans))

    def set_priority_channel(self, channel_id: int | None) -> None:
        """The channel whose speech ducks the others (None: no priority channel)."""
        name = None if channel_id is None else self.model.channel_name(channel_id)
        self._set_server_prefs(replace(self._server_prefs(), priority=name))

    def set_channel_colour(self, channel_id: int, colour: str | None) -> None:
        """The channel's colour ("#rrggbb"), or None for its default one."""
        name = self.model.channel_name(channel_id)
        if name is None:
            return
        server = self._server_prefs()
        colours = dict(server.channel_colours)
        if colour is None:
            colours.pop(name, None)
        else:
            colours[name] = normalise_colour(colour, channel_id)
        self._set_server_prefs(replace(server, channel_colours=colours))

    def set_user_volume(self, sender_id: int, volume: float) -> None:
        self._set_volume("user_volumes", self.model.user_name(sender_id), volume)

    def set_user_muted(self, sender_id: int, muted: bool) -> None:
        self._set_muted("user_muted", self.model.user_name(sender_id), muted)

    def _set_volume(self, field: str, name: str | None, volume: float) -> None:
        """One channel's or user's volume (by name, 0..2) in this server's preferences."""
        if name is None:
            return
        server = self._server_prefs()
        volumes = dict(getattr(server, field))
        volumes[name] = max(0.0, min(2.0, volume))
        changes: dict[str, Any] = {field: volumes}
        self._set_server_prefs(replace(server, **changes))

    def _set_muted(self, field: str, name: str | None, muted: bool) -> None:
        """One channel's or user's local mute (by name) in this server's preferences."""
        if name is None:
            return
        server = self._server_prefs()
        names = set(getattr(server, field))
        (names.add if muted else names.discard)(name)
        changes: dict[str, Any] = {field: frozenset(names)}
        self._set_server_prefs(replace(server, **changes))

    def set_channel_binding(self, channel_id: int, keys: str | None) -> bool:
        """Set (or with None remove) the channel's own push-to-talk key. False, and a message
        saying why, when another binding already uses those keys."""
        name = self.model.channel_name(channel_id)
        if name is None:
            return False
        if keys is not None:
            why = binding_conflict(self._server_prefs(), name, keys)
            if why is not None:
                self.message.emit("warning", why)
                self.model_changed.emit()  # the controls show the key that stays
                return False
            for warning in binding_warnings(self._server_prefs(), name, keys):
                self.message.emit("info", warning)
        self._set_server_prefs(with_binding(self._server_prefs(), name, keys))
        return True

    def set_hot_mic(self, channel_id: int | None) -> None:
        """Make ``channel_id`` the hot-mic channel (None: none). In push-to-talk-only mode a hot
        mic would do nothing, so choosing one switches to voice activation, and says so."""
        name = None if channel_id is None else self.model.channel_name(channel_id)
        if name is not None and self.prefs.transmit.mode == "ptt":
            transmit = replace(self.prefs.transmit, mode="voice_activation")
            self.apply_prefs(replace(self.prefs, transmit=transmit))
            self.message.emit(
                "info",
                f"Hot mic on {name}: voice activation is on (you talk there when you speak). "
                "Settings → Transmission chooses between voice activation and always on.",
            )
        self._set_server_prefs(replace(self._server_prefs(), hot_mic=name))

    def apply_setup(self, choices: Any) -> None:
        """What the first-run setup chose (:class:`voipclient.ui.setup_wizard.SetupChoices`):
        the nickname, the devices and the way to talk, saved; the key (or voice activation)
        applies to the channel you are in now, and on every server where you have none yet."""
        voice = choices.mode == "voice_activation"
        prefs = replace(
            self.prefs,
            username=choices.username,
            setup_done=True,
            default_ptt=choices.keys,
            default_hot_mic=voice,
            audio=replace(
                self.prefs.audio,
                input_device=choices.input_device,
                output_device=choices.output_device,
            ),
            transmit=replace(
                self.prefs.transmit,
                mode="voice_activation" if voice else "ptt",
                vad_threshold=choices.vad_threshold,
            ),
        )
        self.apply_prefs(prefs)
        channel = self._talk_channel()
        if channel is None:
            return
        if choices.keys:
            self.set_channel_binding(channel, choices.keys)
        if voice:
            self.set_hot_mic(channel)
        # applied here: not again at the next login (a key removed later stays removed)
        self._set_server_prefs(replace(self._server_prefs(), defaults_applied=True))

    def _talk_channel(self) -> int | None:
        """The channel the setup's choice applies to: the first one we are in, lobby last."""
        me = self.model.me
        if me is None:
            return None
        mine = sorted(self.model.roster.channels_of(me))
        return next((c for c in mine if c != min(mine)), mine[0]) if mine else None

    def _apply_defaults(self, channel: int | None = None) -> None:
        """Once per server: the setup's key (or voice activation) applies to the channel we are
        in (``channel``: the one just joined) when the server has no key (no hot-mic channel) of
        ours yet. Never again after that: a key or hot mic the user removed stays removed."""
        server = self._server_prefs()
        if server.defaults_applied or not (self.prefs.default_ptt or self.prefs.default_hot_mic):
            return
        channel = channel if channel is not None else self._talk_channel()
        if channel is None:
            return
        if self.prefs.default_ptt and not server.bindings:
            self.set_channel_binding(channel, self.prefs.default_ptt)
        if self.prefs.default_hot_mic and server.hot_mic is None:
            self.set_hot_mic(channel)
        self._set_server_prefs(replace(self._server_prefs(), defaults_applied=True))

    def send_text(self, channel_id: int, text: str) -> None:
        """Send a chat message; it shows in the conversation once it has left
        (``text_sent``), or comes back to the editor with the reason (``text_not_sent``)."""
        if self.conn is None:
            self.text_not_sent.emit(channel_id, "not connected")
            return
        self._text.emit(channel_id, text)

    def set_verified(self, sender_id: int, verified: bool, ik_pub: bytes) -> None:
        """The user compared the safety number computed from ``ik_pub`` with ``sender_id`` (or
        takes it back). The E2E layer refuses it if that member holds another key by now."""
        self._verify.emit(sender_id, verified, ik_pub)

    def safety_number(self, sender_id: int, ik_pub: bytes | None = None) -> str | None:
        """The safety number to compare with ``sender_id`` (out of band), or None. Computed
        from the name and identity key the E2E layer pinned for that member (``ik_pub``, when
        given, must be that key), never from the roster's or a name's."""
        holder = self.model.holder(sender_id)
        me = self.model.holder(self.model.me) if self.model.me is not None else None
        if holder is None or me is None or self.identity is None:
            return None
        if ik_pub is not None and ik_pub != holder.ik_pub:
            return None
        digits = safety_number(
            self.identity.public_bytes(), me.name.casefold(), holder.ik_pub, holder.name.casefold()
        )
        return format_safety_number(digits)

    # -- from the connection ---------------------------------------------------------------------
    def _stale(self) -> bool:
        """The signal being handled comes from a connection we already replaced: its queued
        signals can still arrive after the switch (a "closed" from the old server must not
        clear the new server's tree)."""
        sender = self.sender()
        return sender is not None and sender is not self.conn

    @Slot(str, int, str)
    def _on_pin_needed(self, host: str, port: int, pin: str) -> None:
        if not self._stale():
            self.pin_approval_needed.emit(host, port, pin)

    @Slot(object)
    def _on_stats(self, stats: object) -> None:
        if not self._stale():
            self.stats_changed.emit(stats)

    @Slot(str, str)
    def _on_state(self, state: str, detail: str) -> None:
        if self._stale():
            return
        self.state = state
        if state == "ready":
            self.banner.emit("")
        self.connection_state.emit(state, detail)
        if state in {"closed", "refused", "waiting"} and self.model.reset():
            self.model_changed.emit()

    @Slot(str)
    def _on_transport(self, transport: str) -> None:
        if self._stale():
            return
        self.transport = transport
        self.transport_changed.emit(transport)

    @Slot(object)
    def _on_session_event(self, event: object) -> None:
        if self._stale():
            return
        changed = self.model.apply(event)
        if isinstance(event, ev.LoggedIn):
            self._after_login()
        elif isinstance(event, e2ee.TextMessageReceived):
            msg = event.message
            self.text_received.emit(msg.channel_id, event.author, msg.text, msg.sent_ms, False)
        elif isinstance(event, e2ee.TextDropped):
            name = self.model.user_name(event.sender_id) or f"user {event.sender_id}"
            self.chat_notice.emit(
                event.channel_id, f"a message from {name} was dropped: {event.reason}"
            )
        elif isinstance(event, e2ee.KeyHolderNotice):
            self._key_holder_notice(event)
        elif isinstance(event, e2ee.KeyHolderAlarm):
            names = ", ".join(
                self.model.user_name(s) or f"user {s}" for s in sorted(event.extra | event.missing)
            )
            text = (
                f"Key holders differ from the member list ({event.detail}: {names}). Nobody "
                "outside the member list was sent a key. Tell whoever runs this server."
            )
            self.chat_notice.emit(event.channel_id, text)
            self.message.emit("error", text)
        elif (
            isinstance(event, ev.ConnectionClosed) and event.code == m.ErrorCode.ROSTER_INCONSISTENT
        ):
            self.message.emit(
                "error",
                "Disconnected: the server tried to change who is in a channel in a way an "
                f"honest server never does ({event.message}). Your keys were not handed to "
                "anyone hidden. Tell whoever runs this server.",
            )
        elif isinstance(event, ev.MembershipChanged) and event.sender_id == self.model.me:
            self._membership_pending.discard(event.channel_id)  # the answer to join / leave
            if event.joined:
                self._apply_defaults(event.channel_id)
            self._apply_bindings()
            self._apply_transmit()
        elif isinstance(event, ev.ServerError) and not event.fatal:
            if event.channel_id is not None:
                self._membership_pending.discard(event.channel_id)
            else:
                self._membership_pending.clear()
            self.message.emit("warning", f"server: {event.message}")
        elif isinstance(event, ev.ServerShuttingDown):
            self.banner.emit(f"The server is shutting down: {event.reason}")
        elif isinstance(event, ev.AdminNoticeReceived):
            self._admin_notice(event)
        elif isinstance(event, ev.ChannelAdminDone):
            done = {"CREATE": "created", "UPDATE": "changed", "DELETE": "deleted"}
            name = self.model.channel_name(event.channel_id) or ""
            verb = done.get(event.op.name, event.op.name.lower())
            self.message.emit("info", f"Channel {name} {verb}".replace("  ", " ").strip())
        elif isinstance(event, ev.UserLeft) and self.pipeline is not None:
            playback, sid = self.pipeline.playback.playback, event.user.sender_id
            self.pipeline.playback.commands.append(lambda: playback.forget_sender(sid))
        if isinstance(event, ev.RosterChanged | ev.LoggedIn):
            self._apply_mixer()
        if changed:
            self.model_changed.emit()

    def _admin_notice(self, event: Any) -> None:
        model = self.model
        by = model.user_name(event.by) or "an administrator"
        target = model.user_name(event.target) or f"user {event.target}"
        why = f" ({event.reason})" if event.reason else ""
        action = event.action.name.lower()
        if event.target == model.me:
            where = model.channel_name(event.channel_id) if event.channel_id else None
            text = {
                "kick": f"{by} removed you from the server{why}",
                "ban": f"{by} banned you from the server{why}",
                "move": f"{by} moved you to {where}{why}",
            }.get(action, f"{by}: {action}{why}")
        else:
            where = model.channel_name(event.channel_id) if event.channel_id else None
            text = {
                "kick": f"You removed {target} from the server{why}",
                "ban": f"You banned {target}{why}",
                "move": f"You moved {target} to {where}{why}",
            }.get(action, f"{action} {target}{why}")
        self.message.emit("info" if action == "move" else "warning", text)

    def _after_login(self) -> None:
        """Logged in (again): rejoin what the user had joined last time, apply bindings."""
        self._key_warned.clear()
        self._membership_pending.clear()  # requests of an earlier session got no answer
        self._apply_bindings()
        self._apply_transmit()
        if self.model.set_self_state(self.muted, self.deafened):
            self.model_changed.emit()
        if not self._rejoin_pending:
            return  # a reconnect: the supervisor restores what we were in, nothing more
        self._rejoin_pending = False
        mine = self.model.roster.channels_of(self.model.me or 0)
        wanted = list(self._server_prefs().joined)
        invited, self._invite_channel = self._invite_channel, None
        if invited:
            wanted.append(invited)
        joining = False
        for name in wanted:
            cid = self.model.channel_id(name)
            if cid is not None and cid not in mine:
                self.join(cid)
                joining = True
            elif cid is None and name == invited:
                self.message.emit("warning", f"the invite's channel {name!r} is not on the server")
        if not joining:
            self._apply_defaults()  # else: on the first channel joined (MembershipChanged)

    @Slot(object)
    def _on_supervisor(self, action: object) -> None:
        if self._stale():
            return
        if isinstance(action, sv.ReconnectScheduled):
            self.banner.emit(
                f"Connection lost ({action.why}). Reconnecting in {action.delay:.0f} s "
                f"(attempt {action.attempt})…"
            )
        elif isinstance(action, sv.Stopped) and action.reason is sv.StopReason.UNREACHABLE:
            where = self.bookmark.label or self.bookmark.key if self.bookmark else "the server"
            self.state = "unreachable"  # never reached: stopped, not retrying (Connect again)
            self.connection_state.emit(self.state, action.message)
            self.banner.emit(f"Could not connect to {where}: {action.message}")
        elif isinstance(action, sv.Stopped):
            self.banner.emit(f"Disconnected: {action.message}")
            if action.reason == sv.StopReason.BAD_PASSWORD and self.bookmark is not None:
                self.password_needed.emit(self.bookmark.label or self.bookmark.key, action.message)
        elif isinstance(action, sv.RestoreSkipped):
            self.message.emit("warning", f"could not rejoin {action.channel_name}: {action.why}")

    @Slot(int, str)
    def _on_text_failed(self, channel_id: int, why: str) -> None:
        if self._stale():
            return
        self.text_not_sent.emit(channel_id, why)

    @Slot(int, str)
    def _on_text_sent(self, channel_id: int, text: str) -> None:
        if self._stale():
            return
        me = self.model.my_name or self.prefs.username
        self.text_sent.emit(channel_id, text)
        self.text_received.emit(channel_id, me, text, int(time.time() * 1000), True)

    def _append_key_holder_log(self, event: e2ee.KeyHolderNotice, line: str) -> None:
        """The same line, with the date, server and channel, in ``key-holders.log`` in the data
        directory: a record that outlives the window and the chat history (public facts only:
        names, trust, the first bytes of public identity keys). Kept under 1 MB: the previous
        megabyte moves to ``key-holders.log.1``."""
        path = self.data_dir / KEY_HOLDER_LOG
        channel = self.model.channel_name(event.channel_id) or f"channel {event.channel_id}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.at_ms / 1000))
        record = f"{when} {self.server_key or '?'} #{channel} {line}\n"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > KEY_HOLDER_LOG_MAX:
                path.replace(path.with_name(KEY_HOLDER_LOG + ".1"))
            with path.open("a", encoding="utf-8") as log_file:
                log_file.write(record)
        except OSError as exc:
            log.warning("cannot append to %s: %s", path, exc)

    def _key_holder_notice(self, event: e2ee.KeyHolderNotice) -> None:
        """A change of who holds our keys: a lasting line in that channel's conversation, and
        an alert when a key is not the one pinned for that person."""
        text = key_holder_line(event)  # the chat stamps its own time on the line
        self.chat_notice.emit(event.channel_id, text)
        self._append_key_holder_log(event, text)
        for holder in event.holders:
            if event.change in {"verified", "unverified"}:
                continue
            warned = (holder.sender_id, holder.trust)
            if warned in self._key_warned:
                continue  # once per member and connection, not once per channel
            if holder.trust in {"changed", "blocked"}:
                self._key_warned.add(warned)
            if holder.trust == "changed":
                self.message.emit(
                    "warning",
                    f"{holder.name}'s identity key changed since you last saw them. Compare "
                    "safety numbers before trusting what they say.",
                )
            elif holder.trust == "blocked":
                self.message.emit(
                    "error",
                    f"{holder.name}'s identity key changed after you verified it: their voice "
                    "and messages are blocked until you verify the new key.",
                )

    def _wake_playback(self) -> None:
        """Connection thread: voice is in the inbox; the current playback worker takes it now
        (its arrival time feeds the jitter estimate) instead of at its next output frame."""
        pipeline = self.pipeline  # one read: a rebuild may replace it meanwhile
        if pipeline is not None:
            pipeline.playback.wake()

    def _redundancy_to_capture(self, level: Any) -> None:
        """The connection's thread: the redundancy listeners ask of us, into the current capture
        worker's latest-value slot (an attribute write; a rebuilt pipeline reads it anew)."""
        pipeline = self.pipeline
        if pipeline is not None:
            pipeline.capture.level = level

    # -- polling -------------------------------------------------------------------------------
    def _poll(self) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            return
        if self.output_missing:
            # no output device (the null engine, or an input-only one): discard what the
            # playback worker mixed so it keeps running (talking marks, settings commands)
            # instead of waiting for a device that never takes the samples
            pipeline.engine.playback.discard()
        me = self.model.me
        talking = set(pipeline.playback.talking)
        if me is not None and not self.muted:
            talking.update((me, c) for c in pipeline.capture.talking_channels)
        if self.model.set_talking(talking):
            self.model_changed.emit()
        level_in = pipeline.capture.input_level.peak_dbfs
        level_out = pipeline.playback.output_level.peak_dbfs
        self.levels.emit(
            level_in, level_out, pipeline.capture.speaking, pipeline.capture.speech_probability
        )

    # -- local server ----------------------------------------------------------------------------
    def start_local_server(self, *, shared: bool | None = None) -> tuple[Bookmark, str]:
        """Start the embedded relay and return its bookmark (always over loopback) and pin.
        ``shared``: listen on every interface (hosting for friends: the user opted in) or on
        loopback only; a running server on the other side is restarted on the same port and
        data (same pin; our connection reconnects by itself). None keeps what runs. Raises
        EmbeddedServerError with the reason."""
        from voipclient.server.embedded import EmbeddedServer, EmbeddedServerError

        running = self.local_server
        if running is not None and shared is not None and _is_shared(running) != shared:
            port = running.address.port if running.address is not None else LOCAL_PORT
            running.stop()
            self.local_server = running = None
        else:
            port = LOCAL_PORT
        if running is None:
            host = "0.0.0.0" if shared else "127.0.0.1"  # noqa: S104 - the user chose to share
            server = EmbeddedServer(self.data_dir / "local-server", host=host, port=port)
            try:
                server.start()
            except EmbeddedServerError:
                server = EmbeddedServer(self.data_dir / "local-server", host=host, port=0)
                server.start()
            self.local_server = server
        address = self.local_server.address
        assert address is not None
        return Bookmark("Local server", "127.0.0.1", address.port), address.pin

    def invite_conflict(self, invite: Any) -> str | None:
        """Why an invite link must not be used as it is: it names another key for a server
        whose key we already trust (pinned on first contact, or from an earlier link). A link
        must never silently replace a trusted key: that is what an impostor's link would do."""
        from voipclient.net.pins import server_key

        key = server_key(invite.host, invite.port)
        known: set[str] = set()
        stored = self.pin_file.load().get(key)
        if stored:
            known.add(stored)
        for b in self.prefs.bookmarks:
            if b.pin and server_key(b.host, b.port) == key:
                known.add(b.pin)
        if known and invite.pin not in known:
            return (
                f"This invite link gives {key} a different key than the one you already trust "
                "for that server. Someone may be impersonating it. If its owner really changed "
                "the server's key, ask them how, then remove the saved server and open the "
                "link again."
            )
        return None

    def remember_invite(self, invite: Any) -> Bookmark:
        """Save the server an invite link names, with its pin (refuse first with
        :meth:`invite_conflict`). Returns the bookmark to connect with."""
        from voipclient.net.pins import server_key

        key = server_key(invite.host, invite.port)
        marks = list(self.prefs.bookmarks)
        found = next((i for i, b in enumerate(marks) if server_key(b.host, b.port) == key), None)
        if found is None:
            mark = Bookmark(invite.host, invite.host, invite.port, pin=invite.pin)
            marks.append(mark)
        else:
            mark = replace(marks[found], pin=invite.pin)
            marks[found] = mark
        self.apply_prefs(replace(self.prefs, bookmarks=tuple(marks)))
        return mark


LOCAL_PORT = 64738


def _is_shared(server: Any) -> bool:
    """The embedded server listens beyond loopback (hosting for friends)."""
    return str(server.settings.host) not in ("127.0.0.1", "::1", "localhost")


#: Who held which channel's keys, when (data directory); rotated past this many bytes.
KEY_HOLDER_LOG = "key-holders.log"
KEY_HOLDER_LOG_MAX = 1_000_000


def _audio_problem(failures: dict[str, str], working: str) -> str:
    """The status bar's words for what failed at an open ("" when nothing did)."""
    if not failures:
        return ""
    if working:
        lost = "microphone" if working == "speakers" else "speakers"
        why = failures.get(lost, failures.get("microphone and speakers", ""))
        verb = "works" if working == "microphone" else "work"
        return (
            f"The {lost} could not be opened ({why}); the {working} {verb}. Choose another "
            "device in Settings → Audio."
        )
    why = failures.get("microphone and speakers", "") or "; ".join(failures.values())
    return f"No audio device could be opened: {why} Choose a device in Settings → Audio."


def _engine_sides(engine: AudioEngine | None) -> str:
    """Which sides of a started engine work: "microphone and speakers", one of them, or ""."""
    if engine is None or isinstance(engine, NullEngine):
        return ""
    has_in = getattr(engine, "input_device", None) is not None
    has_out = getattr(engine, "output_device", None) is not None
    if has_in and has_out:
        return "microphone and speakers"
    return "microphone" if has_in else ("speakers" if has_out else "")


def key_holder_line(event: e2ee.KeyHolderNotice) -> str:
    """The conversation line for a change of key holders (plain text, names as pinned)."""
    people = ", ".join(f"{h.name} ({_trust_words(h)})" for h in event.holders if h.trust != "me")
    what = {
        "present": "Key holders here",
        "joined": "Now holds this channel's keys",
        "left": "No longer holds new keys",
        "verified": "Verified",
        "unverified": "No longer verified",
    }.get(event.change, event.change)
    return f"{what}: {people}"


def _trust_words(holder: e2ee.KeyHolder) -> str:
    words = {
        "verified": "verified",
        "tofu": "not verified",
        "changed": "KEY CHANGED",
        "blocked": "KEY CHANGED after verification, blocked",
    }.get(holder.trust, holder.trust)
    if holder.new_key and holder.trust == "tofu":
        words = "new key, not verified"
    return f"{words}, key {holder.ik_pub[:4].hex()}"


def stats_text(stats: ConnectionStats) -> str:
    """The status bar's link summary."""
    parts = ["UDP" if stats.transport == "udp" else "TLS fallback (UDP blocked)"]
    if stats.rtt_ms is not None:
        parts.append(f"ping {stats.rtt_ms:.0f} ms")
    if stats.loss is not None:
        parts.append(f"loss {stats.loss * 100:.0f} %")
    parts.append(f"↑ {stats.kbps_out:.0f} kb/s ↓ {stats.kbps_in:.0f} kb/s")
    return " · ".join(parts)
