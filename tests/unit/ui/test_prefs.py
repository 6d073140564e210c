"""Preferences: validation, persistence round trip, and how bad stored values fall back."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from voipclient.ui.prefs import (
    BOOKMARKS_KEY,
    SERVERS_KEY,
    AudioPrefs,
    BindingPref,
    Bookmark,
    MemoryBackend,
    Preferences,
    ServerPrefs,
    TransmitPrefs,
    load_preferences,
    save_preferences,
)


def full_prefs() -> Preferences:
    """Every field away from its default."""
    squad = ServerPrefs(
        bindings=(
            BindingPref("ctrl+f13", ("Squad", "Command"), latching=False),
            BindingPref("mouse4", ("Lobby",), latching=True),
        ),
        hot_mic="Squad",
        channel_volumes={"Squad": 1.5, "Lobby": 0.25},
        channel_muted=frozenset({"AFK"}),
        user_volumes={"alice": 2.0},
        user_muted=frozenset({"troll", "bot"}),
        joined=("Squad", "Lobby"),
        defaults_applied=True,
        channel_pan={"Squad": -1.0, "Command": 0.5},
        channel_colours={"Squad": "#e4572e", "Lobby": "#17bebb"},
        priority="Command",
    )
    return Preferences(
        audio=AudioPrefs(
            input_device="USB Mic",
            output_device="Headset: Stereo",
            frame_ms=10,
            bitrate=64_000,
            jitter_max_ms=500,
            noise_suppression="rnnoise",
            agc=False,
            highpass=False,
            cues=False,
            duck_db=-18.0,
            echo_cancellation="on",
        ),
        transmit=TransmitPrefs(mode="voice_activation", vad_threshold=0.73, release_ms=450),
        theme="light",
        notify_mentions=False,
        close_to_tray=True,
        overlay=True,
        username="zoë 🎧",
        setup_done=True,
        last_server="voice.example:4000",
        default_ptt="mouse4",
        default_hot_mic=True,
        bookmarks=(
            Bookmark(
                "Home 🏠",
                "voice.example",
                4000,
                "zoë",
                connect_at_start=True,
                pin="sha256/" + "A" * 43 + "=",
            ),
            Bookmark("Other", "::1"),
        ),
        servers={"voice.example:4000": squad, "other:64738": ServerPrefs(hot_mic=None)},
    )


def test_round_trip_keeps_every_field() -> None:
    backend = MemoryBackend()
    prefs = full_prefs()
    save_preferences(backend, prefs)
    loaded, problems = load_preferences(backend)
    assert problems == []
    assert loaded == prefs
    # Stored as JSON text per key, so every QSettings backend gives back the same types.
    assert all(isinstance(v, str) for v in backend.values.values())
    assert json.loads(backend.values["audio/input_device"]) == "USB Mic"


def test_full_prefs_sets_every_field_away_from_its_default() -> None:
    """So the round trips (here and across two processes) cover every preference."""
    from dataclasses import fields as dc_fields

    prefs = full_prefs()
    for owner, default in (
        (prefs, Preferences()),
        (prefs.audio, AudioPrefs()),
        (prefs.transmit, TransmitPrefs()),
        (prefs.bookmarks[0], Bookmark("", "")),
        (prefs.servers["voice.example:4000"], ServerPrefs()),
    ):
        for f in dc_fields(owner):  # type: ignore[arg-type]
            assert getattr(owner, f.name) != getattr(default, f.name), f.name


def test_values_older_versions_wrote_under_general_are_read_and_moved() -> None:
    # QSettings wrote "general/username" as [%General] and read it back as "General/username"
    backend = MemoryBackend({"General/username": '"zoë"', "General/close_to_tray": "true"})
    prefs, problems = load_preferences(backend)
    assert problems == []
    assert prefs.username == "zoë" and prefs.close_to_tray
    save_preferences(backend, prefs)
    assert "General/username" not in backend.values
    assert json.loads(backend.values["profile/username"]) == "zoë"
    assert load_preferences(backend)[0] == prefs


def test_a_bookmark_pin_must_be_a_pin() -> None:
    backend = MemoryBackend(
        {BOOKMARKS_KEY: json.dumps([{"label": "x", "host": "h", "pin": "sha256/nope"}])}
    )
    prefs, problems = load_preferences(backend)
    assert prefs.bookmarks == ()
    assert "not a key pin" in problems[0]


def test_round_trip_of_the_defaults_and_an_empty_store() -> None:
    assert load_preferences(MemoryBackend()) == (Preferences(), [])
    backend = MemoryBackend()
    save_preferences(backend, Preferences())
    assert load_preferences(backend) == (Preferences(), [])
    assert json.loads(backend.values["audio/input_device"]) is None


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        ("audio/frame_ms", "30", "frame size must be 10 or 20 ms"),
        ("audio/frame_ms", "20.0", "expected int"),
        ("audio/frame_ms", "true", "expected a number"),
        ("audio/bitrate", "8000", "bitrate must be 16000..128000"),
        ("audio/bitrate", '"32000"', "expected int"),
        ("audio/jitter_max_ms", "5000", "jitter buffer maximum must be 60..1000"),
        ("audio/noise_suppression", '"krisp"', "unknown noise suppression 'krisp'"),
        ("audio/noise_suppression", "{not json", "Expecting property name"),
        ("audio/agc", "1", "expected bool"),
        ("audio/highpass", '"yes"', "expected bool"),
        ("audio/cues", "null", "expected bool"),
        ("audio/duck_db", "6", "ducking must be -40..0 dB"),
        ("audio/echo_cancellation", '"loud"', "unknown echo cancellation 'loud'"),
        ("audio/input_device", "42", "expected str"),
        ("audio/output_device", "[]", "expected str"),
        ("transmit/mode", '"always"', "unknown transmission mode 'always'"),
        ("transmit/vad_threshold", "1.5", "activation threshold must be 0..1"),
        ("transmit/vad_threshold", "NaN", "activation threshold must be 0..1, not nan"),
        ("transmit/vad_threshold", "false", "expected float"),
        ("transmit/release_ms", "-1", "release delay must be 0..2000"),
        ("appearance/theme", '"blue"', "unknown theme 'blue'"),
        ("appearance/theme", "3", "expected str"),
        ("notifications/mentions", '"no"', "expected bool"),
        ("app/close_to_tray", "0", "expected bool"),
        ("profile/username", "null", "expected str"),
    ],
)
def test_a_bad_value_names_its_key_and_falls_back(key: str, raw: str, reason: str) -> None:
    backend = MemoryBackend()
    save_preferences(backend, full_prefs())
    backend.set_value(key, raw)
    loaded, problems = load_preferences(backend)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ")
    assert reason in problems[0]
    assert problems[0].endswith("(using the default)")
    # That value falls back to its default; every other value is kept.
    section, _, name = key.partition("/")
    attr = {
        "mentions": "notify_mentions",
    }.get(name, name)
    default, expected = Preferences(), full_prefs()
    if section in ("audio", "transmit"):
        expected = replace(
            expected,
            **{
                section: replace(
                    getattr(expected, section), **{attr: getattr(getattr(default, section), attr)}
                )
            },
        )
    else:
        expected = replace(expected, **{attr: getattr(default, attr)})
    assert loaded == expected


def test_a_non_string_stored_value_is_reported() -> None:
    backend = MemoryBackend()
    backend.values["audio/bitrate"] = 64000  # type: ignore[assignment] - a hand-edited INI
    loaded, problems = load_preferences(backend)
    assert problems == ["audio/bitrate: not JSON text: 64000 (using the default)"]
    assert loaded.audio.bitrate == AudioPrefs().bitrate


def test_several_bad_values_in_one_section_cost_only_themselves() -> None:
    backend = MemoryBackend()
    backend.set_value("audio/frame_ms", "10")
    backend.set_value("audio/bitrate", "1")
    backend.set_value("audio/jitter_max_ms", "2")
    backend.set_value("audio/agc", "false")
    loaded, problems = load_preferences(backend)
    assert [p.split(":")[0] for p in problems] == ["audio/bitrate", "audio/jitter_max_ms"]
    assert loaded.audio == AudioPrefs(frame_ms=10, agc=False)


def test_a_nullable_device_accepts_null() -> None:
    backend = MemoryBackend({"audio/input_device": "null", "audio/output_device": '"pulse"'})
    loaded, problems = load_preferences(backend)
    assert problems == []
    assert loaded.audio.input_device is None and loaded.audio.output_device == "pulse"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("[{", "Expecting"),
        ('{"label": "x"}', "expected a list"),
        ("null", "expected a list"),
    ],
)
def test_unreadable_bookmarks_load_none(raw: str, reason: str) -> None:
    loaded, problems = load_preferences(MemoryBackend({BOOKMARKS_KEY: raw}))
    assert loaded.bookmarks == ()
    assert len(problems) == 1
    assert problems[0].startswith(f"{BOOKMARKS_KEY}: ") and reason in problems[0]
    assert problems[0].endswith("(no saved servers loaded)")


def test_a_bad_bookmark_is_skipped_and_the_rest_kept() -> None:
    entries = [
        {"label": "ok", "host": "a.example", "port": 1, "username": "me"},
        "not an object",
        {"label": "no host", "host": " "},
        {"label": "bad port", "host": "b.example", "port": 70000},
        {"label": "bool port", "host": "b.example", "port": True},
        {"label": 5, "host": "c.example"},
        {"label": "defaults", "host": "d.example"},
    ]
    loaded, problems = load_preferences(MemoryBackend({BOOKMARKS_KEY: json.dumps(entries)}))
    assert loaded.bookmarks == (
        Bookmark("ok", "a.example", 1, "me"),
        Bookmark("defaults", "d.example"),
    )
    assert loaded.bookmarks[1].key == "d.example:64738"
    assert problems == [
        f"{BOOKMARKS_KEY} entry 2: expected an object (skipped)",
        f"{BOOKMARKS_KEY} entry 3: a server needs a host (skipped)",
        f"{BOOKMARKS_KEY} entry 4: port must be 1..65535, not 70000 (skipped)",
        f"{BOOKMARKS_KEY} entry 5: expected a number, not True (skipped)",
        f"{BOOKMARKS_KEY} entry 6: expected str, not 5 (skipped)",
    ]


@pytest.mark.parametrize(("raw", "reason"), [("{", "Expecting"), ("[]", "expected an object")])
def test_unreadable_servers_load_none(raw: str, reason: str) -> None:
    loaded, problems = load_preferences(MemoryBackend({SERVERS_KEY: raw}))
    assert loaded.servers == {}
    assert len(problems) == 1
    assert problems[0].startswith(f"{SERVERS_KEY}: ") and reason in problems[0]
    assert problems[0].endswith("(per-server settings not loaded)")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("x", "expected an object"),
        ({"bindings": ["f13"]}, "binding: expected an object"),
        ({"bindings": [{"keys": "", "channels": ["A"]}]}, "a binding needs keys"),
        ({"bindings": [{"keys": "f13", "channels": []}]}, "talks to no channel"),
        ({"bindings": [{"keys": "f13", "channels": "A"}]}, "expected a list of names"),
        ({"bindings": [{"keys": "f13", "channels": ["A"], "latching": 1}]}, "expected bool"),
        ({"bindings": 5}, "not iterable"),
        ({"hot_mic": 3}, "expected str"),
        ({"channel_volumes": {"A": 3.0}}, "volume must be 0..2, not 3.0"),
        ({"channel_volumes": {"A": "loud"}}, "expected float"),
        ({"channel_volumes": []}, "channel volumes: expected an object"),
        ({"user_volumes": {"bob": -0.5}}, "user volumes 'bob': volume must be 0..2"),
        ({"channel_muted": [1]}, "muted channels: expected a list of names"),
        ({"user_muted": "bob"}, "muted users: expected a list of names"),
        ({"joined": {"A": 1}}, "joined channels: expected a list of names"),
    ],
)
def test_a_bad_server_entry_is_skipped_and_the_rest_kept(entry: object, reason: str) -> None:
    good = {"bindings": [{"keys": "f13", "channels": ["A"]}], "hot_mic": "A"}
    raw = json.dumps({"bad:1": entry, "good:2": good})
    loaded, problems = load_preferences(MemoryBackend({SERVERS_KEY: raw}))
    assert list(loaded.servers) == ["good:2"]
    assert loaded.server("good:2") == ServerPrefs(
        bindings=(BindingPref("f13", ("A",)),), hot_mic="A"
    )
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{SERVERS_KEY} bad:1: ") and reason in problems[0]
    assert problems[0].endswith("(skipped)")


def test_server_helpers() -> None:
    prefs = Preferences()
    assert prefs.server("x:1") == ServerPrefs()
    updated = prefs.with_server("x:1", ServerPrefs(hot_mic="A"))
    assert updated.server("x:1").hot_mic == "A"
    assert prefs.servers == {}  # the original is unchanged


def test_checks_name_the_problem() -> None:
    with pytest.raises(ValueError, match="frame size must be 10 or 20 ms, not 15"):
        AudioPrefs(frame_ms=15).check()
    with pytest.raises(ValueError, match=r"release delay must be 0\.\.2000 ms, not 2001"):
        TransmitPrefs(release_ms=2001).check()
    with pytest.raises(ValueError, match="binding 'f13' talks to no channel"):
        BindingPref("f13", ()).check()
    with pytest.raises(ValueError, match=r"port must be 1\.\.65535, not 0"):
        Bookmark("x", "h", 0).check()


def test_memory_backend_remove() -> None:
    backend = MemoryBackend({"a": "1"})
    backend.remove("a")
    backend.remove("missing")
    assert backend.value("a") is None and backend.values == {}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("channel_pan", {"Squad": 1.5}, "channel placement 'Squad': must be -1..1"),
        ("channel_pan", [], "channel placement: expected an object"),
        ("channel_colours", {"Squad": "red"}, "channel colour 'Squad': expected #rrggbb"),
        ("priority", 3, "expected str"),
    ],
)
def test_a_bad_channel_setting_names_the_server(field: str, value: object, reason: str) -> None:
    backend = MemoryBackend()
    save_preferences(backend, full_prefs())
    servers = json.loads(str(backend.value(SERVERS_KEY)))
    servers["voice.example:4000"][field] = value
    backend.set_value(SERVERS_KEY, json.dumps(servers))
    loaded, problems = load_preferences(backend)
    assert len(problems) == 1 and reason in problems[0], problems
    assert "voice.example:4000" in problems[0]
    assert loaded.servers["other:64738"] == ServerPrefs()  # the other servers are kept
