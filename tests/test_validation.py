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


LONE = "caf\udce9"  # a lone surrogate, as os.fsdecode() makes of a non-UTF-8 file name


@pytest.mark.parametrize(("check", "field"), [
    (lambda: v.check_text("title", LONE, max_len=200), "title"),
    (lambda: v.check_opt_text("message", "\ud800", max_len=1000), "message"),
    (lambda: v.check_metadata({"name": LONE}), "metadata"),
    (lambda: v.check_metadata({LONE: 1}), "metadata"),
    (lambda: v.check_json("push", {"a": [LONE]}, max_bytes=4096), "push"),
    (lambda: v.coerce_result({"type": "file", "data": {"path": LONE}}), "result"),
    (lambda: v.coerce_stage({"name": "s", "description": LONE}), "stage.description"),
    (lambda: v.coerce_error({"code": "E", "message": LONE}), "error.message"),
    (lambda: v.check_datetime("2026-01-01T00:00:00" + LONE, "eta"), "eta"),
])
def test_text_that_cannot_be_encoded_is_a_validation_error(check: object, field: str) -> None:
    """A lone surrogate anywhere in text or JSON raises ValidationError naming the field."""
    with pytest.raises(seenn.ValidationError) as caught:
        check()  # type: ignore[operator]
    assert caught.value.field == field


def test_non_ascii_text_that_encodes_is_accepted() -> None:
    """Accents, CJK and emoji are valid text: only what UTF-8 cannot carry is refused."""
    assert v.check_text("title", "Vidéo 動画 🎬", max_len=200) == "Vidéo 動画 🎬"
    assert v.check_metadata({"名前": "🎬"}) == {"名前": "🎬"}


def test_track_and_set_progress_refuse_lone_surrogates_at_the_call() -> None:
    """seenn.track(title=...) and job.set_progress(message=...) raise ValidationError."""
    with pytest.raises(seenn.ValidationError) as caught:
        seenn.track("render", user_id="u", title=LONE)
    assert caught.value.field == "title"
    with seenn.track("render", user_id="u", title="ok") as job:
        with pytest.raises(seenn.ValidationError) as caught:
            job.set_progress(10, message="\ud800")
        assert caught.value.field == "message"
        assert job.progress == 0


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_datetimes_beyond_the_utc_range_are_validation_errors(text: str) -> None:
    """A date-time that falls outside years 1-9999 once moved to UTC raises ValidationError."""
    with pytest.raises(seenn.ValidationError) as caught:
        v.check_datetime(text, "estimated_completion_at")
    assert caught.value.field == "estimated_completion_at"


def test_datetimes_of_early_years_keep_four_digit_years() -> None:
    """Year 33 is sent as 0033, an ISO 8601 date-time that parses back."""
    wire = v.check_datetime(datetime(33, 1, 1, tzinfo=timezone.utc), "eta")
    assert wire == "0033-01-01T00:00:00.000Z"
    assert v.parse_datetime(wire) == datetime(33, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("value", [1e15, 1e300, math.inf, math.nan, -1,
                                   2_592_000_001, timedelta(days=31)])
def test_durations_are_bounded_to_thirty_days(value: object) -> None:
    """An estimated duration must be 0 to 30 days in milliseconds (the longest job TTL)."""
    with pytest.raises(seenn.ValidationError) as caught:
        v.check_duration_ms(value, "estimated_duration")
    assert caught.value.field == "estimated_duration"


def test_thirty_days_is_the_longest_duration() -> None:
    """Exactly 30 days passes, as a timedelta or as milliseconds."""
    assert v.check_duration_ms(timedelta(days=30), "d") == 2_592_000_000
    assert v.check_duration_ms(2_592_000_000.0, "d") == 2_592_000_000
