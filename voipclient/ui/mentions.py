"""``@name`` mentions in chat text: finding them, and completing a name being typed.

Pure (no Qt): the chat panel (:mod:`voipclient.ui.chat`) renders and completes with these.

Rules (shared by :func:`find_mentions` and :func:`complete`):

* A mention is ``@`` followed by a known name. The ``@`` must start the text or follow a character
  that is not a word character (whitespace or punctuation), so ``mail@alice`` is no mention.
* Names match case-insensitively and must end at a boundary: the end of the text or a non-word
  character. With ``me`` known, ``@mel`` is no mention of ``me``; ``@me.`` and ``@me,`` are.
* When several known names fit at one ``@`` the longest wins (``@bob.smith`` mentions
  ``bob.smith``, not ``bob``).
* ``@here`` mentions everyone in the channel (:data:`HERE`). It always means that, also where a
  user happens to be called "here".

Positions are indices into the ``str`` (code points), as Python slices them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HERE",
    "Completion",
    "Mention",
    "apply_completion",
    "complete",
    "find_mentions",
    "mentions_user",
]

#: The name in ``@here``: mentions everyone in the channel.
HERE: Final = "here"

#: Longest prefix (code points) that :func:`complete` will try to complete; user names are at most
#: 64 characters, so anything longer cannot match.
_MAX_PREFIX: Final = 64

#: Characters (besides letters and digits) that continue a completion word after the cursor.
_WORD_TAIL: Final = "_-"


@dataclass(frozen=True, slots=True)
class Mention:
    """One ``@name`` in a text."""

    #: Index of the ``@``.
    start: int
    #: Index just past the name (exclusive), so ``text[start:end]`` is ``"@" + the typed name``.
    end: int
    #: The name as given in ``names`` (its spelling, not the typed case), or :data:`HERE`.
    name: str

    @property
    def everyone(self) -> bool:
        """True for ``@here``."""
        return self.name == HERE


@dataclass(frozen=True, slots=True)
class Completion:
    """The ``@prefix`` being typed at the cursor and the names that could complete it."""

    #: Index of the ``@`` (start of the span a chosen name replaces).
    start: int
    #: End of the replaced span (exclusive): the cursor, extended over letters, digits, ``_`` and
    #: ``-`` right after it, so completing inside a word replaces the whole word.
    end: int
    #: What was typed between ``@`` and the cursor.
    prefix: str
    #: Names that start with the prefix (case-insensitively, sorted), then names that merely
    #: contain it (sorted). Never empty.
    candidates: tuple[str, ...]


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _can_start(text: str, at: int) -> bool:
    """Whether the ``@`` at ``at`` may start a mention (start of text, or after a non-word
    character)."""
    return at == 0 or not _is_word_char(text[at - 1])


def _ends_at_boundary(text: str, end: int) -> bool:
    return end >= len(text) or not _is_word_char(text[end])


def _sort_key(name: str) -> tuple[str, str]:
    return (name.casefold(), name)


class _NameIndex:
    """Names by length (code points), then by casefolded spelling, for longest-match lookup."""

    def __init__(self, names: Iterable[str]) -> None:
        by_length: dict[int, dict[str, list[str]]] = {}
        for name in set(names):
            if name:
                by_length.setdefault(len(name), {}).setdefault(name.casefold(), []).append(name)
        # "@here" always means everyone, whoever is called "here".
        by_length.setdefault(len(HERE), {})[HERE] = [HERE]
        for table in by_length.values():
            for spellings in table.values():
                spellings.sort()
        self._by_length = by_length
        self._lengths = sorted(by_length, reverse=True)

    def match(self, text: str, begin: int) -> tuple[str, int] | None:
        """The longest known name starting at ``begin`` and ending at a boundary, with its end."""
        remaining = len(text) - begin
        for length in self._lengths:
            if length > remaining:
                continue
            end = begin + length
            typed = text[begin:end]
            spellings = self._by_length[length].get(typed.casefold())
            if spellings is None or not _ends_at_boundary(text, end):
                continue
            # Names differing only in case: prefer the exact spelling, else the first in order.
            return (typed if typed in spellings else spellings[0]), end
        return None


def find_mentions(text: str, names: Collection[str]) -> list[Mention]:
    """Every ``@name`` of a known name (or ``@here``) in ``text``, in order, non-overlapping."""
    index = _NameIndex(names)
    found: list[Mention] = []
    at = text.find("@")
    while at != -1:
        next_from = at + 1
        if _can_start(text, at):
            hit = index.match(text, at + 1)
            if hit is not None:
                name, end = hit
                found.append(Mention(at, end, name))
                next_from = end
        at = text.find("@", next_from)
    return found


def mentions_user(text: str, me: str, names: Collection[str]) -> bool:
    """Whether ``text`` mentions ``me``: ``@me`` (any case) or ``@here``.

    ``names`` are the other known names; they matter because the longest name wins (with ``mel``
    known, ``@mel`` is not ``@me``). ``me`` is added to them.
    """
    known = set(names)
    if me:
        known.add(me)
    me_folded = me.casefold()
    return any(
        mention.everyone or (bool(me) and mention.name.casefold() == me_folded)
        for mention in find_mentions(text, known)
    )


def complete(
    text: str, cursor: int, names: Collection[str], *, include_here: bool = True
) -> Completion | None:
    """The completion for an ``@prefix`` right before ``cursor``, or None when there is none.

    ``names`` are the names to offer (the caller leaves out its own). ``@here`` is offered too
    unless ``include_here`` is False. Raises ValueError when ``cursor`` is outside ``text``.
    """
    if not 0 <= cursor <= len(text):
        raise ValueError(f"cursor {cursor} outside a text of {len(text)} characters")
    word_start = cursor
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    # The last "@" in the word that may start a mention: "@@al" completes "al".
    at = -1
    for index in range(cursor - 1, word_start - 1, -1):
        if text[index] == "@" and _can_start(text, index):
            at = index
            break
    if at < 0:
        return None
    prefix = text[at + 1 : cursor]
    if len(prefix) > _MAX_PREFIX:
        return None
    pool = {name for name in names if name}
    if include_here and all(name.casefold() != HERE for name in pool):
        pool.add(HERE)
    folded = prefix.casefold()
    starting = sorted((n for n in pool if n.casefold().startswith(folded)), key=_sort_key)
    containing = sorted(
        (n for n in pool if folded in n.casefold() and not n.casefold().startswith(folded)),
        key=_sort_key,
    )
    candidates = (*starting, *containing)
    if not candidates:
        return None
    end = cursor
    while end < len(text) and (text[end].isalnum() or text[end] in _WORD_TAIL):
        end += 1
    return Completion(start=at, end=end, prefix=prefix, candidates=candidates)


def apply_completion(
    text: str, cursor: int, completion: Completion, choice: str
) -> tuple[str, int]:
    """Replace the completion's span with ``@choice `` and return the new text and cursor (just
    after the space). A space already following the span is reused rather than doubled.

    Raises ValueError when ``completion`` does not belong to ``text`` and ``cursor`` (the text
    changed since :func:`complete`) or ``choice`` is empty.
    """
    if not choice:
        raise ValueError("cannot complete to an empty name")
    if not (
        0 <= completion.start < len(text)
        and text[completion.start] == "@"
        and completion.start < cursor <= completion.end <= len(text)
    ):
        raise ValueError("the completion does not match this text and cursor")
    head = f"{text[: completion.start]}@{choice}"
    rest = text[completion.end :]
    if rest.startswith(" "):
        return head + rest, len(head) + 1
    return f"{head} {rest}", len(head) + 1
