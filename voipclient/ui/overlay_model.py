"""What the game overlay shows and remembers, as pure data: no Qt (the window is ``ui/overlay``).

* :class:`OverlayState` is the input: the channels we are in (name, colour, whether our voice
  goes there now, whether a key or the hot mic can send it there) and who else is talking where.
  :func:`overlay_state` builds it from the main window's :class:`~voipclient.ui.model.ChannelRow`
  tuple, so the overlay shows exactly what the channel tree shows (architecture rule 9).
* :func:`overlay_rows` turns a state into the rows to draw, in order, at most ``max_rows`` of them
  with a ``"+N more"`` row when they do not fit.
* :class:`OverlaySettings` is what the overlay remembers (geometry, opacity, lock, ...), read back
  by :meth:`OverlaySettings.from_dict` without ever raising: garbage is ignored, numbers clamped.
  :func:`load_overlay_settings` / :func:`save_overlay_settings` keep it as JSON text under one
  key of a :class:`~voipclient.ui.prefs.PrefsBackend`, like every other preference.
* :func:`place_on_screens` brings a remembered rectangle back onto a screen that still exists.
* :func:`default_channel_colour` gives each channel a colour from a fixed palette; the channel
  tree, the chat tabs and the overlay use it so a channel looks the same everywhere.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

if TYPE_CHECKING:  # only for the annotation: the model needs nothing from it at run time
    from voipclient.ui.model import ChannelRow
    from voipclient.ui.prefs import PrefsBackend

__all__ = [
    "CHANNEL_PALETTE",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_OPACITY",
    "MAX_OPACITY",
    "MIN_OPACITY",
    "OVERLAY_SETTINGS_KEY",
    "Box",
    "OverlayChannel",
    "OverlayRow",
    "OverlaySettings",
    "OverlayState",
    "OverlayTalker",
    "RowKind",
    "clamp_opacity",
    "clean_text",
    "default_channel_colour",
    "load_overlay_settings",
    "normalise_colour",
    "overlay_rows",
    "overlay_state",
    "place_on_screens",
    "save_overlay_settings",
]

#: Channel colours, in the order channel ids cycle through them. Every one has a contrast ratio
#: of at least 3.3:1 (WCAG 2, the level for large or bold text and for graphics) against both
#: themes' backgrounds (#ffffff, #f2f3f5, #1e1f22, #2b2d31, #313338) and the overlay's dark panel,
#: and neighbours differ by at least 95° of hue, so channels 1, 2, 3 ... never look alike.
CHANNEL_PALETTE: Final[tuple[str, ...]] = (
    # ordered so that the first five (a server's usual channels) are all far apart in hue, and
    # any two neighbours at least 90° apart
    "#2c8ace",  # blue
    "#c86c2a",  # orange
    "#169841",  # green
    "#d848c0",  # magenta
    "#59931f",  # lime
    "#6d78f3",  # indigo
    "#e64f4f",  # red
    "#1f938a",  # teal
    "#a368df",  # violet
    "#9e810d",  # gold
)

MIN_OPACITY: Final = 0.2
MAX_OPACITY: Final = 1.0
DEFAULT_OPACITY: Final = 0.9
#: Rows the overlay shows at most (the last one becomes "+N more" when there are more).
DEFAULT_MAX_ROWS: Final = 8
MAX_ROWS_LIMIT: Final = 30
#: The smallest overlay, px (logical): one short row.
MIN_WIDTH: Final = 80
MIN_HEIGHT: Final = 24
#: The largest coordinate or size we believe (a 16 k desktop is 15 360 px wide).
MAX_COORDINATE: Final = 100_000
#: Where :func:`save_overlay_settings` keeps the overlay's settings (JSON text).
OVERLAY_SETTINGS_KEY: Final = "overlay/state"
SETTINGS_VERSION: Final = 1

_HEX_COLOUR: Final = re.compile(r"#[0-9a-fA-F]{6}")


def default_channel_colour(slot: int) -> str:
    """The palette colour (``"#rrggbb"``) of the channel in ``slot`` (the model passes its place
    in the tree): slots cycle through :data:`CHANNEL_PALETTE`, so the first channels shown all
    get clearly different colours."""
    return CHANNEL_PALETTE[slot % len(CHANNEL_PALETTE)]


def normalise_colour(value: object, slot: int) -> str:
    """``value`` as lower-case ``"#rrggbb"``, or the palette colour of ``slot`` when it is not
    one (absent, empty, a name, garbage)."""
    if isinstance(value, str) and _HEX_COLOUR.fullmatch(value.strip()):
        return value.strip().lower()
    return default_channel_colour(slot)


def clean_text(text: str) -> str:
    """One line of text to draw: control characters and line or paragraph separators (which
    would break the row or be drawn as boxes) become spaces, runs of spaces collapse."""
    out = [
        " " if unicodedata.category(ch) in {"Cc", "Zl", "Zp"} or ch.isspace() else ch for ch in text
    ]
    return " ".join("".join(out).split())


# -- the state in ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OverlayChannel:
    """A channel we are in."""

    #: The server's channel id (talkers refer to it).
    id: int
    name: str
    #: ``"#rrggbb"``; empty or invalid: :func:`default_channel_colour` of ``id``.
    colour: str = ""
    #: Our voice goes into this channel right now (push-to-talk held, hot mic open).
    transmitting: bool = False
    #: A push-to-talk key or the hot mic can send our voice here: the overlay shows an unlit
    #: "You → channel" row for it while we are silent (when idle rows are on).
    can_transmit: bool = False
    #: What sends our voice here, as shown on our row (e.g. ``"ctrl+f13"``, ``"hot mic"``).
    key: str = ""


@dataclass(frozen=True, slots=True)
class OverlayTalker:
    """Someone else whose voice we hear in a channel right now (one per person and channel)."""

    name: str
    channel_id: int


@dataclass(frozen=True, slots=True)
class OverlayState:
    """Everything the overlay shows. Talkers in a channel not listed are not shown (we only
    hear channels we are in); our own voice is the channels' ``transmitting``, not a talker."""

    channels: tuple[OverlayChannel, ...] = ()
    talkers: tuple[OverlayTalker, ...] = ()


