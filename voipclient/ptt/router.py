"""The push-to-talk router: which channels get my voice right now (pure, time passed in).

This is the one decision of who hears me. Every client feeds it and none decides again: hotkey
sources (inputs as normalized names, :mod:`voipclient.ptt.keys`, with the time the source saw
them), the control socket, the settings (mode, hot mic), self-mute, and the voice activity
detector's speech decision. The router answers :meth:`PttRouter.wanted`, returns a
:class:`~voipclient.ptt.events.WantedChanged` from every call that changes it, and publishes its
decision for the capture side as a :class:`Route` (:meth:`PttRouter.route`).

**The speech decision.** It is the one input that changes every frame, and it is known on the
capture thread. A :class:`Route` therefore holds the answer for both values of it: the capture
worker calls ``route.wanted(is_speech)`` with its own frame's VAD decision, so voice activation
starts on the frame that holds the speech and the capture thread never takes a lock. An owner
that runs the router on its own thread (the bot) feeds the decision with :meth:`PttRouter.set_vad`
instead; both give the same answer, because :meth:`PttRouter.wanted` is
``route().wanted(last set_vad)``.

Rules (docs/ptt.md has the long form):

* **Bindings.** A :class:`Binding` is a chord of inputs (``"f13"``, ``"ctrl+shift+t"``,
  ``"mouse4"``) and the channels it talks to. Several engaged bindings transmit to the union of
  their channels.
* **Chords.** A binding engages when a press completes its chord (every input held; order does
  not matter; ``ctrl`` matches ``ctrl_l`` or ``ctrl_r``) and disengages when one of its inputs is
  released. When one press completes several chords and one is a proper subset of another
  (``t`` and ``ctrl+t``), only the larger one engages, and engaging a larger chord disengages the
  engaged subsets: holding Ctrl+T talks to Ctrl+T's channels only. A chord is never engaged by a
  *release* (letting go of Ctrl while T stays down does not start T's binding).
* **Latching.** A latching binding toggles on each completion of its chord and ignores
  releases.
* **Auto-repeat.** A press of an input that is already down is ignored; so is a release of an
  input that is not down.
* **Global mode** decides the hot-mic channel (one optional channel id; the bot may give several):
  ``ptt`` - the hot mic is off, only bindings transmit; ``voice_activation`` - the hot mic
  transmits frames the VAD calls speech (:attr:`Route.speaking`, :meth:`PttRouter.set_vad`);
  ``continuous`` - the hot mic always transmits. Bindings and control commands work in every
  mode and do not wait for speech.
* **Control commands** (the local control socket, :mod:`voipclient.ptt.control`) address
  channels directly: ``press`` adds a channel, ``release`` removes it, ``toggle`` flips it.
* **Self-mute** (:meth:`PttRouter.set_muted`): nobody hears me, whatever is held or latched or
  hot. Inputs keep being tracked, so on unmute a key still held, a latch and the hot mic talk
  again at once.

**No release delay or hangover here.** The router's wanted set changes the instant a key goes
up or the speech decision flips. The VAD's hangover (``vad_hangover_s``, in
:class:`voipclient.audio.dsp.CaptureProcessor`) keeps a pause between words counted as speech,
and :class:`voipclient.audio.voice.TransmitGate` keeps a channel that left the wanted set for
``release_ms`` and then ends its stream with VOICE_LAST; doing either twice would double the tail.

Not thread-safe: one owner (the bot's loop, or :class:`voipclient.ptt.service.PttService` behind
its lock). A :class:`Route` is immutable and may be read from any thread.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from voipclient.errors import LocalProtocolError
from voipclient.ptt.events import Cause, PttEvent, WantedChanged
from voipclient.ptt.keys import SIDES, UnknownInputName, canonical_input, parse_chord

__all__ = [
    "NOBODY",
    "Binding",
    "Mode",
    "PttConfigError",
    "PttRouter",
    "PttState",
    "Route",
    "load_bindings",
]


class Mode(enum.Enum):
    """The global transmit mode (what the hot-mic channel does)."""

    PTT = "ptt"
    VOICE_ACTIVATION = "voice_activation"
    CONTINUOUS = "continuous"


class PttConfigError(ValueError):
    """Invalid push-to-talk configuration; the message names the binding when there is one."""

    def __init__(self, message: str, *, binding: str | None = None) -> None:
        super().__init__(f"binding {binding!r}: {message}" if binding is not None else message)
        self.binding = binding


def _check_channel(value: object, binding: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PttConfigError(f"channel must be an id ≥ 0, not {value!r}", binding=binding)
    return value


@dataclass(frozen=True, slots=True)
class Binding:
    """One hotkey: a chord of inputs and the channels it talks to."""

    #: Unique name, shown in errors and in the UI.
    name: str
    #: Canonical input names that must all be held (see :mod:`voipclient.ptt.keys`).
    chord: frozenset[str]
    #: Channel ids this binding transmits to (at least one).
    channels: frozenset[int]
    #: Toggle on each press instead of transmitting while held.
    latching: bool = False

    @classmethod
    def parse(
        cls,
        name: str,
        keys: str | Sequence[str],
        channels: int | Iterable[int],
        *,
        latching: bool = False,
    ) -> Binding:
        """Validate and normalize; every error is a :class:`PttConfigError` naming ``name``."""
        if not isinstance(name, str) or not name.strip():
            raise PttConfigError(f"a binding needs a non-empty name, not {name!r}")
        try:
            chord = parse_chord(keys if isinstance(keys, str) else tuple(keys))
        except UnknownInputName as exc:
            raise PttConfigError(f"{exc} in {keys!r}", binding=name) from None
        except (ValueError, TypeError) as exc:
            raise PttConfigError(str(exc), binding=name) from None
        ids = [channels] if isinstance(channels, int) else list(channels)
        if not ids:
            raise PttConfigError("no channels", binding=name)
        checked = frozenset(_check_channel(c, name) for c in ids)
        if not isinstance(latching, bool):
            raise PttConfigError(f"latching must be true or false, not {latching!r}", binding=name)
        return cls(name, chord, checked, latching)

    def describe(self) -> str:
        """``ctrl+shift+t`` (modifiers first, then the rest alphabetically)."""
        order = {m: i for i, m in enumerate(("ctrl", "shift", "alt", "alt_gr", "super"))}

        def key(n: str) -> tuple[int, str]:
            return (order.get(n.split("_", maxsplit=1)[0] if n != "alt_gr" else n, 99), n)

        return "+".join(sorted(self.chord, key=key))


_BINDING_FIELDS = frozenset({"name", "keys", "channels", "channel", "latching"})


def load_bindings(
    entries: Iterable[Mapping[str, object]],
    resolve: Callable[[str], int | None] | None = None,
) -> tuple[Binding, ...]:
    """Bindings from config entries such as ``{"name": "squad", "keys": "f13", "channels": [2]}``.

    ``keys`` is a chord string or a list of names, ``channels`` a list (or ``channel`` one value)
    of ids or, with ``resolve``, channel names; ``latching`` defaults to false; ``name`` defaults
    to ``"binding N"`` (1-based). Duplicate names and two bindings with the same chord are errors.
    """
    out: list[Binding] = []
    for i, entry in enumerate(entries, start=1):
        raw_name = entry.get("name", f"binding {i}")
        name = raw_name if isinstance(raw_name, str) else f"binding {i}"
        unknown = set(entry) - _BINDING_FIELDS
        if unknown:
            raise PttConfigError(f"unknown option(s) {sorted(unknown)}", binding=name)
        if "keys" not in entry:
            raise PttConfigError("no keys", binding=name)
        if ("channels" in entry) == ("channel" in entry):
            raise PttConfigError("give exactly one of 'channels' or 'channel'", binding=name)
        raw_channels = entry.get("channels", [entry.get("channel")])
        if isinstance(raw_channels, str | int):
            raw_channels = [raw_channels]
        if not isinstance(raw_channels, Iterable):
            raise PttConfigError(f"channels must be a list, not {raw_channels!r}", binding=name)
        ids: list[int] = []
        for ch in raw_channels:
            if isinstance(ch, str):
                resolved = resolve(ch) if resolve is not None else None
                if resolved is None:
                    raise PttConfigError(f"unknown channel {ch!r}", binding=name)
                ids.append(resolved)
            else:
                ids.append(_check_channel(ch, name))
        keys = entry["keys"]
        if not isinstance(keys, str | list | tuple):
            raise PttConfigError(f"keys must be a string or a list, not {keys!r}", binding=name)
        latching = entry.get("latching", False)
        if not isinstance(latching, bool):
            raise PttConfigError(f"latching must be true or false, not {latching!r}", binding=name)
        out.append(Binding.parse(name, keys, ids, latching=latching))
    _check_unique(out)
    return tuple(out)


def _check_unique(bindings: Sequence[Binding]) -> None:
    by_name: set[str] = set()
    by_chord: dict[frozenset[str], str] = {}
    for b in bindings:
        if b.name in by_name:
            raise PttConfigError("the name is used twice", binding=b.name)
        by_name.add(b.name)
        other = by_chord.get(b.chord)
        if other is not None:
            raise PttConfigError(f"same keys as binding {other!r} ({b.describe()})", binding=b.name)
        by_chord[b.chord] = b.name


@dataclass(frozen=True, slots=True)
class Route:
    """The router's decision for the capture side: who hears this frame, for either answer of
    the VAD. Immutable: the router replaces it whole (a latest-value slot any thread may read).

    The capture worker calls :meth:`wanted` once per frame; it returns one of the two stored
    sets, so the real-time path allocates nothing.
    """

    #: Channels that hear every frame: held and latched bindings, control commands, the hot mic
    #: in ``continuous`` mode.
    always: frozenset[int]
    #: Channels that hear a frame the VAD calls speech: ``always`` plus the hot mic in
    #: ``voice_activation`` mode (equal to ``always`` in the other modes).
    speaking: frozenset[int]

    def wanted(self, is_speech: bool) -> frozenset[int]:
        """The channels that get a frame with this speech decision (before the gate's release
        delay)."""
        return self.speaking if is_speech else self.always

    @property
    def voice_activated(self) -> frozenset[int]:
        """Channels that hear me only while I speak."""
        return self.speaking - self.always


#: Nobody hears me (muted, or nothing held and no hot mic).
NOBODY: Final = Route(frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class PttState:
    """A snapshot for the UI (immutable; take a new one after each event)."""

    #: The global mode.
    mode: Mode
    #: The hot-mic channel (the lowest of :attr:`hot_mics` if several), or None.
    hot_mic: int | None
    #: Whether the hot mic transmits right now (mode, the last VAD decision fed, mute).
    hot_mic_open: bool
    #: The last VAD decision passed to :meth:`PttRouter.set_vad`.
    vad_speech: bool
    #: Inputs currently down.
    held_inputs: frozenset[str]
    #: Names of momentary bindings engaged now.
    engaged: frozenset[str]
    #: Names of latching bindings latched on.
    latched: frozenset[str]
    #: Channels added by control commands.
    control_channels: frozenset[int]
    #: The wanted set (what :meth:`PttRouter.wanted` returns).
    wanted: frozenset[int]
    #: The configured bindings, in configuration order.
    bindings: tuple[Binding, ...]
    #: Every hot-mic channel (the desktop app has at most one; the bot's ``--talk`` channels).
    hot_mics: frozenset[int] = frozenset()
    #: Self-muted: nobody hears me.
    muted: bool = False
    #: The decision for the capture side (what :meth:`PttRouter.route` returns).
    route: Route = NOBODY


def _finite(now: float) -> float:
    if not math.isfinite(now):
        raise LocalProtocolError(f"now must be a finite time in seconds, not {now!r}")
    return now


def _normalize(name: str) -> str:
    try:
        return canonical_input(name)
    except UnknownInputName:
        # A source may report keys outside the vocabulary ("key_0x1008ff2f"): they are tracked
        # (auto-repeat) but complete no binding.
        return name.strip().lower()


class PttRouter:
    """Decides the wanted channel set from hotkeys, the VAD, the mode, the hot mic, self-mute and
    control commands."""

    def __init__(
        self,
        bindings: Iterable[Binding] = (),
        *,
        mode: Mode | str = Mode.PTT,
        hot_mic: int | Iterable[int] | None = None,
    ) -> None:
        self._bindings: tuple[Binding, ...] = ()
        self._by_name: dict[str, Binding] = {}
        self._set_bindings(tuple(bindings))
        self._mode = self._check_mode(mode)
        self._hot: frozenset[int] = self._check_hot_mic(hot_mic)
        self._held: set[str] = set()
        self._engaged: set[str] = set()
        self._latched: set[str] = set()
        self._control: set[int] = set()
        self._vad = False
        self._muted = False
        self._route: Route = self._compute()
        self._wanted: frozenset[int] = self._route.wanted(self._vad)

    # -- configuration ----------------------------------------------------------------------

    @staticmethod
    def _check_mode(mode: Mode | str) -> Mode:
        try:
            return mode if isinstance(mode, Mode) else Mode(mode)
        except ValueError:
            modes = ", ".join(m.value for m in Mode)
            raise PttConfigError(f"unknown mode {mode!r} (one of {modes})") from None

    @staticmethod
    def _check_hot_mic(channel: int | Iterable[int] | None) -> frozenset[int]:
        if channel is None:
            return frozenset()
        if isinstance(channel, int):
            return frozenset({_check_channel(channel, None)})
        if not isinstance(channel, Iterable):
            raise PttConfigError(f"hot mic must be a channel id or a list of them, not {channel!r}")
        return frozenset(_check_channel(c, None) for c in channel)

    def _set_bindings(self, bindings: tuple[Binding, ...]) -> None:
        for b in bindings:
            if not isinstance(b, Binding):
                raise PttConfigError(f"not a Binding: {b!r}")
        _check_unique(bindings)
        self._bindings = bindings
        self._by_name = {b.name: b for b in bindings}

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return self._bindings

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def hot_mic(self) -> int | None:
        """The hot-mic channel (the lowest if several), or None."""
        return min(self._hot) if self._hot else None

    @property
    def hot_mics(self) -> frozenset[int]:
        return self._hot

    @property
    def muted(self) -> bool:
        return self._muted

    @property
    def configured_channels(self) -> frozenset[int]:
        """Every channel a binding or the hot mic can route to (control commands aside)."""
        out: set[int] = set(self._hot)
        for b in self._bindings:
            out |= b.channels
        return frozenset(out)

    def set_bindings(self, bindings: Iterable[Binding], now: float) -> list[PttEvent]:
        """Replace the bindings. Engaged and latched bindings are dropped; keys that are down stay
        down but must be pressed again to engage a new binding."""
        _finite(now)
        self._set_bindings(tuple(bindings))
        self._engaged.clear()
        self._latched.clear()
        return self._update(Cause.BINDINGS, now, None)

    def set_mode(self, mode: Mode | str, now: float) -> list[PttEvent]:
        _finite(now)
        self._mode = self._check_mode(mode)
        return self._update(Cause.MODE, now, self._mode.value)

    def set_hot_mic(self, channel: int | Iterable[int] | None, now: float) -> list[PttEvent]:
        """The channel(s) the global mode drives; None (or none) switches the hot mic off."""
        _finite(now)
        self._hot = self._check_hot_mic(channel)
        trigger = ",".join(str(c) for c in sorted(self._hot)) or None
        return self._update(Cause.HOT_MIC, now, trigger)

    def set_muted(self, muted: bool, now: float) -> list[PttEvent]:
        """Self-mute on or off. While muted nobody hears me; held inputs, latches, control
        channels and the hot mic are kept, so unmuting brings back whatever is still on."""
        _finite(now)
        self._muted = bool(muted)
        return self._update(Cause.MUTE, now, "on" if self._muted else "off")

    # -- inputs -----------------------------------------------------------------------------

    def _satisfied(self, binding: Binding, held: set[str]) -> bool:
        return all(any(alt in held for alt in SIDES.get(k, (k,))) for k in binding.chord)

    def press(self, input_name: str, now: float) -> list[PttEvent]:
        """An input went down at ``now`` (s). A press of an input already down is ignored."""
        _finite(now)
        name = _normalize(input_name)
        if name in self._held:
            return []
        before = {b.name for b in self._bindings if self._satisfied(b, self._held)}
        self._held.add(name)
        completed = [
            b for b in self._bindings if b.name not in before and self._satisfied(b, self._held)
        ]
        if not completed:
            return []
        rivals = [*completed, *(self._by_name[n] for n in self._engaged)]
        winners = [b for b in completed if not any(b.chord < r.chord for r in rivals)]
        latch = False
        for w in winners:
            self._engaged -= {n for n in self._engaged if self._by_name[n].chord < w.chord}
            if w.latching:
                latch = True
                self._latched ^= {w.name}
            else:
                self._engaged.add(w.name)
        return self._update(Cause.LATCH if latch else Cause.PRESS, now, name)

    def release(self, input_name: str, now: float) -> list[PttEvent]:
        """An input went up at ``now`` (s). A release of an input that is not down is ignored."""
        _finite(now)
        name = _normalize(input_name)
        if name not in self._held:
            return []
        self._held.discard(name)
        self._engaged = {n for n in self._engaged if self._satisfied(self._by_name[n], self._held)}
        return self._update(Cause.RELEASE, now, name)

    def release_all(self, now: float) -> list[PttEvent]:
        """Let go of everything: inputs, latches and control channels (focus lost, source stopped,
        the user's "stop talking" button). The hot mic keeps following the mode."""
        _finite(now)
        self._held.clear()
        self._engaged.clear()
        self._latched.clear()
        self._control.clear()
        return self._update(Cause.RELEASE_ALL, now, None)

    def set_vad(self, is_speech: bool, now: float) -> list[PttEvent]:
        """The capture side's voice activity decision for the frame at ``now`` (s), for an owner
        that runs the router on the capture thread (the bot calls it every frame). It does not
        change the :class:`Route` (which holds the answer for both decisions), so an unchanged
        decision costs a comparison."""
        _finite(now)
        speech = bool(is_speech)
        if speech == self._vad:
            return []
        self._vad = speech
        before, after = self._wanted, self._route.wanted(speech)
        if after == before:
            return []
        self._wanted = after
        return [WantedChanged(before, after, Cause.VAD, now, None)]

    def control_press(self, channel: int, now: float) -> list[PttEvent]:
        """``press CHANNEL`` from the control socket: transmit to ``channel`` until released."""
        _finite(now)
        self._control.add(_check_channel(channel, None))
        return self._update(Cause.CONTROL, now, f"press {channel}")

    def control_release(self, channel: int, now: float) -> list[PttEvent]:
        _finite(now)
        self._control.discard(channel)
        return self._update(Cause.CONTROL, now, f"release {channel}")

    def control_toggle(self, channel: int, now: float) -> list[PttEvent]:
        _finite(now)
        self._control ^= {_check_channel(channel, None)}
        return self._update(Cause.CONTROL, now, f"toggle {channel}")

    # -- queries ----------------------------------------------------------------------------

    def _hot_open(self) -> bool:
        if not self._hot or self._muted:
            return False
        if self._mode is Mode.CONTINUOUS:
            return True
        return self._mode is Mode.VOICE_ACTIVATION and self._vad

    def _compute(self) -> Route:
        """The route from everything but the speech decision (the one rule of who hears me)."""
        if self._muted:
            return NOBODY
        always = set(self._control)
        for n in self._engaged | self._latched:
            always |= self._by_name[n].channels
        if self._mode is Mode.CONTINUOUS:
            always |= self._hot
        keyed = frozenset(always)
        if self._mode is Mode.VOICE_ACTIVATION and not self._hot <= keyed:
            return Route(keyed, keyed | self._hot)
        return Route(keyed, keyed)

    def _update(self, cause: Cause, now: float, trigger: str | None) -> list[PttEvent]:
        route = self._compute()
        if route != self._route:
            self._route = route
        before, after = self._wanted, route.wanted(self._vad)
        if after == before:
            return []
        self._wanted = after
        return [WantedChanged(before, after, cause, now, trigger)]

    def wanted(self, now: float) -> frozenset[int]:
        """Channel ids my voice goes to for the frame at ``now`` (s), with the last speech
        decision fed to :meth:`set_vad`, before the gate's release delay. Does not depend on
        ``now`` today (the VAD's hangover lives in the VAD); the parameter keeps the pure-core
        shape."""
        _finite(now)
        return self._wanted

    def route(self) -> Route:
        """The decision for the capture side, for either speech decision (immutable; the same
        object until an input changes it)."""
        return self._route

    def state(self) -> PttState:
        return PttState(
            mode=self._mode,
            hot_mic=self.hot_mic,
            hot_mic_open=self._hot_open(),
            vad_speech=self._vad,
            held_inputs=frozenset(self._held),
            engaged=frozenset(self._engaged),
            latched=frozenset(self._latched),
            control_channels=frozenset(self._control),
            wanted=self._wanted,
            bindings=self._bindings,
            hot_mics=self._hot,
            muted=self._muted,
            route=self._route,
        )
