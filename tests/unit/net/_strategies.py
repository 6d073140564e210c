"""Hypothesis strategies derived from the msgspec Struct definitions of the schema."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

# Keep generated containers small so examples stay fast; the size limits themselves are tested
# separately with explicit maxima.
_MAX_ITEMS = 3
_MAX_BLOB = 64


def _build_valid(cls: type[msgspec.Struct], **fields: Any) -> msgspec.Struct | None:
    """``cls(**fields)`` if it passes decode-time validation (bounds, __post_init__), else None."""
    try:
        obj = cls(**fields)  # __post_init__ runs here too
        msgspec.convert(msgspec.to_builtins(obj), cls)
    except (ValueError, msgspec.ValidationError):
        return None
    return obj


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for one msgspec type description."""
    if isinstance(t, mi.StructType):
        return struct_strategy(t.cls)
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**63))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**63 - 1)
        return st.integers(lo, hi)
    if isinstance(t, mi.FloatType):
        flo = t.ge if t.ge is not None else t.gt
        fhi = t.le if t.le is not None else t.lt
        return st.floats(
            flo,
            fhi,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.StrType):
        lo = t.min_length or 0
        hi = min(t.max_length if t.max_length is not None else 40, lo + 40)
        text = st.text(st.characters(codec="utf-8"), min_size=lo, max_size=hi)
        if t.pattern is not None:
            pattern = re.compile(t.pattern)
            text = text.filter(lambda s: pattern.search(s) is not None)
        return text
    if isinstance(t, mi.BytesType):
        lo = t.min_length or 0
        hi = min(t.max_length if t.max_length is not None else _MAX_BLOB, lo + _MAX_BLOB)
        return st.binary(min_size=lo, max_size=hi)
    if isinstance(t, mi.VarTupleType):
        lo = t.min_length or 0
        hi = min(t.max_length if t.max_length is not None else _MAX_ITEMS, lo + _MAX_ITEMS)
        return st.lists(strategy_for(t.item_type), min_size=lo, max_size=hi).map(tuple)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(strategy_for(x) for x in t.types))
    raise NotImplementedError(f"no strategy for {t!r}")


@cache
def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {f.name: strategy_for(f.type) for f in info.fields}
    return st.builds(_build_valid, st.just(cls), **fields).filter(lambda obj: obj is not None)