def overlay_state(
    rows: Iterable[ChannelRow], colour: Callable[[ChannelRow], str] | None = None
) -> OverlayState:
    """The overlay's state from the main window's model rows (``ClientModel.rows()``): the
    channels we joined, our voice from our own member row's ``talking``, everyone else talking in
    them. A channel's colour is its row's ``colour`` (what the tree draws), or ``colour(row)``."""
    channels: list[OverlayChannel] = []
    talkers: list[OverlayTalker] = []
    for row in rows:
        if not row.joined:
            continue
        keys = ", ".join(row.ptt_keys)
        if row.hot_mic:
            keys = f"{keys} · hot mic" if keys else "hot mic"
        channels.append(
            OverlayChannel(
                id=row.id,
                name=row.name,
                colour=normalise_colour(colour(row) if colour else row.colour, row.slot),
                transmitting=any(m.is_me and m.talking for m in row.members),
                can_transmit=row.may_speak and bool(keys),
                key=keys,
            )
        )
        talkers.extend(
            OverlayTalker(m.name, row.id) for m in row.members if m.talking and not m.is_me
        )
    return OverlayState(tuple(channels), tuple(talkers))


# -- the rows out ---------------------------------------------------------------------------------
#: ``"transmitting"``: our voice goes into the channel (lit); ``"ready"``: it can, we are silent
#: (unlit); ``"talking"``: someone else talks in the channel; ``"more"``: rows left out.
RowKind = Literal["transmitting", "ready", "talking", "more"]


