"""Properties of the shared argument checks (used by the client and the tracker)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

import seenn
from seenn._core import validation as v


@given(st.floats(min_value=0, max_value=100))
def test_progress_in_range_is_floored_to_an_int(value: float) -> None:
    """Any float from 0 to 100 is accepted and sent as its floor."""
    assert v.check_progress(value) == math.floor(value)


@given(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=100.0000001),
                 st.integers(max_value=-1), st.integers(min_value=101), st.just(math.nan)))
def test_progress_out_of_range_is_rejected(value: float) -> None:
    """Anything below 0, above 100, or NaN raises ValidationError naming progress."""
    with pytest.raises(seenn.ValidationError) as caught:
        v.check_progress(value)
    assert caught.value.field == "progress"


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1),
                    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5)),
                                               timezone(timedelta(hours=-7, minutes=-30))])))
def test_datetimes_round_trip_through_the_wire_format(value: datetime) -> None:
    """A datetime formatted for the wire parses back to the same instant (to the millisecond)."""
    wire = v.check_datetime(value, "eta")
    assert wire.endswith("Z")
    parsed = v.parse_datetime(wire)
    assert parsed is not None
    assert abs(parsed - value) < timedelta(milliseconds=1)


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.none(), st.booleans(),
                                                      st.integers(), st.text(max_size=50)),
                       max_size=20))
def test_metadata_under_the_limit_is_accepted_as_a_copy(value: dict[str, object]) -> None:
    """JSON-serialisable metadata under 10 KB is accepted and copied."""
    checked = v.check_metadata(value)
    assert checked == value
    assert checked is not value
    assert len(json.dumps(checked, separators=(",", ":"), ensure_ascii=False).encode()) <= 10240


def test_metadata_size_limit_is_exact() -> None:
    """10,240 bytes of JSON pass; 10,241 fail."""
    overhead = len('{"k":""}')
    assert v.check_metadata({"k": "x" * (10240 - overhead)}) is not None
    with pytest.raises(seenn.ValidationError):
        v.check_metadata({"k": "x" * (10241 - overhead)})


@pytest.mark.parametrize("text", ["2026-11-26T10:00:00Z", "2026-11-26T10:00:00.1Z",
                                  "2026-11-26T10:00:00.123456789+00:00",
                                  "2026-11-26T11:00:00+01:00"])
def test_parse_datetime_accepts_the_forms_backends_send(text: str) -> None:
    """Z suffixes, offsets and fractions of any length all parse (on Python 3.10 too)."""
    parsed = v.parse_datetime(text)
    assert parsed is not None
    assert parsed.replace(microsecond=0) == datetime(2026, 11, 26, 10, tzinfo=timezone.utc)


def test_models_given_as_instances_are_checked_too() -> None:
    """A Stage instance that breaks the rules is rejected like a dict would be."""
    with pytest.raises(seenn.ValidationError) as caught:
        v.coerce_stage(seenn.Stage("render", 5, 4))
    assert caught.value.field == "stage.current"
    assert v.coerce_queue({"position": 1, "queueName": "gpu"}) == seenn.Queue(1, None, "gpu")
