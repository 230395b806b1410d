"""The GJSON path subset of KServe InferenceGraph conditions (graph/gjson.py), evaluated as gjson's Get().Exists()
on the documents KServe's docs use."""

from __future__ import annotations

import pytest

from inferd.graph.gjson import MISSING, compile_path, exists

REQUEST = {
    "id": "r1",
    "parameters": {"route": "add", "threshold": 0.7, "strict": True},
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
        {"name": "INPUT1", "datatype": "BYTES", "shape": [1], "data": ["cat"]},
    ],
    "friends": [
        {"first": "Dale", "age": 44, "nets": ["ig", "fb", "tw"]},
        {"first": "Roger", "age": 68, "nets": ["fb", "tw"]},
        {"first": "Jane", "age": 47, "nets": ["ig", "tw"]},
    ],
    "dotted.key": 1,
}


@pytest.mark.parametrize(("path", "value"), [
    ("parameters.route", "add"),
    ("inputs.#", 2),
    ("inputs.1.name", "INPUT1"),
    ("inputs.#.name", ["INPUT0", "INPUT1"]),
    ('inputs.#(name=="INPUT1").data.0', "cat"),
    ("friends.#(age>45)#.first", ["Roger", "Jane"]),
    ("friends.#(age>=47)#.first", ["Roger", "Jane"]),
    ("friends.#(age<47).first", "Dale"),
    ("friends.#(age<=47)#.first", ["Dale", "Jane"]),
    ('friends.#(first!="Dale")#.age', [68, 47]),
    ('friends.#(first%"R*").age', 68),
    ('friends.#(first!%"D*")#.first', ["Roger", "Jane"]),
    ('friends.#(nets.#(=="fb"))#.first', ["Dale", "Roger"]),
    ("friends.#(age)#.age", [44, 68, 47]),
    ('[@this].#(parameters.route=="add").id', "r1"),
    ("[parameters.route,id]", ["add", "r1"]),
    ("@this.parameters.threshold", 0.7),
    ("parameters.thr*", 0.7),
    ("dotted\\.key", 1),
    ("parameters|route", "add"),
])
def test_paths_find_what_gjson_finds(path: str, value: object) -> None:
    assert compile_path(path).get(REQUEST) == value


@pytest.mark.parametrize(("condition", "holds"), [
    ('[@this].#(parameters.route=="add")', True),
    ('[@this].#(parameters.route=="sub")', False),
    ('[@this].#(parameters.route!="sub")', True),
    ("[@this].#(parameters.threshold>0.5)", True),
    ("[@this].#(parameters.threshold<0.5)", False),
    ("[@this].#(parameters.strict==true)", True),
    ('[@this].#(parameters.threshold=="0.7")', False),  # a number is never equal to a string
    ("[@this].#(parameters.missing)", False),
    ("parameters.route", True),
    ("parameters.other", False),
    ('inputs.#(name=="INPUT2")', False),
    ('inputs.#(name=="INPUT2")#', True),  # gjson: every match, an empty array, exists
    ("friends.9", False),
    ("id.more", False),
])
def test_conditions_hold_as_in_kserve(condition: str, holds: bool) -> None:
    assert exists(condition, REQUEST) is holds


def test_an_absent_value_is_missing_and_null_exists() -> None:
    assert compile_path("nothing").get(REQUEST) is MISSING
    assert exists("value", {"value": None})


@pytest.mark.parametrize(("path", "words"), [
    ("", "non-empty"),
    ("a..b", "empty component"),
    ("a.#(b==1", "unclosed"),
    ("a.b)", "unbalanced"),
    ("a.@reverse", "not supported"),
    ("a.#(b==[1])", "compares with"),
    ("a.#(b==nope)", "not a JSON"),
    ('a.#(b%1)', "pattern"),
    ("{a,b}", "not supported"),
])
def test_unsupported_or_broken_paths_are_refused(path: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        compile_path(path)
