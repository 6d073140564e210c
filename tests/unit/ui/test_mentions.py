"""Mention parsing, highlighting spans and completion (pure: no Qt)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from voipclient.ui.mentions import (
    HERE,
    Completion,
    Mention,
    apply_completion,
    complete,
    find_mentions,
    mentions_user,
)

NAMES = ["alice", "Albert", "bob", "bob.smith", "me", "mel", "x_y", "Zoë"]


def spans(text: str, names: list[str] = NAMES) -> list[tuple[str, str]]:
    return [(text[m.start : m.end], m.name) for m in find_mentions(text, names)]


# --- find_mentions -----------------------------------------------------------------------------


def test_finds_known_names_with_positions() -> None:
    text = "hi @alice and @bob"
    assert find_mentions(text, NAMES) == [Mention(3, 9, "alice"), Mention(14, 18, "bob")]


def test_case_insensitive_and_canonical_name() -> None:
    assert spans("@ALICE @albert @zOË") == [("@ALICE", "alice"), ("@albert", "Albert"),
                                            ("@zOË", "Zoë")]  # fmt: skip


def test_longest_known_name_wins() -> None:
    assert spans("@bob.smith hi") == [("@bob.smith", "bob.smith")]
    assert spans("@mel") == [("@mel", "mel")]


def test_name_must_end_at_a_boundary() -> None:
    assert spans("@melody @alice2 @bob_") == []
    # punctuation ends a name
    assert spans("@bob. @alice, @me! (@mel) @bob's") == [
        ("@bob", "bob"),
        ("@alice", "alice"),
        ("@me", "me"),
        ("@mel", "mel"),
        ("@bob", "bob"),
    ]
    # a shorter name matches when the longer candidate does not end at a boundary
    assert spans("@bob.smithy") == [("@bob", "bob")]


def test_at_must_start_the_text_or_follow_whitespace_or_punctuation() -> None:
    assert spans("mail@alice.org me@bob") == []
    assert spans("@alice\n@bob\t@me (@mel) '@x_y' [@alice]") == [
        ("@alice", "alice"),
        ("@bob", "bob"),
        ("@me", "me"),
        ("@mel", "mel"),
        ("@x_y", "x_y"),
        ("@alice", "alice"),
    ]
    assert spans("_@alice 9@alice") == []


def test_unknown_names_and_bare_at_are_ignored() -> None:
    assert spans("@carol @ @@ @") == []
    assert find_mentions("", NAMES) == []


def test_here_mentions_everyone() -> None:
    (mention,) = find_mentions("ready? @HERE", NAMES)
    assert mention == Mention(7, 12, HERE)
    assert mention.everyone
    assert not find_mentions("@alice", NAMES)[0].everyone
    assert spans("@hereford") == []


def test_names_with_special_characters() -> None:
    names = ["a+b", "[x]", "dot.", "ü"]
    assert spans("@a+b hi @[x] @dot. @Ü", names) == [
        ("@a+b", "a+b"),
        ("@[x]", "[x]"),
        ("@dot.", "dot."),
        ("@Ü", "ü"),
    ]


def test_names_differing_only_in_case_prefer_the_typed_spelling() -> None:
    assert spans("@Bob @bob @BOB", ["bob", "Bob"]) == [
        ("@Bob", "Bob"),
        ("@bob", "bob"),
        ("@BOB", "Bob"),
    ]


def test_empty_names_are_ignored() -> None:
    assert find_mentions("@ @x", ["", "x"]) == [Mention(2, 4, "x")]


# --- mentions_user -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@me", True),
        ("hey @ME, look", True),
        ("(@me)", True),
        ("@here", True),
        ("@mel", False),
        ("@melody", False),
        ("me@me", False),
        ("mention me", False),
        ("@alice", False),
        ("", False),
    ],
)
def test_mentions_user(text: str, expected: bool) -> None:
    assert mentions_user(text, "me", ["alice", "mel"]) is expected


def test_mentions_user_adds_own_name_to_the_known_names() -> None:
    assert mentions_user("@me", "me", [])
    assert not mentions_user("@me", "", ["me"])
    assert mentions_user("@here", "", [])


# --- complete / apply_completion ---------------------------------------------------------------


def test_completes_prefix_before_cursor() -> None:
    completion = complete("hi @al", 6, NAMES)
    assert completion == Completion(start=3, end=6, prefix="al", candidates=("Albert", "alice"))
    assert apply_completion("hi @al", 6, completion, "alice") == ("hi @alice ", 10)


def test_prefix_matches_come_before_substring_matches() -> None:
    completion = complete("@e", 2, ["bob", "Eve", "mel", "me", "ed"])
    assert completion is not None
    assert completion.candidates == ("ed", "Eve", "here", "me", "mel")
    assert complete("@e", 2, ["eve"], include_here=False) == Completion(0, 2, "e", ("eve",))


def test_bare_at_offers_everyone_sorted() -> None:
    completion = complete("@", 1, ["bob", "Alice"])
    assert completion is not None
    assert completion.candidates == ("Alice", "bob", "here")


def test_no_completion() -> None:
    assert complete("", 0, NAMES) is None
    assert complete("hello", 5, NAMES) is None
    assert complete("mail@al", 7, NAMES) is None  # "@" inside a word
    assert complete("@al done", 8, NAMES) is None  # cursor past the word
    assert complete("@zzz", 4, NAMES) is None  # nothing matches
    assert complete("@" + "a" * 65, 66, ["a" * 70]) is None


def test_completion_uses_the_word_at_the_cursor_only() -> None:
    text = "@bob and @al"
    completion = complete(text, len(text), NAMES)
    assert completion is not None
    assert (completion.start, completion.prefix) == (9, "al")
    # with the cursor inside the first word
    completion = complete(text, 3, NAMES)
    assert completion is not None
    assert (completion.start, completion.end, completion.prefix) == (0, 4, "bo")


def test_completion_after_punctuation_and_double_at() -> None:
    completion = complete("(@al", 4, NAMES)
    assert completion is not None
    assert completion.start == 1
    completion = complete("@@al", 4, NAMES)
    assert completion is not None
    assert (completion.start, completion.prefix) == (1, "al")


def test_completion_inside_a_word_replaces_the_whole_word() -> None:
    text = "@alxyz, ok"
    completion = complete(text, 3, NAMES)
    assert completion is not None
    assert completion.end == 6
    assert apply_completion(text, 3, completion, "alice") == ("@alice , ok", 7)


def test_apply_reuses_a_following_space() -> None:
    text = "@al rest"
    completion = complete(text, 3, NAMES)
    assert completion is not None
    assert apply_completion(text, 3, completion, "alice") == ("@alice rest", 7)


def test_apply_keeps_a_following_newline() -> None:
    text = "@al\nrest"
    completion = complete(text, 3, NAMES)
    assert completion is not None
    assert apply_completion(text, 3, completion, "alice") == ("@alice \nrest", 7)


def test_complete_rejects_cursor_outside_text() -> None:
    with pytest.raises(ValueError, match="cursor"):
        complete("@al", 4, NAMES)
    with pytest.raises(ValueError, match="cursor"):
        complete("@al", -1, NAMES)


def test_apply_rejects_a_stale_completion() -> None:
    completion = complete("hi @al", 6, NAMES)
    assert completion is not None
    with pytest.raises(ValueError, match="does not match"):
        apply_completion("hi al", 5, completion, "alice")
    with pytest.raises(ValueError, match="does not match"):
        apply_completion("hi @al", 2, completion, "alice")
    with pytest.raises(ValueError, match="empty"):
        apply_completion("hi @al", 6, completion, "")


def test_completion_handles_astral_characters() -> None:
    text = "😀 @al"
    completion = complete(text, len(text), NAMES)
    assert completion is not None
    assert apply_completion(text, len(text), completion, "alice") == ("😀 @alice ", 9)


# --- properties --------------------------------------------------------------------------------

NAME_CHARS = "abcABCxyz019._-"
name_strategy = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12)
arbitrary_name = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Z", "Cc")), min_size=1, max_size=10
)
TEXT_CHARS = NAME_CHARS + "@ \n,.!()'"


@given(
    text=st.text(alphabet=TEXT_CHARS, max_size=80),
    names=st.lists(st.one_of(name_strategy, arbitrary_name), max_size=8),
)
def test_found_mentions_are_ordered_non_overlapping_and_map_to_names(
    text: str, names: list[str]
) -> None:
    previous_end = 0
    for mention in find_mentions(text, names):
        assert previous_end <= mention.start < mention.end <= len(text)
        assert text[mention.start] == "@"
        typed = text[mention.start + 1 : mention.end]
        assert mention.name == HERE or mention.name in names
        assert typed.casefold() == mention.name.casefold()
        # boundaries: the "@" starts the text or follows a non-word character, the name ends
        # the text or is followed by one
        before = text[mention.start - 1] if mention.start else " "
        after = text[mention.end] if mention.end < len(text) else " "
        assert not (before.isalnum() or before == "_")
        assert not (after.isalnum() or after == "_")
        previous_end = mention.end


@given(
    names=st.lists(name_strategy, min_size=1, max_size=8),
    name_index=st.integers(min_value=0),
    cut=st.integers(min_value=0),
    before=st.text(alphabet=TEXT_CHARS, max_size=20),
    after=st.text(alphabet=TEXT_CHARS, max_size=20),
    choice_index=st.integers(min_value=0),
)
def test_applied_completion_puts_the_chosen_name_at_the_cursor(
    names: list[str], name_index: int, cut: int, before: str, after: str, choice_index: int
) -> None:
    target = names[name_index % len(names)]
    prefix = target[: cut % (len(target) + 1)]
    if before and not before[-1].isspace():
        before += " "
    text = f"{before}@{prefix}{after}"
    cursor = len(before) + 1 + len(prefix)
    completion = complete(text, cursor, names)
    assert completion is not None  # the target itself matches the prefix
    assert completion.start == len(before)
    assert text[completion.start + 1 : cursor] == completion.prefix == prefix
    candidates = completion.candidates
    assert len(set(candidates)) == len(candidates)
    folded = prefix.casefold()
    assert all(folded in c.casefold() for c in candidates)
    starting = [c for c in candidates if c.casefold().startswith(folded)]
    assert list(candidates[: len(starting)]) == starting  # prefix matches first
    assert target in candidates

    choice = candidates[choice_index % len(candidates)]
    new_text, new_cursor = apply_completion(text, cursor, completion, choice)
    assert new_text[:new_cursor].endswith(f"@{choice} ")
    assert new_text.startswith(text[: completion.start])
    assert new_text.endswith(text[completion.end :])
    # what was completed is found again as a mention of the chosen name
    inserted_at = new_cursor - len(choice) - 2
    found = {(m.start, m.name.casefold()) for m in find_mentions(new_text, names)}
    assert (inserted_at, choice.casefold()) in found


@given(
    before=st.text(alphabet=TEXT_CHARS, max_size=20),
    after=st.text(alphabet=TEXT_CHARS, max_size=20),
    names=st.lists(arbitrary_name, min_size=1, max_size=6),
    pick=st.tuples(st.integers(min_value=0), st.integers(min_value=0), st.integers(min_value=0)),
    choice_index=st.integers(min_value=0),
)
def test_any_completion_applies(
    before: str, after: str, names: list[str], pick: tuple[int, int, int], choice_index: int
) -> None:
    # "@" + a piece of some name, typed anywhere in arbitrary text
    name = names[pick[0] % len(names)]
    start = pick[1] % (len(name) + 1)
    piece = name[start : start + pick[2] % (len(name) + 1)]
    text = f"{before}@{piece}{after}"
    cursor = len(before) + 1 + len(piece)
    completion = complete(text, cursor, names)
    assume(completion is not None)
    assert completion is not None
    assert completion.start < cursor <= completion.end
    choice = completion.candidates[choice_index % len(completion.candidates)]
    new_text, new_cursor = apply_completion(text, cursor, completion, choice)
    assert new_text[:new_cursor].endswith(f"@{choice} ")
    assert new_text[new_cursor:] == text[completion.end :].removeprefix(" ")
