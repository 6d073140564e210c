"""Every event the push-to-talk router returns, as frozen dataclasses documented field by field.

:class:`~voipclient.ptt.router.PttRouter` returns a list of :data:`PttEvent` from each call that
can change who hears me (``press``, ``release``, ``set_vad``, ``set_mode``, ``set_muted``, ...).
The list is empty when nothing changed (an auto-repeated press, a VAD flip while no hot mic is
configured, a key that is part of no binding, a mode change that only changes what a speech frame
would do).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Cause", "PttEvent", "WantedChanged"]


class Cause(enum.Enum):
    """What made the wanted set change."""

    #: An input went down and completed a binding's chord (``trigger`` is the input name).
    PRESS = "press"
    #: An input went up and ended a held binding (``trigger`` is the input name).
    RELEASE = "release"
    #: A latching binding was toggled on or off by its chord (``trigger`` is the input name).
    LATCH = "latch"
    #: The voice activity detector flipped while the hot mic is voice-activated.
    VAD = "vad"
    #: The global mode changed (``trigger`` is the new mode's value).
    MODE = "mode"
    #: The hot-mic channel changed (``trigger`` is the new channel id, or None).
    HOT_MIC = "hot_mic"
    #: New bindings replaced the old ones (held keys and latches were dropped).
    BINDINGS = "bindings"
    #: A control-socket command (``trigger`` is "press 3" / "release 3" / "toggle 3").
    CONTROL = "control"
    #: Everything was let go at once (focus lost, source stopped, ``release_all``).
    RELEASE_ALL = "release_all"
    #: Self-mute went on or off (``trigger`` is "on" / "off").
    MUTE = "mute"


@dataclass(frozen=True, slots=True)
class WantedChanged:
    """The set of channels my voice goes to changed.

    This is the router's *wanted* set with the last speech decision fed to
    :meth:`~voipclient.ptt.router.PttRouter.set_vad`. The capture worker does not listen for it:
    it reads the router's :class:`~voipclient.ptt.router.Route` each frame, picks the set for
    its own frame's speech decision and passes it to
    :meth:`voipclient.audio.voice.TransmitGate.update`, which adds the release delay and the
    VOICE_LAST frame. A channel leaving ``after`` therefore still hears the tail of the last word
    for ``release_ms``.
    """

    #: Channel ids that were wanted before the call.
    before: frozenset[int]
    #: Channel ids wanted after the call (never equal to ``before``).
    after: frozenset[int]
    #: Why it changed.
    cause: Cause
    #: The ``now`` (seconds, the caller's monotonic clock) passed to the call that caused it; for
    #: hotkeys the time the source saw the input.
    at: float
    #: What triggered it, for logs and the UI: the input name for PRESS/RELEASE/LATCH, the command
    #: for CONTROL, the mode value for MODE, the channel id(s) as text for HOT_MIC ("3", "2,3"),
    #: "on"/"off" for MUTE, else None.
    trigger: str | None = None

    @property
    def started(self) -> frozenset[int]:
        """Channels that start hearing me."""
        return self.after - self.before

    @property
    def stopped(self) -> frozenset[int]:
        """Channels that stop hearing me (after the gate's release delay)."""
        return self.before - self.after


#: Everything the router returns. One type today; a union if more arrive.
PttEvent = WantedChanged
