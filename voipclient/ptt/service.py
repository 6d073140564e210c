"""The router's one owner across threads: hotkey sources, the control socket, the GUI, the capture
worker.

:class:`PttService` holds a :class:`~voipclient.ptt.router.PttRouter` behind a lock. Writers (a
source's thread, the control socket's threads, the GUI thread for bindings, mode, hot mic and
self-mute) take the lock, feed the router, store its :class:`~voipclient.ptt.router.Route` in
the latest-value slot and pass the resulting events to the listeners *while still holding it*,
so every listener sees the changes in order; listeners must be quick (emit a queued Qt signal,
put into a queue).

The capture worker never takes the lock (a busy GUI thread holding it must not stall audio). It
reads :meth:`PttService.route` every frame, a plain attribute holding one immutable
:class:`~voipclient.ptt.router.Route` replaced whole, and applies its own frame's speech decision
with ``route.wanted(is_speech)``: voice activation is the router's rule, evaluated where the
speech decision is made, without a thread hop that would cut the first syllable.

:meth:`PttService.handle_command` implements the control-socket line protocol
(docs/ptt.md): ``press|release|toggle CHANNEL`` and ``status``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable

from voipclient.ptt.events import PttEvent
from voipclient.ptt.router import Binding, Mode, PttConfigError, PttRouter, PttState, Route
from voipclient.ptt.sources import HotkeySource, InputEvent

__all__ = ["ChannelResolver", "PttService", "numeric_channels"]

#: Maps a channel as the user typed it (a name or an id) to a channel id; None or
#: :class:`LookupError` (``ChannelNotFound``, whose message lists the channels) if unknown.
ChannelResolver = Callable[[str], "int | None"]

Listener = Callable[[PttEvent], None]


def numeric_channels(text: str) -> int | None:
    """The default resolver: decimal ids only."""
    return int(text) if text.isdecimal() else None


class PttService:
    """Thread-safe front of the router; the hotkey sources' callback target."""

    def __init__(
        self,
        router: PttRouter,
        *,
        resolve_channel: ChannelResolver = numeric_channels,
        channel_name: Callable[[int], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._resolve = resolve_channel
        self._name = channel_name
        #: control-socket presses by the name they were pressed with (case-folded) → channel
        self._pressed_as: dict[str, int] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._wanted: frozenset[int] = router.wanted(clock())
        self._route: Route = router.route()
        self._sources: list[HotkeySource] = []
        #: called with each new route, right after the slot is written, on the thread that changed
        #: it (hotkeys, control socket, GUI), with the service's lock held: it must not block.
        #: The app starts the microphone there when the route wants it.
        self.on_route: Callable[[Route], None] | None = None

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def _publish(self, events: list[PttEvent]) -> list[PttEvent]:
        # Called with the lock held, after every router call: the route can change without a
        # WantedChanged (voice activation switched on while I am silent). The slot is written
        # before the listeners run, so whoever hears of a change finds the capture side told.
        self._route = route = self._router.route()
        if self.on_route is not None:
            self.on_route(route)
        if events:
            self._wanted = events[-1].after
            for event in events:
                for listener in self._listeners:
                    listener(event)
        return events

    # -- feeding ------------------------------------------------------------------------------

    def on_input(self, event: InputEvent) -> list[PttEvent]:
        """The sources' callback."""
        with self._lock:
            if event.pressed:
                return self._publish(self._router.press(event.name, event.at))
            return self._publish(self._router.release(event.name, event.at))

    def _source_callback(self, event: InputEvent) -> None:
        self.on_input(event)

    def set_vad(self, is_speech: bool, now: float) -> list[PttEvent]:
        """The speech decision, for callers that may take the lock (not the capture worker: it
        applies its decision to :meth:`route` each frame). Changes :meth:`wanted`, not the route."""
        with self._lock:
            return self._publish(self._router.set_vad(is_speech, now))

    def set_bindings(self, bindings: Iterable[Binding], now: float | None = None) -> list[PttEvent]:
        """Replace the hotkeys (the settings dialog, a channel's key, a reconnect)."""
        with self._lock:
            return self._publish(self._router.set_bindings(bindings, self._now(now)))

    def set_mode(self, mode: Mode | str, now: float | None = None) -> list[PttEvent]:
        with self._lock:
            return self._publish(self._router.set_mode(mode, self._now(now)))

    def set_hot_mic(self, channel: int | None, now: float | None = None) -> list[PttEvent]:
        with self._lock:
            return self._publish(self._router.set_hot_mic(channel, self._now(now)))

    def set_muted(self, muted: bool, now: float | None = None) -> list[PttEvent]:
        """Self-mute (the mute and deafen buttons): nobody hears me until unmuted."""
        with self._lock:
            return self._publish(self._router.set_muted(muted, self._now(now)))

    def release_all(self, now: float | None = None) -> list[PttEvent]:
        with self._lock:
            return self._publish(self._router.release_all(self._now(now)))

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # -- reading ------------------------------------------------------------------------------

    def wanted(self) -> frozenset[int]:
        """The current wanted set with the last speech decision fed to :meth:`set_vad` (lock-free;
        for replies, tests and the UI)."""
        return self._wanted

    def route(self) -> Route:
        """The router's decision for the capture side (lock-free latest-value slot; the capture
        worker calls this every frame and picks ``route.wanted(is_speech)``)."""
        return self._route

    def state(self) -> PttState:
        with self._lock:
            return self._router.state()

    # -- sources ------------------------------------------------------------------------------

    def attach(self, source: HotkeySource) -> None:
        """Start ``source`` with this service as its callback."""
        source.start(self._source_callback)
        self._sources.append(source)

    def close(self) -> None:
        """Stop every attached source, then let go of everything they held."""
        sources, self._sources = self._sources, []
        for source in sources:
            source.stop()
        self.release_all()

    # -- control protocol ---------------------------------------------------------------------

    def handle_command(self, line: str) -> str:
        """One control-socket line → one reply line (without the newline)."""
        parts = line.strip().split(None, 1)
        if not parts:
            return "error empty command"
        verb = parts[0].lower()
        if verb == "status":
            if len(parts) != 1:
                return "error status takes no argument"
            return "ok " + json.dumps(self._status(), sort_keys=True)
        if verb not in ("press", "release", "toggle"):
            return f"error unknown command {verb!r} (press|release|toggle CHANNEL, status)"
        if len(parts) != 2:
            return f"error {verb} needs a channel name or id"
        text = parts[1].strip()
        folded = text.casefold()
        try:
            channel = self._resolve(text)
            problem = f"unknown channel {text!r}"
        except LookupError as exc:
            channel, problem = None, str(exc)
        if channel is None and verb in ("release", "toggle"):
            # What was pressed under this name: a channel renamed or gone, or a roster empty
            # while reconnecting, must never leave a press that cannot be released.
            channel = self._pressed_as.get(folded)
        if channel is None:
            return f"error {problem}"
        now = self._clock()
        with self._lock:
            try:
                if verb == "press":
                    self._publish(self._router.control_press(channel, now))
                elif verb == "release":
                    self._publish(self._router.control_release(channel, now))
                else:
                    self._publish(self._router.control_toggle(channel, now))
            except PttConfigError as exc:
                return f"error {exc}"
            held = self._router.state().control_channels
            if channel in held:
                self._pressed_as[folded] = channel
            self._pressed_as = {k: c for k, c in self._pressed_as.items() if c in held}
            wanted = self._router.wanted(now)
        return "ok wanted=" + ",".join(str(c) for c in sorted(wanted))

    def _status(self) -> dict[str, object]:
        state = self.state()
        wanted = sorted(state.wanted)
        return {
            "mode": state.mode.value,
            "hot_mic": state.hot_mic,
            "hot_mic_open": state.hot_mic_open,
            "wanted": wanted,
            "held": sorted(state.held_inputs),
            "engaged": sorted(state.engaged),
            "latched": sorted(state.latched),
            "control": sorted(state.control_channels),
            # what a person reads: the names of the channels being talked into
            "talking_to": [self._name(c) or str(c) if self._name else str(c) for c in wanted],
        }
