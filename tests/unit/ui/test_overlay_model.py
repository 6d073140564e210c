"""The game overlay's pure side: channel colours, the rows drawn for a state, the remembered
settings (garbage in, defaults out) and bringing a lost window back onto a screen."""

from __future__ import annotations

import colorsys
import json
import math

import pytest

from voipclient.ui.model import ChannelRow, MemberRow
from voipclient.ui.overlay_model import (
    CHANNEL_PALETTE,
    DEFAULT_MAX_ROWS,
    DEFAULT_OPACITY,
    OVERLAY_SETTINGS_KEY,
    Box,
    OverlayChannel,
    OverlayRow,
    OverlaySettings,
    OverlayState,
    OverlayTalker,
    clamp_opacity,
    clean_text,
    default_channel_colour,
    load_overlay_settings,
    normalise_colour,
    overlay_rows,
    overlay_state,
    place_on_screens,
    save_overlay_settings,
)
from voipclient.ui.prefs import MemoryBackend

GENERAL, SQUAD, AFK = 1, 2, 3
STATE = OverlayState(
    channels=(
        OverlayChannel(GENERAL, "General", "#2C8ACE", can_transmit=True, key="f13"),
        OverlayChannel(SQUAD, "Squad A", "#e64f4f", transmitting=True, can_transmit=True),
        OverlayChannel(AFK, "AFK", "not a colour"),
    ),
    talkers=(
        OverlayTalker("Zed", AFK),
        OverlayTalker("Bob", SQUAD),
        OverlayTalker("Alice", GENERAL),
        OverlayTalker("Ghost", 99),  # a channel we are not in: not shown
        OverlayTalker("Amy", SQUAD),
    ),
)


# --- colours -------------------------------------------------------------------------------------


def _luminance(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(int(colour[i : i + 2], 16) / 255) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def test_the_palette_is_distinct_and_readable_on_both_themes() -> None:
    assert len(CHANNEL_PALETTE) == 10
    assert len(set(CHANNEL_PALETTE)) == len(CHANNEL_PALETTE)
    for colour in CHANNEL_PALETTE:
        assert colour == colour.lower() and len(colour) == 7 and colour.startswith("#")
        # the dark and light themes' backgrounds and the overlay's panel
        for background in ("#ffffff", "#f2f3f5", "#1e1f22", "#2b2d31", "#313338", "#111214"):
            assert _contrast(colour, background) >= 3.3, (colour, background)

    def hue(colour: str) -> float:
        rgb = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        return colorsys.rgb_to_hls(*rgb)[0] * 360

    hues = [hue(c) for c in CHANNEL_PALETTE]
    for i, h in enumerate(hues):  # neighbours (also last → first) look clearly different
        step = abs(h - hues[(i + 1) % len(hues)])
        assert min(step, 360 - step) >= 90, (CHANNEL_PALETTE[i], step)
    for i, a in enumerate(hues):  # and no two are the same hue
        for b in hues[i + 1 :]:
            assert min(abs(a - b), 360 - abs(a - b)) >= 20


def test_default_colours_cycle_through_the_palette() -> None:
    assert [default_channel_colour(i) for i in range(10)] == list(CHANNEL_PALETTE)
    assert default_channel_colour(10) == default_channel_colour(0)
    assert default_channel_colour(123) == CHANNEL_PALETTE[3]
    assert default_channel_colour(-1) == CHANNEL_PALETTE[-1]  # never an IndexError
    assert default_channel_colour(1) != default_channel_colour(2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("#E64F4F", "#e64f4f"),
        (" #e64f4f ", "#e64f4f"),
        ("", CHANNEL_PALETTE[7]),
        (None, CHANNEL_PALETTE[7]),
        ("red", CHANNEL_PALETTE[7]),
        ("#fff", CHANNEL_PALETTE[7]),
        ("#e64f4f00", CHANNEL_PALETTE[7]),
        (0xE64F4F, CHANNEL_PALETTE[7]),
    ],
)
def test_normalise_colour(value: object, expected: str) -> None:
    assert normalise_colour(value, 7) == expected


# --- rows ----------------------------------------------------------------------------------------


def test_rows_our_voice_first_then_talkers_by_channel() -> None:
    rows = overlay_rows(STATE)
    assert [r.text for r in rows] == [
        "You → General (f13)",
        "You → Squad A",
        "Alice → General",
        "Bob → Squad A",
        "Amy → Squad A",
        "Zed → AFK",
    ]
    assert [r.kind for r in rows] == [
        "ready",
        "transmitting",
        "talking",
        "talking",
        "talking",
        "talking",
    ]
    general, squad, alice, _bob, _amy, zed = rows
    assert general == OverlayRow("ready", "You", "General", "#2c8ace", "f13", GENERAL)
    assert squad.colour == "#e64f4f" and squad.channel_id == SQUAD
    assert alice.colour == "#2c8ace" and alice.channel == "General"
    assert zed.colour == default_channel_colour(AFK)  # its colour was garbage


