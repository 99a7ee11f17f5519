"""The server's JSON helpers give exactly what the standard library gives, faster."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from seenn.server._json import dumps, dumps_sorted, loads

VALUES: list[Any] = [
    {"b": [1, 2.5, None, True, False], "a": {"z": 1, "y": -0.0}},
    {"text": "é 日本 \u2028 \"quoted\" \\ \n \x00", "emoji": "\U0001f600"},
    [1e300, 1e-300, 3.141592653589793, 10**30, -(2**63)],
    "just a string", 7, None, [], {},
    {"inf": math.inf, "-inf": -math.inf},
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_is_the_compact_standard_encoding(value: Any) -> None:
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert dumps_sorted(value) == json.dumps(value, separators=(",", ":"),
                                             ensure_ascii=False, sort_keys=True)


def test_dumps_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"a": object()})
    with pytest.raises(TypeError, match="keys must be str"):
        dumps_sorted({1j: 1})


@pytest.mark.parametrize("value", VALUES)
def test_loads_reads_back_what_dumps_wrote(value: Any) -> None:
    text = dumps(value)
    assert json.dumps(loads(text)) == json.dumps(json.loads(text))


@pytest.mark.parametrize("text", [' {"a": 1} ', '{"a":1}\n', "\t[1]"])
def test_loads_accepts_whitespace_around_the_value(text: str) -> None:
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", '{"a":1}x', "nul", '{"a":1} 2', "[1,]"])
def test_loads_refuses_malformed_text_as_json_loads_does(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        loads(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    assert str(caught.value) == str(expected.value)
