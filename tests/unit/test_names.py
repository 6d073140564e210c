"""User-name rules and account keys (voipclient/names.py): pure, no Qt, no I/O."""

from __future__ import annotations

import re
import time
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient import names
from voipclient.names import InvalidName, check_name, name_key, prepare_name
from voipclient.net import messages as m

#: Any code point, lone surrogates, private use and unassigned ones included.
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
#: Text close to real names, so that many examples pass and some fail late (spaces, scripts).
NAMEISH = st.text(st.sampled_from("abeoAOé 0_'-\u0301ΑΒαοАВаоѕ山田たタ한"), max_size=34)


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("bob\u200b", "U+200B ZERO WIDTH SPACE"),
        ("b\u043eb", "U+043E CYRILLIC SMALL LETTER O"),
        ("bob\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("jose\u0301", "U+0301 COMBINING ACUTE ACCENT"),
        ("bob\u00a0x", "U+00A0 NO-BREAK SPACE"),
        (" bob", "U+0020 SPACE"),
        ("a\u3164b", "U+3164 HANGUL FILLER"),
    ],
)
def test_disguised_names_are_refused_naming_the_character(name: str, named: str) -> None:
    with pytest.raises(InvalidName) as info:
        check_name(name)
    assert named in info.value.reason
    assert str(info.value) == info.value.reason
    # The reason never carries the raw character (it may be invisible or reorder the text).
    assert not any(unicodedata.category(ch).startswith("C") for ch in info.value.reason)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("x" * 33, "33 characters"),
        ("bob ", "ends with U+0020 SPACE"),
        ("Ann  Lee", "two U+0020 SPACE"),
        ("a\tb", "U+0009 <control>, a control character"),
        ("a\u2028b", "U+2028 LINE SEPARATOR"),
        ("a\u00adb", "U+00AD SOFT HYPHEN"),
        ("a\u2066b", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        ("a\ufe0fb", "U+FE0F VARIATION SELECTOR-16, an invisible (default-ignorable)"),
        ("a\u034fb", "U+034F COMBINING GRAPHEME JOINER"),
        ("\ue000", "U+E000 <private use>, a private-use character"),
        ("a\ud800", "U+D800 <surrogate>, a lone surrogate"),
        ("a\U000e0041", "U+E0041 TAG LATIN CAPITAL LETTER A"),
        ("\u212bsa", "U+212B ANGSTROM SIGN"),  # not NFC: the Ångström sign is a singleton
        ("user\u0966", "Devanagari"),  # a Devanagari zero that looks like o
        ("Алекс Smith", "mixes scripts"),
    ],
)
def test_other_refusals(name: str, why: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(why)):
        check_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "bob",
        "José",
        "Ann Lee",
        "Åsa",
        "Иван",
        "山田",
        "user_42",
        "o'brien",
        "山田たろう",  # Han with Hiragana is one (Japanese) script set
        "ΒΟΒ",  # one script: refused only because its key is taken (server)
        "x" * 32,
        "Zoë-42 [GG]",
    ],
)
def test_honest_names_are_accepted(name: str) -> None:
    assert check_name(name) == name_key(name)


def test_prepare_name_strips_and_composes() -> None:
    assert prepare_name("  jose\u0301 \n") == "jos\u00e9"
    assert check_name(prepare_name(" jose\u0301")) == name_key("josé")


def test_keys_ignore_case_and_look_alikes() -> None:
    assert name_key("bob") == name_key("Bob") == name_key("ΒΟΒ") == name_key("BOB")
    assert name_key("bob") == name_key("ВОВ") == name_key("b0b")  # Cyrillic capitals; a zero
    assert name_key("рое") == name_key("poe")  # all Cyrillic
    assert name_key("bill") == name_key("BILL") == name_key("b1ll") == name_key("biII")
    assert name_key("Иван") == name_key("ИВАН")  # case-insensitive in every script


def test_keys_keep_what_differs() -> None:
    assert name_key("josé") != name_key("jose")
    assert name_key("jos\u00e9") == name_key("jose\u0301")  # NFC and NFD spellings: one account
    assert name_key("ann") != name_key("anna")
    assert name_key("bob") != name_key("rob") != name_key("tob")
    assert len({name_key(c) for c in "abcdefghjkmnpqrstuvwxyz"}) == 23  # Latin letters stay apart


def test_name_limit_matches_the_protocol() -> None:
    assert names.MAX_NAME_LEN == m.MAX_NAME_LEN


def test_skeleton_table_builds_well_under_half_a_second() -> None:
    names._skeleton_table.cache_clear()
    start = time.perf_counter()
    table = names._skeleton_table()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    assert len(table) > 4000
    assert names._skeleton_table() is table  # built once
    # No table entry maps a character to something the table maps again (keys are fixed points).
    assert all(table.get(rep, rep) == rep for rep in table.values())


@given(st.one_of(ANY_TEXT, NAMEISH))
def test_check_name_raises_nothing_but_invalid_name(text: str) -> None:
    try:
        key = check_name(text)
    except InvalidName as exc:
        assert exc.reason
    else:
        assert key == name_key(text)


@given(st.one_of(ANY_TEXT, NAMEISH))
def test_key_is_the_same_for_every_normalization_and_idempotent(text: str) -> None:
    nfc = unicodedata.normalize("NFC", text)
    assert name_key(nfc) == name_key(
        unicodedata.normalize("NFC", unicodedata.normalize("NFD", nfc))
    )
    assert name_key(text) == name_key(unicodedata.normalize("NFD", text)) == name_key(nfc)
    assert name_key(name_key(text)) == name_key(text)


@given(st.text(st.characters(categories=("Lu", "Ll", "Lt")), min_size=1, max_size=32))
def test_key_is_case_insensitive(text: str) -> None:
    assert name_key(text) == name_key(text.casefold())
