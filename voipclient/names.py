"""User names that cannot be disguised: the rules a name must pass and the account key it maps to.

A name is what everyone sees in the member list, and the server binds it to the identity key that
first logged in with it. Both only protect anyone if two names that *look* the same are the same
account. Comparing ``casefold()`` is not enough: ``bob\\u200b`` (an invisible zero-width space),
``b\\u043eb`` (a Cyrillic о), ``bob\\u202e`` (a bidi override) and ``jose\\u0301`` (the same text as
``josé``, decomposed) all render like an existing name and would each be a new account. So:

* :func:`prepare_name` is what a client does to the text the user typed: strip the ends and
  compose it (NFC), so an honest user never trips over :func:`check_name`.
* :func:`check_name` refuses what has no business in a name: invisible, bidi, format, control,
  private-use and unassigned characters, every Default_Ignorable_Code_Point, whitespace other
  than single inner U+0020 spaces, text that is not NFC, and letters from more than one script
  (UTS #39 mixed-script detection). It returns the account key.
* :func:`name_key` is the account key: a UTS #39-style confusable skeleton of the casefolded name,
  so ``bob``, ``Bob``, ``ΒΟΒ`` (Greek capitals) and ``ВОВ`` (Cyrillic) are one account, and so are
  the NFC and NFD spellings of ``josé``, while ``josé`` and ``jose`` stay two.

The homoglyph and script data are the Unicode confusables and script tables as shipped by the
pure-Python ``confusable_homoglyphs`` package (no ICU: a native library would not fit the bundle
budget). They are loaded on first use, not at import, and the skeleton table is built once.

Everything here is pure: text in, text or :class:`InvalidName` out.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Final

__all__ = ["MAX_NAME_LEN", "InvalidName", "check_name", "name_key", "prepare_name"]

#: At most this many code points (the protocol's ``MAX_NAME_LEN``; msgspec counts code points too).
MAX_NAME_LEN: Final = 32

#: Default_Ignorable_Code_Point (DerivedCoreProperties.txt), inclusive ranges. Most are also Cf
#: or Cn, but not all: the Hangul fillers (U+115F, U+1160, U+3164, U+FFA0) are letters (Lo), and
#: the variation selectors and CGJ are marks (Mn), yet all of them render as nothing.
_DEFAULT_IGNORABLE: Final[tuple[tuple[int, int], ...]] = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)

#: General categories a name never contains, with what to call them in the refusal. Cf covers the
#: bidi controls (U+202A-202E, U+2066-2069) and the zero-width characters.
_FORBIDDEN_CATEGORIES: Final[Mapping[str, str]] = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Cs": "a lone surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
}

#: Scripts that never make a name mixed (punctuation, digits, symbols; combining marks).
_NEUTRAL_SCRIPTS: Final = frozenset({"COMMON", "INHERITED"})

#: UTS #39 augmented script sets: Japanese writes Han with Hiragana and Katakana, Korean Han with
#: Hangul, Chinese Han with Bopomofo, so those mixes are one script for the mixed-script rule.
_AUGMENTED_SCRIPTS: Final[Mapping[str, frozenset[str]]] = {
    "HAN": frozenset({"HAN", "JAPANESE", "KOREAN", "HAN_BOPOMOFO"}),
    "HIRAGANA": frozenset({"HIRAGANA", "JAPANESE"}),
    "KATAKANA": frozenset({"KATAKANA", "JAPANESE"}),
    "HANGUL": frozenset({"HANGUL", "KOREAN"}),
    "BOPOMOFO": frozenset({"BOPOMOFO", "HAN_BOPOMOFO"}),
}

#: The JSON data wraps right-to-left characters in U+200E LEFT-TO-RIGHT MARKs for display.
_LRM: Final = "\u200e"


class InvalidName(ValueError):
    """A name :func:`check_name` refuses. ``reason`` is one human sentence saying why, naming an
    offending character as ``U+200B ZERO WIDTH SPACE`` (never the raw character, which may be
    invisible or reorder the text it is shown in)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: Final = reason


