"""The canonical JSON every ledger hash is taken over: one form, pinned byte for byte."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.ledger.canonical import canonical_json, plain

EAST = timezone(timedelta(hours=8))


def test_the_form_is_pinned() -> None:
    payload = {
        "z": [1, 2.5, None, True],
        "a": {"when": datetime(2024, 4, 2, 2, 0, tzinfo=EAST), "on": date(2023, 11, 15)},
        "text": "Xi–Biden \u2028 \ud800",
        "pair": ("x", 1),
    }
    assert canonical_json(payload) == (
        b'{"a":{"on":"2023-11-15","when":"2024-04-01T18:00:00.000000+00:00"},'
        b'"pair":["x",1],"text":"Xi\\u2013Biden \\u2028 \\ud800","z":[1,2.5,null,true]}'
    )


def test_values_outside_a_payload_are_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        canonical_json({"a": {1, 2}})
    with pytest.raises(ValueError, match="Out of range"):
        canonical_json({"a": float("nan")})


_leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(EAST)
    ),
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_values)
def test_it_is_the_json_of_the_plain_value(value: Any) -> None:
    expected = json.dumps(
        plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
    assert canonical_json(value) == expected
