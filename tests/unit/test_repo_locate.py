"""`inferd repo validate`'s pure parts: where a config field is written, and every problem of a config at once."""

from __future__ import annotations

from inferd.config import config_problems, parse_config
from inferd.repo_tools.locate import field_lines, line_of

TEXT = """name: "m"  # a comment
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 3, -1 ] },
  {
    name: "B"
    dims: [ 0 ]
  }
]
parameters { key: "canary" value { string_value: "a:b" } }
parameters: {
  key: "shadow"
  value: { string_value: "x" }
}
version_policy { latest { num_versions: 0 } }
ensemble_scheduling { step [ { model_name: "s" input_map { key: "IN" value: "x" } } ] }
"""


def test_fields_are_found_on_their_lines() -> None:
    lines = field_lines(TEXT)
    assert line_of(lines, "name") == 1
    assert line_of(lines, "input[0]") == 4
    assert line_of(lines, "input[1]") == 5
    assert line_of(lines, "input[1].dims") == 7
    assert line_of(lines, "parameters[canary]") == 10
    assert line_of(lines, "parameters[shadow]") == 11
    assert line_of(lines, "version_policy.latest.num_versions") == 15
    assert line_of(lines, "ensemble_scheduling.step[0].input_map[IN]") == 16


def test_a_field_not_written_falls_back_to_its_parent_or_none() -> None:
    lines = field_lines(TEXT)
    assert line_of(lines, "input[0].data_type") == 4
    assert line_of(lines, "input[1].data_type") == 5  # auto-completed: the tensor's own line
    assert line_of(lines, "output[0]") is None
    assert field_lines('name: "x" input [ {') == {"name[0]": 1, "input[0]": 1}  # cut short: what was read


def test_config_problems_lists_every_problem_in_order() -> None:
    config = parse_config("""name: "other" max_batch_size: -1
input [ { name: "A" data_type: TYPE_FP32 dims: [ 0 ] }, { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: -2 } ]""")
    problems = [(p.field, p.message.split(":")[0]) for p in config_problems(config, "m")]
    assert problems == [
        ("name", "config name 'other' does not match the model folder 'm'"),
        ("max_batch_size", "max_batch_size must be >= 0, got -1"),
        ("", "model configuration must specify at least one output"),
        ("input[0].dims", "input 'A' has invalid dimension 0"),
        ("input[1].name", "input 'A' is declared more than once"),
        ("instance_group[0].count", "instance_group count must be >= 0, got -2"),
    ]