def prepare_name(name: str) -> str:
    """The name to send for what the user typed: ends stripped and NFC-composed, so a name typed
    or pasted with a stray space or in decomposed form passes :func:`check_name` as it looks."""
    return unicodedata.normalize("NFC", name.strip())


def check_name(name: str) -> str:
    """Validate ``name`` as sent on the wire and return its account key (:func:`name_key`).

    Raises :class:`InvalidName` when it is empty or longer than :data:`MAX_NAME_LEN` code points,
    contains a control, format (bidi, zero-width), surrogate, private-use or unassigned character
    or any Default_Ignorable_Code_Point, contains whitespace other than U+0020, starts or ends
    with a space or has two in a row, is not NFC, or mixes letters of two scripts (Common and
    Inherited characters do not count; Han with Kana or Hangul is one script, as in UTS #39).
    Nothing else is ever raised, whatever the text.
    """
    if not name:
        raise InvalidName("the name is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(
            f"the name is {len(name)} characters long; at most {MAX_NAME_LEN} are allowed"
        )
    for ch in name:
        _check_char(ch)
    if not unicodedata.is_normalized("NFC", name):
        culprit = _describe(_first_unnormalized(name))
        raise InvalidName(
            f"the name is not in Unicode normalization form NFC: {culprit} would change under"
            " NFC (send the composed form)"
        )
    if name[0] == " ":
        raise InvalidName("the name starts with U+0020 SPACE")
    if name[-1] == " ":
        raise InvalidName("the name ends with U+0020 SPACE")
    if "  " in name:
        raise InvalidName("the name has two U+0020 SPACE characters in a row")
    _check_scripts(name)
    return name_key(name)


@functools.lru_cache(maxsize=16384)  # per roster event for every user: ~3 µs each, uncached
def name_key(name: str) -> str:
    """The account key of ``name``: its confusable skeleton, case-insensitive.

    ``NFD(map(NFD(casefold(NFD(name)))))`` where ``map`` replaces every character by the
    representative of its look-alike class (:func:`_skeleton_table`). Decomposing first makes the
    NFC and NFD spellings of a text one key; combining marks are kept (mapped like any character),
    so ``josé`` and ``jose`` are two keys. Total and idempotent (``name_key(name_key(x)) ==
    name_key(x)``), so a key can be passed where a name is expected; it never raises, even for a
    name :func:`check_name` refuses.
    """
    table = _skeleton_table()
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())
    return unicodedata.normalize("NFD", "".join(table.get(ch, ch) for ch in folded))


# -- the checks ------------------------------------------------------------------------------------