def test_idle_rows_can_be_hidden_and_need_a_way_to_transmit() -> None:
    rows = overlay_rows(STATE, show_idle=False)
    assert [r.text for r in rows][:2] == ["You → Squad A", "Alice → General"]
    # AFK has no key: no row for us there, lit or not
    assert not any(r.name == "You" and r.channel == "AFK" for r in overlay_rows(STATE))
    # transmitting shows even without a key (e.g. an admin's whisper)
    lone = OverlayState((OverlayChannel(AFK, "AFK", transmitting=True),))
    assert [r.kind for r in overlay_rows(lone, show_idle=False)] == ["transmitting"]


def test_empty_state_draws_nothing() -> None:
    assert overlay_rows(OverlayState()) == ()
    quiet = OverlayState((OverlayChannel(AFK, "AFK"),), (OverlayTalker("x", 42),))
    assert overlay_rows(quiet) == ()


def test_too_many_rows_drop_idle_rows_first_then_end_with_more() -> None:
    channels = tuple(
        OverlayChannel(i, f"C{i}", can_transmit=True, transmitting=i == 1) for i in range(1, 4)
    )
    talkers = tuple(OverlayTalker(f"user{i}", 1 + i % 3) for i in range(10))
    state = OverlayState(channels, talkers)
    assert len(overlay_rows(state, max_rows=20)) == 13  # 3 of ours + 10 talkers

    rows = overlay_rows(state, max_rows=11)  # the two unlit rows make room, nothing else goes
    assert len(rows) == 11
    assert [r.kind for r in rows].count("ready") == 0
    assert rows[0].text == "You → C1"
    assert rows[-1].kind == "talking"

    rows = overlay_rows(state)  # 8: 7 rows and "+4 more"
    assert len(rows) == DEFAULT_MAX_ROWS
    assert rows[-1] == OverlayRow("more", "+4 more")
    assert rows[-1].text == "+4 more"
    assert rows[0].kind == "transmitting"

    assert overlay_rows(state, max_rows=1) == (OverlayRow("more", "+11 more"),)
    assert overlay_rows(state, max_rows=0) == overlay_rows(state, max_rows=1)


def test_names_are_one_line() -> None:
    assert clean_text("a\nb\tc\u2028d\x00e  f ") == "a b c d e f"
    state = OverlayState((OverlayChannel(1, "Squad\nA"),), (OverlayTalker("Eve\r\nil", 1),))
    assert overlay_rows(state)[0].text == "Eve il → Squad A"


def _member(sender: int, name: str, *, me: bool = False, talking: bool = False) -> MemberRow:
    return MemberRow(sender, name, me, False, False, talking, "tofu", False, 1.0, True)


def _channel(
    cid: int,
    name: str,
    members: tuple[MemberRow, ...],
    *,
    joined: bool = True,
    keys: tuple[str, ...] = (),
    hot_mic: bool = False,
    may_speak: bool = True,
    colour: str = "",
) -> ChannelRow:
    return ChannelRow(
        id=cid,
        parent=None,
        depth=0,
        name=name,
        description="",
        password_protected=False,
        joined=joined,
        may_speak=may_speak,
        members=members,
        talking=any(m.talking for m in members),
        ptt_keys=keys,
        hot_mic=hot_mic,
        volume=1.0,
        muted=False,
        colour=colour,
        slot=cid,  # its place in the tree: here, its id
    )


def test_state_from_the_window_model_rows() -> None:
    rows = (
        _channel(
            GENERAL,
            "General",
            (_member(10, "me", me=True), _member(11, "bob", talking=True)),
            keys=("f13",),
            hot_mic=True,
            colour="#d848c0",
        ),
        _channel(SQUAD, "Squad A", (_member(10, "me", me=True, talking=True),)),
        _channel(AFK, "AFK", (_member(12, "eve", talking=True),), joined=False),
        _channel(4, "Stage", (_member(10, "me", me=True),), keys=("f14",), may_speak=False),
    )
    state = overlay_state(rows)
    assert state == OverlayState(
        channels=(
            OverlayChannel(GENERAL, "General", "#d848c0", False, True, "f13 · hot mic"),
            OverlayChannel(SQUAD, "Squad A", default_channel_colour(SQUAD), True, False, ""),
            OverlayChannel(4, "Stage", default_channel_colour(4), False, False, "f14"),
        ),
        talkers=(OverlayTalker("bob", GENERAL),),  # not us, not a channel we left
    )
    assert [r.text for r in overlay_rows(state)] == [
        "You → General (f13 · hot mic)",
        "You → Squad A",
        "bob → General",
    ]
    picked = overlay_state(rows, colour=lambda row: "#59931F")
    assert {c.colour for c in picked.channels} == {"#59931f"}


# --- settings ------------------------------------------------------------------------------------


