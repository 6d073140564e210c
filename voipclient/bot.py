"""``voipclient-bot``: a headless client on the same core as the desktop app.

It is an asyncio driver of the client core users run,
:class:`~voipclient.net.connection.ClientConnection`, which decides the pin verdict (the SPKI pin
from ``--pin``, or trust on first use), the login with a fresh identity, the end-to-end layer,
the UDP hop handshake, the UDP ↔ TLS-tunnel switching (re-probing UDP while on the tunnel),
reconnects with restored memberships and the redundancy policy. The I/O (a TLS transport, a UDP
socket read from the loop, one timer re-armed from ``get_timer()``) is the shared asyncio
adapter's, :class:`~voipclient.client.asyncio_driver.AsyncioConnection`; the bot runs the real
voice path on an audio engine: a WAV file as microphone (``--play``) and a WAV file as speaker
(``--record``), or real sound devices (``--input-device`` / ``--output-device``)::

    capture ring ─► CaptureProcessor (VAD) ─► PttRouter ─► TransmitGate ─► VoiceSender (Opus
    once) ─► ClientConnection.send_voice ─► UDP/tunnel ─► relay ─► UDP/tunnel ─►
    VoiceReceived ─► VoicePlayback (jitter buffer, FEC/copies/concealment, mixer) ─► playback ring

Who hears the bot is the push-to-talk router's decision, as in the desktop app: the ``--talk``
channels are its hot mic, ``continuous`` or (``--voice-activation``) ``voice_activation``, and
each frame's VAD decision is fed to it (:meth:`PttRouter.set_vad`; the bot owns the router on its
one thread, so no lock and no slot are needed).

Receivers' loss reports go back to each speaker over the control channel; the speaker's core
turns them into a redundancy level (``RedundancyChanged``) for the Opus loss hint and the copies
of earlier frames.

Everything runs on one asyncio loop: the workers are a few hundred microseconds per frame, and a
bot has no UI to keep responsive. A connection lost after login is re-established by the core
(memberships restored; one line on stderr says so). Exit status: 0 on success, 1 for a failure to
connect, log in, join or decrypt, a refused key or a closed connection (one line on stderr says
which), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from voipclient import __version__
from voipclient.audio.cues import CueKind, CuePlayer
from voipclient.audio.dsp import BACKENDS, CaptureProcessor, CaptureSettings
from voipclient.audio.engine import AudioEngine, DeviceEvent
from voipclient.audio.file_engine import FileEngine
from voipclient.audio.mixer import Mixer
from voipclient.audio.opus import OpusDecoder, OpusEncoder, copy_encoder_factory, frame_samples
from voipclient.audio.realtime import realtime
from voipclient.audio.redundancy import (
    DEFAULT_POLICY,
    LEGACY,
    PolicyConfig,
    RedundancyLevel,
    bitrate_cost,
)
from voipclient.audio.voice import TransmitGate, VoicePlayback, VoiceSender
from voipclient.client.asyncio_driver import AsyncioConnection, client_ssl_context
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keylog import KEYLOG_ENV
from voipclient.crypto.media import VoiceFrame
from voipclient.net import connection as cn
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import supervisor as sv
from voipclient.net.roster import ChannelNotFound, find_channel
from voipclient.net.states import ConnectionState
from voipclient.ptt.router import Mode, PttRouter
from voipclient.storage.keylog import keylog_from_environment
from voipclient.storage.paths import PathMemoryFile

log = logging.getLogger("voipclient.bot")

CONNECT_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 10.0
KEY_TIMEOUT_S = 10.0
#: --redundancy choices
POLICIES: dict[str, PolicyConfig] = {"adaptive": DEFAULT_POLICY, "legacy": LEGACY}


class BotError(Exception):
    """A failure the bot reports as one line and exit status 1."""


# --- the TLS part -------------------------------------------------------------------------------


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--server must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


# --- the bot -----------------------------------------------------------------------------------


@dataclass
class BotOptions:
    host: str
    port: int
    pin: str | None  # None: trust on first use
    name: str
    join: list[str]
    talk: list[str]
    play: Path | None = None
    record: Path | None = None
    input_device: str | None = None
    output_device: str | None = None
    seconds: float | None = None
    frame_ms: int = 20
    bitrate: int = 32_000
    tunnel: bool = False  # voice over the TLS connection instead of UDP
    password: str | None = None
    release_ms: float = 200.0
    start_delay_s: float = 0.0  # wait this long after joining before the audio starts
    local_ip: str | None = None
    udp_addr: tuple[str, int] | None = None  # voice to this address instead (a test proxy)
    highpass: bool = True
    noise_suppression: str = "off"  # a key of voipclient.audio.dsp.BACKENDS
    agc: bool = False
    voice_activation: bool = False  # transmit only while the VAD hears speech (+ release)
    cues: bool = False  # play the push-to-talk start/stop cues into our own output
    #: the redundancy policy: "adaptive" (compact copies, cold start, congestion control) or
    #: "legacy" (milestone 1: full copies, nothing until the first reports; for comparison)
    redundancy: str = "adaptive"
    path_memory: Path | None = None  # remember what we learned of the server's path here


@dataclass
class BotStats:
    frames_sent: int = 0
    datagrams_sent: int = 0
    payload_bytes_sent: int = 0
    datagrams_received: int = 0
    voice_opened: int = 0
    frames_rendered: int = 0
    reports_sent: int = 0
    reports_received: int = 0
    level_changes: list[dict[str, Any]] = field(default_factory=list)
    device_events: list[dict[str, str]] = field(default_factory=list)
    scheduling: str = ""  # how the loop's thread ran while audio moved (real-time if allowed)


class VoiceBot:
    """One headless user. ``await bot.run()`` does everything the options say.

    The connection itself (pin verdict, login, E2E keys, UDP hop handshake and re-probing, the
    UDP ↔ tunnel decision, reconnects, the redundancy policy) is the client core's,
    :class:`~voipclient.net.connection.ClientConnection`, driven through
    :class:`~voipclient.client.asyncio_driver.AsyncioConnection` (a TLS transport, a UDP socket
    read from the loop, one timer re-armed from ``get_timer()``); this class adds the audio side,
    the command line's choices and the statistics.
    """

    def __init__(
        self,
        options: BotOptions,
        *,
        engine_factory: Callable[[BotOptions], AudioEngine] | None = None,
        identity: IdentityKey | None = None,
    ) -> None:
        self.o = options
        self.stats = BotStats()
        #: set by :meth:`request_stop` (SIGTERM): the audio loop ends at its next frame, as if
        #: --seconds had run out (the recording and the statistics are written as usual)
        self.stop_requested = False
        self.identity = identity or IdentityKey.generate()
        # PROTOCOL §7: keys go to a file only when VOIPCLIENT_KEYLOGFILE asks for it.
        self.keylog = keylog_from_environment(os.environ)
        if self.keylog is not None:
            log.warning(
                "%s is set: every media key and hop secret of this bot is written to %s",
                KEYLOG_ENV,
                os.environ[KEYLOG_ENV],
            )
        if options.redundancy not in POLICIES:
            raise BotError(f"redundancy must be one of {', '.join(POLICIES)}")
        self.conn = cn.ClientConnection(
            options.name,
            self.identity,
            wall_clock=time.time,
            password=options.password,
            keylog=self.keylog,
            redundancy=replace(
                POLICIES[options.redundancy], bitrate=options.bitrate, frame_ms=options.frame_ms
            ),
        )
        self._server_key = f"{options.host}:{options.port}"
        self._paths = PathMemoryFile(options.path_memory) if options.path_memory else None
        if self._paths is not None:
            self.conn.set_path_memory(self._paths.recall(self._server_key))
        self._engine_factory = engine_factory or default_engine
        self.engine: AudioEngine | None = None
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.io = AsyncioConnection(
            self.conn,
            on_event=self._carry_out,
            on_pumped=self._changed.set,
            ssl_context=client_ssl_context(),
            loop=self._loop,
            local_ip=options.local_ip,
            udp_addr=options.udp_addr,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
        self._sid: int | None = None
        self._failure: str | None = None  # why the first connection could not be made
        self._transport = cn.VoiceTransport.TUNNEL if options.tunnel else cn.VoiceTransport.UDP
        self.channel_ids: list[int] = []
        self.talk_ids: list[int] = []
        n = frame_samples(options.frame_ms)
        self.mixer = Mixer(frame_samples=n)
        legacy = options.redundancy == "legacy"
        self.playback = VoicePlayback(
            self.mixer,
            lambda: OpusDecoder(frame_ms=options.frame_ms),
            frame_ms=options.frame_ms,
            fast_reports=not legacy,
        )
        self.sender = VoiceSender(
            OpusEncoder(frame_ms=options.frame_ms, bitrate=options.bitrate),
            first_frame_no=int.from_bytes(os.urandom(4), "big"),
            copy_encoder=None if legacy else copy_encoder_factory(options.frame_ms),
        )
        self.sender.set_bitrate(options.bitrate)
        #: who hears us: the --talk channels are the hot mic (set once they are resolved)
        self.router = PttRouter(
            mode=Mode.VOICE_ACTIVATION if options.voice_activation else Mode.CONTINUOUS
        )
        self.gate = TransmitGate(options.release_ms)
        self.cues = CuePlayer(n)
        self.cues_played = 0
        self.capture = CaptureProcessor(
            CaptureSettings(
                highpass=options.highpass,
                noise_suppression=options.noise_suppression,
                agc=options.agc,
            ),
            frame_size=n,
        )
        if self.capture.ns_status.reason:
            print(f"voipclient-bot: {self.capture.ns_status.reason}", file=sys.stderr)
        self._frame = np.zeros(n, dtype=np.int16)
        self._out = np.zeros(n, dtype=np.int16)
        self._names: dict[int, str | None] = {}  # speakers heard (kept after they leave)
        self._t0 = self._loop.time()  # s: start of the audio (for the statistics' times)

    @property
    def secure(self) -> e2ee.SecureSession | None:
        """The core's E2E layer of the current connection (for inspection)."""
        return self.conn.secure

    @property
    def sid(self) -> int | None:
        """Our sender id of the latest login."""
        return self._sid

    # -- driving the core --------------------------------------------------------------------------

    @property
    def udp_errors(self) -> int:
        """Datagrams the UDP socket could not send or receive."""
        return self.io.udp_errors

    def _carry_out(self, event: cn.Event) -> None:
        now = self._loop.time()
        if isinstance(event, cn.VoiceReceived):
            self._voice_frame(event.frame)
        elif isinstance(event, cn.PinApprovalNeeded):
            # Only without --pin (trust on first use): the presented key is accepted.
            print(f"voipclient-bot: trusting {event.host}:{event.port} pin={event.pin}")
            self.conn.approve_pin(event.pin, True, now)
        elif isinstance(event, cn.RedundancyChanged):
            self._apply_level(event.level, now)
        elif isinstance(event, cn.TransportChanged):
            self._transport = event.transport
        elif isinstance(event, ev.LoggedIn):
            self._sid = event.sender_id
        elif isinstance(event, ev.LossReportReceived):
            self.stats.reports_received += 1
        elif isinstance(event, ev.UserLeft):
            self.playback.forget_sender(event.user.sender_id)
        elif isinstance(event, ev.ServerError):
            log.warning("server error: %s", event)
        elif isinstance(event, sv.Stopped) and event.reason is sv.StopReason.UNREACHABLE:
            self._failure = event.message  # never reached: the reason and what to check
        elif isinstance(event, sv.ReconnectScheduled):
            if self._sid is None and self._failure is None:
                # The first connection failed: a bot reports it rather than retrying.
                self._failure = event.why
            else:
                print(
                    f"voipclient-bot: connection lost ({event.why}); reconnecting in "
                    f"{event.delay:.1f} s",
                    file=sys.stderr,
                )
        elif isinstance(event, sv.RestoreSkipped):
            print(f"voipclient-bot: not back in {event.channel_name}: {event.why}", file=sys.stderr)

    def _fatal(self) -> str | None:
        """Why the bot cannot go on, or None."""
        state, conn = self.conn.state, self.conn
        if self._failure is not None:
            return f"cannot connect to {self.o.host}:{self.o.port}: {self._failure}"
        if state is ConnectionState.REFUSED:
            presented = conn.presented_pin
            if presented is not None and conn.expected_pin not in (None, presented):
                return (
                    f"server key mismatch: {conn.host}:{conn.port} presented {presented}, "
                    f"expected {conn.expected_pin}; refusing to connect"
                )
            return conn.detail
        if state is ConnectionState.CLOSED:
            return f"connection closed: {conn.detail}"
        return None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = self._loop.time() + timeout
        while not predicate():
            fatal = self._fatal()
            if fatal is not None:
                raise BotError(fatal)
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise BotError(f"timed out after {timeout:.0f} s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # -- connecting --------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and log in (the core checks the pin before any application byte)."""
        if self.o.tunnel:
            self.io.call(lambda now: self.conn.set_force_tunnel(True, now))
        self.io.call(lambda now: self.conn.connect(self.o.host, self.o.port, self.o.pin, now))
        await self.wait_for(lambda: self.conn.sender_id is not None, CONNECT_TIMEOUT_S, "login")

    async def bind_udp(self) -> bool:
        """Until the core validated our UDP address (it starts by itself at login); False when
        it moved voice to the TLS tunnel instead (it keeps re-probing UDP meanwhile)."""
        tunnel = (sv.VoicePath.TUNNEL, sv.VoicePath.TUNNEL_ONLY)
        await self.wait_for(
            lambda: self.conn.udp_bound or self.conn.supervisor.voice_path in tunnel,
            CONNECT_TIMEOUT_S,
            "UDP bind",
        )
        return self.conn.udp_bound

    # -- channels ----------------------------------------------------------------------------------

    def resolve_channels(self, names: Sequence[str]) -> list[int]:
        roster = self.conn.roster
        pairs = [] if roster is None else [(c.id, c.name) for c in roster.channels.values()]
        try:
            return [find_channel(name, pairs) for name in names]
        except ChannelNotFound as exc:
            raise BotError(str(exc)) from None

    async def join_channels(self) -> None:
        self.channel_ids = self.resolve_channels(self.o.join)
        self.talk_ids = self.resolve_channels(self.o.talk)
        missing = set(self.talk_ids) - set(self.channel_ids)
        if missing:
            raise BotError("--talk channels must also be in --join")
        self.router.set_hot_mic(self.talk_ids, self._loop.time())
        for channel_id in self.channel_ids:
            self.conn.join(channel_id, None, self._loop.time())
        self.io.pump()
        await self.wait_for(
            lambda: all(self._is_member(c) for c in self.channel_ids), JOIN_TIMEOUT_S, "join"
        )

    def _is_member(self, channel_id: int) -> bool:
        sid, roster = self.conn.sender_id, self.conn.roster
        return sid is not None and roster is not None and channel_id in roster.channels_of(sid)

    def _keys_ready(self) -> bool:
        """We hold a key for every talk channel and every other member there holds ours."""
        sec = self.secure
        if sec is None or sec.scheduler is None:
            return False
        return all(sec.scheduler.is_open(c) for c in self.talk_ids)

    # -- voice in ----------------------------------------------------------------------------------

    def _voice_frame(self, frame: VoiceFrame) -> None:
        self.stats.voice_opened += 1
        if frame.sender_id not in self._names:
            roster = self.conn.roster
            user = None if roster is None else roster.users.get(frame.sender_id)
            self._names[frame.sender_id] = None if user is None else user.name
        self.playback.push(
            frame.sender_id, frame.channel_id, frame.payload, frame.last, self._loop.time()
        )

    def _apply_level(self, level: RedundancyLevel, now: float) -> None:
        if level != self.sender.level:
            self.sender.set_level(level)
            self.stats.level_changes.append(
                {
                    "t": round(now - self._t0, 3),
                    "hint": level.loss_hint_percent,
                    "distances": list(level.distances),
                    "copy_bitrate": level.copy_bitrate,
                    "bitrate_cap": level.bitrate_cap,
                    "extra_bps": bitrate_cost(level, self.o.bitrate, self.o.frame_ms),
                }
            )

    # -- the frame clock ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """End the run at the next frame, normally (SIGTERM): for a listener that should record
        until someone else is done rather than for a fixed time."""
        self.stop_requested = True

    async def run_audio(self, seconds: float | None) -> None:
        """Move audio until ``seconds`` passed (or the --play file ended, plus 1 s of tail), with
        the loop's thread real-time meanwhile where the system allows it (a CPU hog beside the
        bot must not make its frames late: :mod:`voipclient.audio.realtime`)."""
        with realtime() as promotion:
            self.stats.scheduling = str(promotion)
            await self._move_audio(seconds)

    async def _move_audio(self, seconds: float | None) -> None:
        engine = self.engine
        assert engine is not None
        channels = getattr(engine, "output_channels", 1)  # a device engine plays stereo frames
        if self.mixer.output_channels != channels:
            self.mixer.set_output_channels(channels)
            self._out = np.zeros(engine.frame_samples * channels, dtype=np.int16)
        period = engine.frame_samples / engine.sample_rate
        n = engine.frame_samples  # capture ring samples per frame (mono)
        out_n = n * channels  # playback ring samples per frame
        start = self._loop.time()
        self._t0 = start
        if isinstance(engine, FileEngine):
            engine.start(start)
        else:
            engine.start()
        end_at = None if seconds is None else start + seconds
        tail_until: float | None = None
        k = 0
        while True:
            k += 1
            deadline = start + k * period
            delay = deadline - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = self._loop.time()
            # Render first: the frame mixed at ``now`` is the one the engine takes in this tick
            # (rendering after the engine's tick would park every frame a whole frame in the
            # playback ring). A device engine takes it at its next callback.
            while engine.playback.available < out_n:
                self.playback.render_into(self._out, now)
                self.cues.mix_into(self._out, channels)
                engine.playback.write(self._out)
                self.stats.frames_rendered += 1
            if isinstance(engine, FileEngine):
                engine.tick(now)
            poll = getattr(engine, "poll", None)
            if poll is not None and k % 10 == 0:
                for event in poll(now):
                    self._device_event(event)
            while engine.capture.available >= n:
                engine.capture.read_into(self._frame)
                self._capture_frame(now)
            reports = self.playback.loss_reports(now)
            if reports and self.conn.state is ConnectionState.READY:
                self.conn.send_loss_reports(reports, now)
                self.io.pump()
                self.stats.reports_sent += len(reports)
            fatal = self._fatal()
            if fatal is not None:
                raise BotError(fatal)
            if self.stop_requested or (end_at is not None and now >= end_at):
                break
            if end_at is None and isinstance(engine, FileEngine) and engine.input_exhausted:
                tail_until = tail_until or now + 1.0
                if now >= tail_until:
                    break
        self._finish_talking(self._loop.time())

    def _capture_frame(self, now: float) -> None:
        processed = self.capture.process(self._frame)
        self.router.set_vad(processed.is_speech, now)  # the VAD is one of the router's inputs
        decision = self.gate.update(self.router.wanted(now), now)
        if self.o.cues and (decision.started or decision.stopped):
            self.cues.trigger(CueKind.START if decision.started else CueKind.STOP)
            self.cues_played += 1
        if not decision.sending:
            self.sender.skip()
            return
        payload = self.sender.encode(processed.frame)
        self._send_voice(decision.targets, decision.ending, payload, now)
        self.stats.frames_sent += 1
        self.stats.payload_bytes_sent += len(payload)

    def _finish_talking(self, now: float) -> None:
        """End every transmission with a VOICE_LAST frame of silence."""
        if not self.gate.active:
            return
        self._frame.fill(0)
        payload = self.sender.encode(self._frame)
        self._send_voice((), sorted(self.gate.active), payload, now)
        for channel in list(self.gate.active):
            self.gate.drop(channel)

    def _send_voice(
        self, targets: Sequence[int], ending: Sequence[int], payload: bytes, now: float
    ) -> None:
        """The core seals for each channel and sends by the path it chose (UDP or tunnel)."""
        before = self.conn.datagrams_out
        self.conn.send_voice(targets, ending, payload, now)
        self.stats.datagrams_sent += self.conn.datagrams_out - before
        self.io.pump()

    def _device_event(self, event: DeviceEvent) -> None:
        self.stats.device_events.append({"kind": event.kind, "message": event.message})
        if event.kind not in {"started", "stopped", "eof"}:
            print(f"voipclient-bot: audio device {event.kind}: {event.message}", file=sys.stderr)

    # -- whole run ------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.connect()
        await self.join_channels()
        if not self.o.tunnel and not await self.bind_udp():
            print("voipclient-bot: UDP gets no answer; voice goes over TLS", file=sys.stderr)
        if self.talk_ids:
            await self.wait_for(self._keys_ready, KEY_TIMEOUT_S, "sender keys")
        if self.o.start_delay_s > 0:
            await asyncio.sleep(self.o.start_delay_s)
        self.engine = self._engine_factory(self.o)
        self.engine.on_event = self._device_event
        try:
            await self.run_audio(self.o.seconds)
        finally:
            if self._paths is not None:
                self._paths.remember(self._server_key, self.conn.path_memory(self._loop.time()))
            self.engine.stop()
            close = getattr(self.engine, "close", None)
            if close is not None:
                close()
            self.capture.close()
        self.check_decrypt()

    def check_decrypt(self) -> None:
        """Voice that arrived but none of it opened is a failure to decrypt."""
        received = self.conn.datagrams_in
        if received and not self.stats.voice_opened:
            raise BotError(
                f"could not decrypt any of {received} voice datagrams ({self.drop_summary()})"
            )

    def drop_summary(self) -> str:
        receiver = None if self.secure is None else self.secure.receiver
        if receiver is None:
            return "no receiver"
        drops = {r.name.lower(): c for r, c in receiver.drop_counts().items() if c}
        return ", ".join(f"{k}={v}" for k, v in drops.items()) or "no drops"

    def stats_dict(self) -> dict[str, Any]:
        receiver = None if self.secure is None else self.secure.receiver
        drops = (
            {}
            if receiver is None
            else {r.name.lower(): c for r, c in receiver.drop_counts().items()}
        )
        streams = []
        for s in self.playback.stats().streams:
            j = s.jitter
            streams.append(
                {
                    "sender_id": s.sender_id,
                    "name": self._user_name(s.sender_id),
                    "received": j.received,
                    "played": j.played,
                    "fec_recovered": j.fec_recovered,
                    "recovered_from_copies": j.recovered,
                    "concealed": j.concealed,
                    "late": j.late,
                    "duplicate": j.duplicate,
                    "reordered": j.reordered,
                    "dropped": j.dropped,
                    "current_delay_ms": round(j.current_delay_ms, 1),
                    "mean_delay_ms": round(j.mean_delay_ms, 1),
                    "target_delay_ms": round(j.target_delay_ms, 1),
                    "decoded": s.decoded,
                    "redundancy_depth": s.redundancy_depth,
                }
            )
        engine_stats = self.engine.stats() if self.engine is not None else None
        seconds = max(1e-9, self.stats.frames_rendered * self.o.frame_ms / 1000)
        return {
            "name": self.o.name,
            "sender_id": self.sid,
            "transport": self._transport.value,
            "frame_ms": self.o.frame_ms,
            "bitrate": self.o.bitrate,
            "scheduling": self.stats.scheduling,
            "frames_sent": self.stats.frames_sent,
            "datagrams_sent": self.stats.datagrams_sent,
            "payload_bits_per_s": round(self.stats.payload_bytes_sent * 8 / seconds),
            "datagrams_received": self.conn.datagrams_in,
            "voice_opened": self.stats.voice_opened,
            "malformed_payloads": self.playback.malformed,
            "decrypt_drops": drops,
            "frames_rendered": self.stats.frames_rendered,
            "cues_played": self.cues_played,
            "loss_reports_sent": self.stats.reports_sent,
            "loss_reports_received": self.stats.reports_received,
            "redundancy_level_changes": self.stats.level_changes,
            "redundancy_policy": self.o.redundancy,
            "congestion_events": self.conn.redundancy_policy.congestion_events,
            "copy_bits_per_s": round(self.sender.copy_bytes_out * 8 / seconds),
            "output_level_dbfs": [None if math.isinf(x) else round(x, 1) for x in self.mixer.level],
            "streams": streams,
            "engine": None
            if engine_stats is None
            else {
                "overruns": engine_stats.overruns,
                "underruns": engine_stats.underruns,
                "frames_in": engine_stats.frames_in,
                "frames_out": engine_stats.frames_out,
            },
            "device_events": self.stats.device_events,
            "udp_errors": self.udp_errors,
        }

    def _user_name(self, sender_id: int) -> str | None:
        return self._names.get(sender_id)

    async def close(self) -> None:
        """Say Bye (the core writes it with its CloseTransport), wait up to 2 s for the server
        to close its end, and stop the timer and sockets."""
        await self.io.close()


def default_engine(o: BotOptions) -> AudioEngine:
    """Sound devices when one is named, else WAV files (a missing side is silence/discarded)."""
    n = frame_samples(o.frame_ms)
    if o.input_device is not None or o.output_device is not None:
        from voipclient.audio.sd_engine import SoundDeviceEngine

        engine: AudioEngine = SoundDeviceEngine(
            input_device=_device_arg(o.input_device),
            output_device=_device_arg(o.output_device),
            frame_samples=n,
            input_enabled=o.input_device is not None,
            output_enabled=o.output_device is not None,
        )
        return engine
    return FileEngine(o.play, o.record, realtime=True, frame_samples=n)


def _device_arg(text: str | None) -> int | str | None:
    if text is None or text == "default":
        return None
    return int(text) if text.isdigit() else text


# --- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voipclient-bot",
        description="Headless voipclient: join channels, talk from a WAV file, record what it "
        "hears, report statistics.",
    )
    p.add_argument("--version", action="version", version=f"voipclient-bot {__version__}")
    p.add_argument("--server", required=True, metavar="HOST:PORT")
    trust = p.add_mutually_exclusive_group(required=True)
    trust.add_argument("--pin", metavar="sha256/...", help="the server's key pin (start line)")
    trust.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="accept the key the server presents (printed), for tests on a trusted network",
    )
    p.add_argument("--name", default="bot")
    p.add_argument("--password", default=None, help="server password (or VOIPCLIENT_PASSWORD)")
    p.add_argument("--join", default="", metavar="A,B", help="channels to be a member of")
    p.add_argument("--talk", default="", metavar="A", help="channels to transmit to (⊆ --join)")
    p.add_argument("--play", type=Path, help="WAV (48 kHz mono 16-bit) used as the microphone")
    p.add_argument("--record", type=Path, help="WAV file the mixed output is written to")
    p.add_argument("--input-device", help="capture from this sound device (name or index)")
    p.add_argument("--output-device", help="play to this sound device (name or index)")
    p.add_argument(
        "--seconds",
        type=float,
        help="run this long (default: to the end of --play); SIGTERM ends the run early, normally",
    )
    p.add_argument("--stats-json", type=Path, help="write statistics here at the end")
    p.add_argument("--frame-ms", type=int, choices=(10, 20), default=20)
    p.add_argument("--bitrate", type=int, default=32_000, help="Opus bitrate, 16000-128000")
    p.add_argument("--tunnel", action="store_true", help="send voice over TLS, not UDP")
    p.add_argument("--udp-via", metavar="HOST:PORT", help=argparse.SUPPRESS)  # a lossy proxy
    p.add_argument(
        "--noise-suppression", choices=sorted(BACKENDS), default="off", help="capture NS backend"
    )
    p.add_argument("--agc", action="store_true", help="automatic gain control on the capture")
    p.add_argument(
        "--cues", action="store_true", help="play push-to-talk start/stop cues to our own output"
    )
    p.add_argument("--no-highpass", action="store_true", help="no 80 Hz high-pass on capture")
    p.add_argument(
        "--voice-activation",
        action="store_true",
        help="transmit only while voice is detected (then --release-ms more)",
    )
    p.add_argument("--release-ms", type=float, default=200.0)
    p.add_argument(
        "--redundancy",
        choices=tuple(POLICIES),
        default="adaptive",
        help="loss protection: adaptive (default) or legacy (milestone 1, for comparison)",
    )
    p.add_argument(
        "--path-memory", type=Path, help="JSON file remembering each server's path (loss, rate)"
    )
    p.add_argument(
        "--start-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="start the audio (and --seconds) this long after joining",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> BotOptions:
    host, port = parse_server(args.server)
    join = [c for c in args.join.split(",") if c]
    talk = [c for c in args.talk.split(",") if c]
    if args.play is not None and args.input_device is not None:
        raise ValueError("--play and --input-device both give a microphone; choose one")
    if args.record is not None and args.output_device is not None:
        raise ValueError("--record and --output-device both give a speaker; choose one")
    if args.play is not None and not args.play.is_file():
        raise ValueError(f"--play: no such file: {args.play}")
    if args.seconds is None and args.play is None:
        raise ValueError("give --seconds (or --play, which ends the run when the file ends)")
    if not 16_000 <= args.bitrate <= 128_000:
        raise ValueError("--bitrate must be 16000..128000")
    udp_addr = None
    if args.udp_via:
        via_host, _, via_port = args.udp_via.rpartition(":")
        if not via_host or not via_port.isdigit():
            raise ValueError("--udp-via must be HOST:PORT")
        udp_addr = (via_host, int(via_port))
    return BotOptions(
        host=host,
        port=port,
        pin=None if args.trust_on_first_use else args.pin,
        name=args.name,
        join=join,
        talk=talk,
        play=args.play,
        record=args.record,
        input_device=args.input_device,
        output_device=args.output_device,
        seconds=args.seconds,
        frame_ms=args.frame_ms,
        bitrate=args.bitrate,
        tunnel=args.tunnel,
        udp_addr=udp_addr,
        password=args.password or os.environ.get("VOIPCLIENT_PASSWORD"),
        release_ms=args.release_ms,
        redundancy=args.redundancy,
        path_memory=args.path_memory,
        start_delay_s=args.start_delay,
        highpass=not args.no_highpass,
        noise_suppression=args.noise_suppression,
        agc=args.agc,
        voice_activation=args.voice_activation,
        cues=args.cues,
    )


async def run_bot(options: BotOptions, stats_json: Path | None = None) -> dict[str, Any]:
    bot = VoiceBot(options)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals on Windows loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, bot.request_stop)
    try:
        await bot.run()
    finally:
        stats = bot.stats_dict()
        if stats_json is not None:
            stats_json.write_text(json.dumps(stats, indent=2) + "\n")
        await bot.close()
    return stats


async def _run_and_close(bot: VoiceBot, delay: float) -> dict[str, Any]:
    await asyncio.sleep(delay)
    try:
        await bot.run()
    finally:
        stats = bot.stats_dict()
        await bot.close()
    return stats


async def listen_while_talking(
    listener: VoiceBot, talker: VoiceBot, *, talker_delay: float = 0.3, tail_s: float = 0.5
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run two in-process bots, the talker ``talker_delay`` after the listener, and stop the
    listener ``tail_s`` after the talker ended (its jitter buffer's delay is well under that):
    a recording then holds the whole speech however long the talker took to log in, which a
    fixed ``seconds`` for the listener cannot promise on a loaded machine. Their statistics."""

    async def talk_then_stop_listener() -> dict[str, Any]:
        try:
            return await _run_and_close(talker, talker_delay)
        finally:
            await asyncio.sleep(tail_s)
            listener.request_stop()

    heard, said = await asyncio.gather(_run_and_close(listener, 0.0), talk_then_stop_listener())
    return heard, said


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    from voipclient.errors import AudioDeviceError

    try:
        stats = asyncio.run(run_bot(options, args.stats_json))
    except BotError as exc:
        print(f"voipclient-bot: {exc}", file=sys.stderr)
        return 1
    except (AudioDeviceError, ValueError, OSError) as exc:
        print(f"voipclient-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    heard = sum(s["played"] for s in stats["streams"])
    print(
        f"voipclient-bot: {options.name}: sent {stats['frames_sent']} frames, "
        f"heard {heard} frames from {len(stats['streams'])} speaker(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