@dataclass(frozen=True, slots=True)
class OverlayRow:
    """One line of the overlay: ``name → channel`` with the channel's colour."""

    kind: RowKind
    #: "You", the talker's name, or "+N more".
    name: str
    #: The channel's name ("" for a "more" row).
    channel: str = ""
    #: The channel's ``"#rrggbb"`` ("" for a "more" row).
    colour: str = ""
    #: What sends our voice there (our rows only), e.g. "ctrl+f13".
    key: str = ""
    #: The channel's id (None for a "more" row).
    channel_id: int | None = None

    @property
    def text(self) -> str:
        """The row as plain text (accessibility, logs, tests)."""
        if self.kind == "more":
            return self.name
        text = f"{self.name} → {self.channel}"
        return f"{text} ({self.key})" if self.key else text


YOU: Final = "You"


def overlay_rows(
    state: OverlayState, *, max_rows: int = DEFAULT_MAX_ROWS, show_idle: bool = True
) -> tuple[OverlayRow, ...]:
    """The rows to draw, top to bottom.

    First our own rows, one per channel in the state's order ("You → Squad A": lit while our
    voice goes there; unlit ones only with ``show_idle`` and only for channels that
    ``can_transmit``), then everyone talking, grouped by channel in the same order (their own
    order within a channel). When that is more than ``max_rows`` (at least 1), the unlit rows go
    first; if it still does not fit, the last row shown is ``"+N more"`` for the N left out.
    """
    max_rows = max(1, max_rows)
    order = {c.id: i for i, c in enumerate(state.channels)}
    by_id = {c.id: c for c in state.channels}
    mine: list[OverlayRow] = []
    for c in state.channels:
        if c.transmitting or (show_idle and c.can_transmit):
            mine.append(
                OverlayRow(
                    "transmitting" if c.transmitting else "ready",
                    YOU,
                    clean_text(c.name),
                    normalise_colour(c.colour, c.id),
                    clean_text(c.key),
                    c.id,
                )
            )
    heard = sorted(
        (t for t in state.talkers if t.channel_id in by_id), key=lambda t: order[t.channel_id]
    )
    others = [
        OverlayRow(
            "talking",
            clean_text(t.name),
            clean_text(by_id[t.channel_id].name),
            normalise_colour(by_id[t.channel_id].colour, t.channel_id),
            channel_id=t.channel_id,
        )
        for t in heard
    ]
    rows = mine + others
    if len(rows) > max_rows:  # unlit rows are the least news: they make room first
        rows = [r for r in rows if r.kind != "ready"]
    if len(rows) > max_rows:
        shown = rows[: max_rows - 1]
        rows = [*shown, OverlayRow("more", f"+{len(rows) - len(shown)} more")]
    return tuple(rows)


# -- what the overlay remembers -------------------------------------------------------------------
class Box(NamedTuple):
    """A rectangle in logical pixels (a window's geometry, a screen's available area)."""

    x: int
    y: int
    width: int
    height: int

    def overlap(self, other: Box) -> tuple[int, int]:
        """Width and height of the intersection (0, 0 when apart)."""
        w = min(self.x + self.width, other.x + other.width) - max(self.x, other.x)
        h = min(self.y + self.height, other.y + other.height) - max(self.y, other.y)
        return max(0, w), max(0, h)


def clamp_opacity(value: object, default: float = DEFAULT_OPACITY) -> float:
    """``value`` as an opacity in [0.2, 1.0]; not a finite number: ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if not math.isfinite(value):
        return default
    return min(MAX_OPACITY, max(MIN_OPACITY, float(value)))


def _int(value: object, low: int, high: int) -> int | None:
    """A whole number in [low, high] (clamped), or None when ``value`` is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return min(high, max(low, int(value)))


