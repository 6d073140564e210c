"""The push-to-talk router: which channels get my voice right now (pure, time passed in).

Inputs arrive as normalized names (:mod:`voipclient.ptt.keys`) with the time the source saw
them; the router answers :meth:`PttRouter.wanted` and returns a
:class:`~voipclient.ptt.events.WantedChanged` from every call that changes it.

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
* **Global mode** decides the hot-mic channel (one optional channel id): ``ptt`` - the hot mic is
  off, only bindings transmit; ``voice_activation`` - the hot mic transmits while the VAD says
  speech (:meth:`PttRouter.set_vad`); ``continuous`` - the hot mic always transmits. Bindings and
  control commands work in every mode.
* **Control commands** (the local control socket, :mod:`voipclient.ptt.control`) address
  channels directly: ``press`` adds a channel, ``release`` removes it, ``toggle`` flips it.

**No release delay here.** The router's wanted set changes the instant a key goes up.
:class:`voipclient.audio.voice.TransmitGate` keeps a channel that left the wanted set for
``release_ms`` and then ends its stream with VOICE_LAST; doing it twice would double the tail.

Not thread-safe: one owner (the hotkey thread, or :class:`voipclient.ptt.service.PttService`
behind its lock).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from voipclient.errors import LocalProtocolError
from voipclient.ptt.events import Cause, PttEvent, WantedChanged
from voipclient.ptt.keys import SIDES, UnknownInputName, canonical_input, parse_chord

__all__ = [
    "Binding",
    "Mode",
    "PttConfigError",
    "PttRouter",
    "PttState",
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
class PttState:
    """A snapshot for the UI (immutable; take a new one after each event)."""

    #: The global mode.
    mode: Mode
    #: The hot-mic channel, or None.
    hot_mic: int | None
    #: Whether the hot mic transmits right now (mode and VAD).
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
    """Decides the wanted channel set from hotkeys, the VAD, the mode and control commands."""

    def __init__(
        self,
        bindings: Iterable[Binding] = (),
        *,
        mode: Mode | str = Mode.PTT,
        hot_mic: int | None = None,
    ) -> None:
        self._bindings: tuple[Binding, ...] = ()
        self._by_name: dict[str, Binding] = {}
        self._set_bindings(tuple(bindings))
        self._mode = self._check_mode(mode)
        self._hot_mic = None if hot_mic is None else self._check_hot_mic(hot_mic)
        self._held: set[str] = set()
        self._engaged: set[str] = set()
        self._latched: set[str] = set()
        self._control: set[int] = set()
        self._vad = False
        self._wanted: frozenset[int] = self._compute()

    # -- configuration ----------------------------------------------------------------------

    @staticmethod
    def _check_mode(mode: Mode | str) -> Mode:
        try:
            return mode if isinstance(mode, Mode) else Mode(mode)
        except ValueError:
            modes = ", ".join(m.value for m in Mode)
            raise PttConfigError(f"unknown mode {mode!r} (one of {modes})") from None

    @staticmethod
    def _check_hot_mic(channel: int) -> int:
        return _check_channel(channel, None)

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
        return self._hot_mic

    @property
    def configured_channels(self) -> frozenset[int]:
        """Every channel a binding or the hot mic can route to (control commands aside)."""
        out: set[int] = set()
        for b in self._bindings:
            out |= b.channels
        if self._hot_mic is not None:
            out.add(self._hot_mic)
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

    def set_hot_mic(self, channel: int | None, now: float) -> list[PttEvent]:
        _finite(now)
        self._hot_mic = None if channel is None else self._check_hot_mic(channel)
        return self._update(Cause.HOT_MIC, now, None if channel is None else str(channel))

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
        """The capture side's voice activity decision for the frame at ``now`` (s)."""
        _finite(now)
        self._vad = bool(is_speech)
        return self._update(Cause.VAD, now, None)

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
        if self._hot_mic is None:
            return False
        if self._mode is Mode.CONTINUOUS:
            return True
        return self._mode is Mode.VOICE_ACTIVATION and self._vad

    def _compute(self) -> frozenset[int]:
        out = set(self._control)
        for n in self._engaged | self._latched:
            out |= self._by_name[n].channels
        if self._hot_open() and self._hot_mic is not None:
            out.add(self._hot_mic)
        return frozenset(out)

    def _update(self, cause: Cause, now: float, trigger: str | None) -> list[PttEvent]:
        before, after = self._wanted, self._compute()
        if after == before:
            return []
        self._wanted = after
        return [WantedChanged(before, after, cause, now, trigger)]

    def wanted(self, now: float) -> frozenset[int]:
        """Channel ids my voice goes to for the frame at ``now`` (s), before the gate's release
        delay. Does not depend on ``now`` today (the VAD's hangover lives in the VAD); the
        parameter keeps the pure-core shape."""
        _finite(now)
        return self._wanted

    def state(self) -> PttState:
        return PttState(
            mode=self._mode,
            hot_mic=self._hot_mic,
            hot_mic_open=self._hot_open(),
            vad_speech=self._vad,
            held_inputs=frozenset(self._held),
            engaged=frozenset(self._engaged),
            latched=frozenset(self._latched),
            control_channels=frozenset(self._control),
            wanted=self._wanted,
            bindings=self._bindings,
        )