def test_settings_round_trip_through_json() -> None:
    settings = OverlaySettings(Box(-1900, 40, 320, 210), 0.55, False, False, 5)
    data = settings.to_dict()
    assert data == {
        "version": 1,
        "x": -1900,
        "y": 40,
        "width": 320,
        "height": 210,
        "opacity": 0.55,
        "locked": False,
        "show_idle": False,
        "max_rows": 5,
    }
    assert OverlaySettings.from_dict(json.loads(json.dumps(data))) == settings
    assert OverlaySettings.from_dict(OverlaySettings().to_dict()) == OverlaySettings()

    backend = MemoryBackend()
    save_overlay_settings(backend, settings)
    assert json.loads(backend.values[OVERLAY_SETTINGS_KEY]) == data
    assert load_overlay_settings(backend) == settings


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "junk",
        42,
        [1, 2],
        {"opacity": "0.5", "locked": "no", "show_idle": 1, "max_rows": "8"},
        {"opacity": math.nan, "max_rows": math.inf, "x": math.nan, "y": 0, "width": 1, "height": 1},
        {"opacity": True, "locked": None, "x": True, "y": 1, "width": 200, "height": 100},
        {"x": 10, "y": 10, "width": 200},  # no height: no geometry at all
        {1: 2, "x": [], "y": {}, "width": "wide", "height": None},
    ],
)
def test_garbage_settings_give_defaults(raw: object) -> None:
    assert OverlaySettings.from_dict(raw) == OverlaySettings()


def test_settings_out_of_range_are_clamped() -> None:
    s = OverlaySettings.from_dict(
        {"opacity": 0.01, "max_rows": 0, "x": -1e12, "y": 3.7, "width": 5, "height": 10**9}
    )
    assert s.opacity == 0.2
    assert s.max_rows == 1
    assert s.geometry == Box(-100_000, 3, 80, 100_000)
    assert OverlaySettings.from_dict({"opacity": 7, "max_rows": 500}).opacity == 1.0
    assert OverlaySettings.from_dict({"max_rows": 500}).max_rows == 30


def test_clamp_opacity() -> None:
    assert clamp_opacity(0.5) == 0.5
    assert clamp_opacity(0) == 0.2
    assert clamp_opacity(1.5) == 1.0
    assert clamp_opacity(math.nan) == DEFAULT_OPACITY
    assert clamp_opacity(-math.inf, 0.4) == 0.4
    assert clamp_opacity("0.7") == DEFAULT_OPACITY
    assert clamp_opacity(None, 0.3) == 0.3


@pytest.mark.parametrize(
    "stored",
    [None, 17, "", "{", "[]", '"text"', '{"opacity": 1e999}', "[" * 100_000, "1" * 5000],
)
def test_unreadable_stored_settings_load_as_defaults(stored: object) -> None:
    backend = MemoryBackend()
    if stored is not None:
        backend.values[OVERLAY_SETTINGS_KEY] = stored  # type: ignore[assignment]
    assert load_overlay_settings(backend) == OverlaySettings()


# --- screens -------------------------------------------------------------------------------------

LEFT = Box(-1920, 0, 1920, 1080)
MAIN = Box(0, 0, 2560, 1400)  # its available area (a panel at the bottom)


def test_a_visible_place_is_kept() -> None:
    assert place_on_screens(Box(100, 100, 300, 200), [MAIN]) == Box(100, 100, 300, 200)
    assert place_on_screens(Box(-400, 50, 300, 200), [LEFT, MAIN]) == Box(-400, 50, 300, 200)
    # mostly off the edge but a grabbable part still shows: the user put it there
    assert place_on_screens(Box(2500, 1350, 300, 200), [MAIN]) == Box(2500, 1350, 300, 200)
    assert place_on_screens(Box(9999, 9999, 10, 10), []) == Box(9999, 9999, 10, 10)
    # a monitor edge is not a reason to move a window that spans two
    assert place_on_screens(Box(-100, 50, 300, 200), [LEFT, MAIN]) == Box(-100, 50, 300, 200)


def test_a_place_larger_than_its_screen_is_shrunk_onto_it() -> None:
    assert place_on_screens(Box(10, 10, 9000, 9000), [MAIN]) == Box(0, 0, 2560, 1400)
    assert place_on_screens(Box(-1910, 500, 2000, 300), [LEFT, MAIN]) == Box(-1920, 500, 1920, 300)


def test_a_lost_place_moves_to_the_nearest_screen() -> None:
    # the left monitor is gone: back onto the main one, at its left edge
    assert place_on_screens(Box(-1500, 300, 300, 200), [MAIN]) == Box(0, 300, 300, 200)
    assert place_on_screens(Box(5000, -4000, 300, 200), [MAIN]) == Box(2260, 0, 300, 200)
    # only a sliver shows: not enough to grab it
    assert place_on_screens(Box(2540, 100, 300, 200), [MAIN]) == Box(2260, 100, 300, 200)
    # nearest to the left monitor: there, and shrunk to fit it
    assert place_on_screens(Box(-9000, 100, 4000, 3000), [LEFT, MAIN]) == Box(-1920, 0, 1920, 1080)