@dataclass(frozen=True, slots=True)
class OverlaySettings:
    """What the overlay remembers between runs."""

    #: The window's rectangle (logical px); None: not placed yet (the overlay picks a default).
    geometry: Box | None = None
    opacity: float = DEFAULT_OPACITY
    #: Locked: click-through, not movable. Unlocked: drag to move, resize from the corner.
    locked: bool = True
    #: Show unlit "You → channel" rows while we are silent.
    show_idle: bool = True
    max_rows: int = DEFAULT_MAX_ROWS

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: numbers, booleans and a version."""
        out: dict[str, object] = {
            "version": SETTINGS_VERSION,
            "opacity": round(self.opacity, 3),
            "locked": self.locked,
            "show_idle": self.show_idle,
            "max_rows": self.max_rows,
        }
        if self.geometry is not None:
            out.update(self.geometry._asdict())
        return out

    @classmethod
    def from_dict(cls, raw: object) -> OverlaySettings:
        """Settings from what :meth:`to_dict` wrote, never raising: a value of the wrong type is
        ignored (its default is used), a number out of range is clamped, a geometry with any
        part missing or unusable is dropped as a whole."""
        if not isinstance(raw, Mapping):
            return cls()
        settings = cls(opacity=clamp_opacity(raw.get("opacity")))
        locked, show_idle = raw.get("locked"), raw.get("show_idle")
        if isinstance(locked, bool):
            settings = replace(settings, locked=locked)
        if isinstance(show_idle, bool):
            settings = replace(settings, show_idle=show_idle)
        max_rows = _int(raw.get("max_rows"), 1, MAX_ROWS_LIMIT)
        if max_rows is not None:
            settings = replace(settings, max_rows=max_rows)
        x = _int(raw.get("x"), -MAX_COORDINATE, MAX_COORDINATE)
        y = _int(raw.get("y"), -MAX_COORDINATE, MAX_COORDINATE)
        w = _int(raw.get("width"), MIN_WIDTH, MAX_COORDINATE)
        h = _int(raw.get("height"), MIN_HEIGHT, MAX_COORDINATE)
        if x is not None and y is not None and w is not None and h is not None:
            settings = replace(settings, geometry=Box(x, y, w, h))
        return settings


def load_overlay_settings(backend: PrefsBackend) -> OverlaySettings:
    """The settings kept under :data:`OVERLAY_SETTINGS_KEY`; defaults when absent or unreadable
    (an overlay that comes back at its default place is no reason to bother the user)."""
    raw = backend.value(OVERLAY_SETTINGS_KEY)
    if not isinstance(raw, str):
        return OverlaySettings()
    try:
        return OverlaySettings.from_dict(json.loads(raw))
    except (ValueError, RecursionError):  # not JSON, too many digits, nested too deep
        return OverlaySettings()


def save_overlay_settings(backend: PrefsBackend, settings: OverlaySettings) -> None:
    backend.set_value(OVERLAY_SETTINGS_KEY, json.dumps(settings.to_dict(), sort_keys=True))


def place_on_screens(
    box: Box, screens: Sequence[Box], *, min_visible: tuple[int, int] = (48, 24)
) -> Box:
    """``box`` where the user can see it: unchanged when at least ``min_visible`` (w, h; less
    for a smaller box) of it is on one screen and it is no larger than that screen; else moved
    onto the screen it overlaps most, or when it is on none the nearest one (by its centre's
    distance), and shrunk to fit that screen. No screens: unchanged."""
    if not screens:
        return box
    need_w, need_h = min(min_visible[0], box.width), min(min_visible[1], box.height)

    def area(s: Box) -> int:
        w, h = box.overlap(s)
        return w * h

    best = max(screens, key=area)
    w, h = box.overlap(best)
    if w >= need_w and h >= need_h:
        if box.width <= best.width and box.height <= best.height:
            return box
        screen = best
    else:
        cx, cy = box.x + box.width / 2, box.y + box.height / 2

        def distance(s: Box) -> float:
            dx = max(s.x - cx, 0.0, cx - (s.x + s.width))
            dy = max(s.y - cy, 0.0, cy - (s.y + s.height))
            return math.hypot(dx, dy)

        screen = min(screens, key=distance)
    width = min(box.width, screen.width)
    height = min(box.height, screen.height)
    x = min(max(box.x, screen.x), screen.x + screen.width - width)
    y = min(max(box.y, screen.y), screen.y + screen.height - height)
    return Box(x, y, width, height)