def _describe(ch: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: how a refusal names a character (code point and name only)."""
    cp = ord(ch)
    fallback = {
        "Cc": "<control>",
        "Cs": "<surrogate>",
        "Co": "<private use>",
        "Cn": "<unassigned>",
    }.get(unicodedata.category(ch), "<unnamed>")
    return f"U+{cp:04X} {unicodedata.name(ch, fallback)}"


def _is_default_ignorable(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _DEFAULT_IGNORABLE)


def _check_char(ch: str) -> None:
    """Refuse one character that must never be in a name, whatever surrounds it."""
    category = unicodedata.category(ch)
    what = _FORBIDDEN_CATEGORIES.get(category)
    if what is not None:
        raise InvalidName(f"the name contains {_describe(ch)}, {what}")
    if _is_default_ignorable(ord(ch)):
        raise InvalidName(
            f"the name contains {_describe(ch)}, an invisible (default-ignorable) character"
        )
    if ch != " " and (ch.isspace() or category in ("Zs", "Zl", "Zp")):
        raise InvalidName(
            f"the name contains {_describe(ch)}; the only space allowed is U+0020 SPACE"
        )


def _first_unnormalized(name: str) -> str:
    """The character that makes ``name`` non-NFC: the last of the shortest prefix that NFC
    changes (a combining mark that composes with the letter before it, a singleton such as
    U+212B ANGSTROM SIGN, marks out of canonical order). ``name`` is short, so quadratic is fine."""
    for end in range(1, len(name) + 1):
        prefix = name[:end]
        if unicodedata.normalize("NFC", prefix) != prefix:
            return name[end - 1]
    return name[-1]  # pragma: no cover - only called when the whole name is not NFC


def _check_scripts(name: str) -> None:
    """UTS #39 mixed-script detection on the resolved script sets (script per character from
    ``confusable_homoglyphs``, augmented for Han; no Script_Extensions, so a Common character
    with extensions counts as Common)."""
    script_of = _script_lookup()
    allowed: frozenset[str] | None = None
    first = ""
    for ch in name:
        script = script_of(ch)
        if script in _NEUTRAL_SCRIPTS:
            continue
        scripts = _AUGMENTED_SCRIPTS.get(script, frozenset({script}))
        if allowed is None:
            allowed, first = scripts, ch
            continue
        common = allowed & scripts
        if not common:
            raise InvalidName(
                f"the name mixes scripts: {_describe(ch)} is {_script_title(script)}, but"
                f" {_describe(first)} is {_script_title(script_of(first))}"
            )
        allowed = common


def _script_title(script: str) -> str:
    """``CANADIAN_ABORIGINAL`` → ``Canadian Aboriginal``."""
    return script.replace("_", " ").title()


@functools.cache
def _script_lookup() -> Callable[[str], str]:
    """The script alias of a character (``LATIN``, ``CYRILLIC``, ``COMMON``, ...; ``Unknown``
    where the package's table has no entry, which then counts as a script of its own). Imported
    on first use: the package reads its JSON table when imported."""
    from confusable_homoglyphs import categories

    alias: Callable[[str], str] = categories.alias
    return alias


# -- the skeleton table ----------------------------------------------------------------------------


def _is_ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


class _Classes:
    """Union-find over characters that remembers which classes hold an ASCII letter or digit."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self._anchored: dict[str, bool] = {}  # root → the class holds an ASCII letter or digit
        self.skipped = 0

    def add(self, ch: str) -> None:
        if ch not in self.parent:
            self.parent[ch] = ch
            self._anchored[ch] = _is_ascii_alnum(ch)

    def find(self, ch: str) -> str:
        root = ch
        while self.parent[root] != root:
            root = self.parent[root]
        while ch != root:  # path compression
            self.parent[ch], ch = root, self.parent[ch]
        return root

    def union(self, a: str, b: str, *, guarded: bool) -> None:
        """Join the classes of ``a`` and ``b``; when ``guarded``, not if both already hold an
        ASCII letter or digit (that join would make two different Latin letters one)."""
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if guarded and self._anchored[ra] and self._anchored[rb]:
            self.skipped += 1
            return
        self.parent[ra] = rb
        self._anchored[rb] = self._anchored[ra] or self._anchored[rb]

    def groups(self) -> Iterable[list[str]]:
        out: dict[str, list[str]] = {}
        for ch in self.parent:
            out.setdefault(self.find(ch), []).append(ch)
        return out.values()


def _homoglyph_pairs(data: Mapping[str, Iterable[Mapping[str, str]]]) -> set[tuple[str, str]]:
    """Single-code-point look-alike pairs (sorted) from the package's ``confusables.json``: the
    LRM marks around right-to-left characters stripped, multi-character entries (``rn`` for
    ``m``) skipped, since a per-character table cannot express them."""
    pairs: set[tuple[str, str]] = set()
    for key, entries in data.items():
        a = key.replace(_LRM, "")
        if len(a) != 1:
            continue
        for entry in entries:
            b = entry["c"].replace(_LRM, "")
            if len(b) == 1 and a != b:
                pairs.add((min(a, b), max(a, b)))
    return pairs


def _pair_order(pair: tuple[str, str]) -> tuple[int, int, int]:
    """The order in which look-alike pairs are joined; it only matters where a join is skipped.
    Pairs with an ASCII letter or digit come first, those whose other member is a small letter
    (or caseless) before those with a capital: keys are built from casefolded text, and where a
    capital and its small letter look like two different Latin letters (Greek Υ/υ like Y/u), the
    small letter's look-alike is kept. Then by code point, for a fixed result."""
    a, b = pair
    if _is_ascii_alnum(a) or _is_ascii_alnum(b):
        other = b if _is_ascii_alnum(a) else a
        tier = 0 if other.casefold() == other else 1
    else:
        tier = 2
    return tier, ord(b), ord(a)


def _representative(members: list[str]) -> str:
    """The character a class maps to: a lowercase ASCII letter, else an ASCII digit, else another
    ASCII character, else the smallest code point that is its own casefold and NFD (so the key
    is stable under :func:`name_key` again), a letter before a symbol (CJK 山, not the Kangxi
    radical ⼭), else the smallest code point."""

    def rank(ch: str) -> tuple[int, int]:
        if ch.isascii():
            return (0 if ch.islower() else 1 if ch.isdigit() else 2 if ch.isalpha() else 3), ord(ch)
        stable = ch.casefold() == ch and unicodedata.normalize("NFD", ch) == ch
        letter = unicodedata.category(ch).startswith("L")
        return (4 if stable and letter else 5 if stable else 6), ord(ch)

    return min(members, key=rank)


@functools.cache
def _skeleton_table() -> Mapping[str, str]:
    """Character → representative of its look-alike class, built once on first use (about 45 ms
    with reading the 0.9 MB JSON, 20 ms without; tests/unit/test_names.py holds it under 0.5 s).

    A union-find over three kinds of edges:

    1. *Case*: every character with its single-code-point lower/upper/casefold mapping. The input
       is casefolded before the look-up, but the data pairs capitals (Greek Β with Latin B), so
       their small letters (β, b) must land in the same class or ``ΒΟΒ`` would not meet ``bob``.
    2. *ASCII look-alikes* (0/O, 1/l/I/|, '/`): always joined, so ``b0b`` is ``bob`` and
       ``bill`` is ``BILL`` is ``b1ll``.
    3. *Every other single-code-point homoglyph pair*, in :func:`_pair_order`, except a pair that
       would join two classes that both hold an ASCII letter or digit. Case and look-alike edges
       together chain distinct Latin letters (y ~ Y ~ Greek Υ ~ υ ~ u would make ``y`` equal
       ``u``, and the full closure merges r, t, u, y and z); refusing such joins keeps Latin
       letters apart at the cost of 11 of the ~4,000 pairs: Greek Ν/N and Υ/Y, long s/f, Ƽ/5
       and four Warang Citi capitals (each maps with its small letter instead: Ν like ν, so
       like v), and Greek Γ with Cyrillic Г, Cherokee Ꮁ and Coptic Ⲅ (γ looks like y, г like r).
    """
    from confusable_homoglyphs import utils

    # The package's data path (honours its CONFUSABLE_DATA override), read as UTF-8 whatever the
    # locale (the package's own loader uses the locale's encoding, not UTF-8 on a default Windows
    # install); a local dict, dropped once the table is built.
    with open(utils.path("confusables.json"), encoding="utf-8") as file:
        data: Mapping[str, Iterable[Mapping[str, str]]] = json.load(file)
    pairs = _homoglyph_pairs(data)
    classes = _Classes()
    chars = {ch for pair in pairs for ch in pair} | {chr(cp) for cp in range(0x80)}
    for ch in sorted(chars):
        classes.add(ch)
        for other in (ch.casefold(), ch.lower(), ch.upper()):
            if len(other) == 1 and other != ch:
                classes.union(ch, other, guarded=False)
    ascii_pairs = {p for p in pairs if p[0].isascii() and p[1].isascii()}
    for a, b in sorted(ascii_pairs):
        classes.union(a, b, guarded=False)
    for a, b in sorted(pairs - ascii_pairs, key=_pair_order):
        classes.union(a, b, guarded=True)
    table: dict[str, str] = {}
    for members in classes.groups():
        rep = _representative(members)
        for ch in members:
            if ch != rep:
                table[ch] = rep
    return table
