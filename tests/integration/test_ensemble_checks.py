"""Ensembles in the in-process SDK: every load error has its one-line reason, and conditional steps, early exit
and optional inputs behave as documented in src/inferd/graph/ensemble.py.

The composing models are small ONNX graphs: `scorer` (FP32 [4] → [3], a matrix product), `gate` (FP32 [4] → a
score FP32 [1], the row's mean) and `neg` (FP32 [3] → its negation).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import inferd
from ensemble_models import WEIGHTS, ensemble, tensor, write_scorer
from inferd import InferError
from models import make_model


def write_onnx(repo: Path, name: str, model: bytes, inputs: str, outputs: str) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(model)
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{inputs}\n{outputs}\n')


def gate_model() -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])
    s = helper.make_tensor_value_info("S", TensorProto.FLOAT, ["batch", 1])
    node = helper.make_node("ReduceMean", ["X"], ["S"], keepdims=1, axes=[1])
    return make_model([node], [x], [s], name="gate")


def neg_model() -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
    return make_model([helper.make_node("Neg", ["X"], ["Y"])], [x], [y], name="neg")


def base_repo(repo: Path) -> Path:
    write_scorer(repo)
    write_onnx(repo, "gate", gate_model(), tensor("input", "X", "TYPE_FP32", [4]),
               tensor("output", "S", "TYPE_FP32", [1]))
    write_onnx(repo, "neg", neg_model(), tensor("input", "X", "TYPE_FP32", [3]),
               tensor("output", "Y", "TYPE_FP32", [3]))
    return repo


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    ins = ", ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = ", ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 input_map [ {ins} ] output_map [ {outs} ] }}'


def ensemble_body(inputs: str, outputs: str, steps: list[str], extra: str = "") -> str:
    return textwrap.dedent(f"""
        max_batch_size: 8
        {inputs}
        {outputs}
        ensemble_scheduling {{ step [ {", ".join(steps)} ] }}
        {extra}
    """)


IN4 = tensor("input", "IN", "TYPE_FP32", [4])
OUT3 = tensor("output", "OUT", "TYPE_FP32", [3])


def load_error(tmp_path: Path, body: str, name: str = "bad", more: dict[str, str] | None = None) -> str:
    repo = base_repo(tmp_path / "repo")
    ensemble(repo, name, body)
    for other, other_body in (more or {}).items():
        ensemble(repo, other, other_body)
    with inferd.Server(model_repository=repo, strict_readiness=False) as server:
        rows = {(r["name"]): r for r in server.manager.index()}
        assert rows[name]["state"] == "UNAVAILABLE", rows[name]
        reason = rows[name]["reason"]
        assert "\n" not in reason
        # The composing models still serve.
        out = server.infer("scorer", {"X": np.ones((1, 4), np.float32)}).outputs["Y"]
        np.testing.assert_allclose(out, np.ones((1, 4), np.float32) @ WEIGHTS, rtol=1e-6)
        with pytest.raises(InferError, match="unknown model"):
            server.infer(name, {"IN": np.ones((1, 4), np.float32)})
        return str(reason)


def test_unknown_model_is_a_load_error(tmp_path: Path) -> None:
    reason = load_error(tmp_path, ensemble_body(IN4, OUT3, [step("nowhere", {"X": "IN"}, {"Y": "OUT"})]))
    assert "step 0 (model 'nowhere')" in reason and "not available" in reason


def test_unmapped_tensor_is_a_load_error(tmp_path: Path) -> None:
    # 'mid' is consumed by the second step but no step produces it.
    body = ensemble_body(IN4, OUT3, [step("gate", {"X": "IN"}, {"S": "score"}),
                                     step("neg", {"X": "mid"}, {"Y": "OUT"})])
    reason = load_error(tmp_path, body)
    assert "'mid'" in reason and "produced by no step" in reason


def test_unmapped_model_input_and_unknown_names_are_load_errors(tmp_path: Path) -> None:
    reason = load_error(tmp_path / "a", ensemble_body(IN4, OUT3, [step("scorer", {"NOPE": "IN"}, {"Y": "OUT"})]))
    assert "input 'NOPE'" in reason and "does not have" in reason
    reason = load_error(tmp_path / "b", ensemble_body(IN4, OUT3, [step("scorer", {"X": "IN"}, {"Z": "OUT"})]))
    assert "output 'Z'" in reason
    reason = load_error(tmp_path / "c", ensemble_body(IN4, OUT3, [step("scorer", {}, {"Y": "OUT"})]))
    assert "input 'X' is not mapped" in reason


def test_datatype_mismatch_is_a_load_error(tmp_path: Path) -> None:
    body = ensemble_body(tensor("input", "IN", "TYPE_INT32", [4]), OUT3, [step("scorer", {"X": "IN"}, {"Y": "OUT"})])
    reason = load_error(tmp_path, body)
    assert "FP32" in reason and "INT32" in reason


def test_shape_mismatch_between_steps_is_a_load_error(tmp_path: Path) -> None:
    # gate's S is [1] per row; scorer wants [4].
    body = ensemble_body(IN4, OUT3, [step("gate", {"X": "IN"}, {"S": "score"}),
                                     step("scorer", {"X": "score"}, {"Y": "OUT"})])
    reason = load_error(tmp_path, body)
    assert "shape" in reason and "[-1,4]" in reason and "[-1,1]" in reason


def test_cycle_between_steps_is_a_load_error(tmp_path: Path) -> None:
    # scorer needs b (made by neg), neg needs a (made by scorer).
    body = ensemble_body(IN4, OUT3, [step("scorer", {"X": "b4"}, {"Y": "a"}),
                                     step("neg", {"X": "a"}, {"Y": "OUT"}),
                                     step("gate", {"X": "IN"}, {"S": "unused"})])
    reason = load_error(tmp_path, body)
    assert "produced by no step" in reason or "cycle" in reason
    loop = ensemble_body(IN4, OUT3, [step("neg", {"X": "y"}, {"Y": "x3"}), step("neg", {"X": "x3"}, {"Y": "y"}),
                                     step("scorer", {"X": "IN"}, {"Y": "OUT"})])
    assert "cycle" in load_error(tmp_path / "loop", loop)


def test_ensembles_that_contain_each_other_are_a_load_error(tmp_path: Path) -> None:
    one = ensemble_body(IN4, OUT3, [step("two", {"IN": "IN"}, {"OUT": "OUT"})])
    two = ensemble_body(IN4, OUT3, [step("one", {"IN": "IN"}, {"OUT": "OUT"})])
    reason = load_error(tmp_path, one, name="one", more={"two": two})
    assert "cycle" in reason and "one -> two -> one" in reason


def test_batch_size_beyond_a_composing_model_is_a_load_error(tmp_path: Path) -> None:
    body = ensemble_body(IN4, OUT3, [step("scorer", {"X": "IN"}, {"Y": "OUT"})]).replace(
        "max_batch_size: 8", "max_batch_size: 16")
    assert "batch size of 16" in load_error(tmp_path, body)


CONDITIONAL = ensemble_body(
    IN4,
    'output [ { name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] },'
    ' { name: "NEG" data_type: TYPE_FP32 dims: [ 3 ] } ]',
    [step("gate", {"X": "IN"}, {"S": "SCORE"}), step("scorer", {"X": "IN"}, {"Y": "OUT"}),
     step("neg", {"X": "OUT"}, {"Y": "NEG"})],
    'parameters { key: "step.scorer.when" value: { string_value: "SCORE > 0.5" } }')


def test_a_false_condition_skips_the_step_and_those_after_it(tmp_path: Path) -> None:
    repo = base_repo(tmp_path / "repo")
    ensemble(repo, "cond", CONDITIONAL)
    with inferd.Server(model_repository=repo, strict_readiness=False) as server:
        high = np.full((1, 4), 0.9, np.float32)
        answer = server.infer("cond", {"IN": high}).outputs
        assert set(answer) == {"SCORE", "OUT", "NEG"}
        np.testing.assert_allclose(answer["NEG"], -(high @ WEIGHTS), rtol=1e-6)
        low = np.full((1, 4), 0.1, np.float32)
        answer = server.infer("cond", {"IN": low}).outputs
        # Early exit: scorer's condition failed, neg needed its output; only the gate's score is answered.
        assert set(answer) == {"SCORE"}
        np.testing.assert_allclose(answer["SCORE"], [[0.1]], rtol=1e-6)
        scorer_stats = server.manager.get("scorer").stats.to_json()
        assert scorer_stats["inference_stats"]["success"]["count"] == 1  # it ran once, for the high row


def test_a_bad_condition_is_a_load_error(tmp_path: Path) -> None:
    body = CONDITIONAL.replace("SCORE > 0.5", "SCORE is big")
    assert "TENSOR OP VALUE" in load_error(tmp_path / "a", body)
    body = CONDITIONAL.replace("step.scorer.when", "step.nobody.when")
    assert "names no step" in load_error(tmp_path / "b", body)


def test_an_omitted_optional_input_skips_its_branch(tmp_path: Path) -> None:
    repo = base_repo(tmp_path / "repo")
    body = ensemble_body(
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] },'
        ' { name: "EXTRA" data_type: TYPE_FP32 dims: [ 3 ] optional: true } ]',
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "NEG" data_type: TYPE_FP32 dims: [ 3 ] } ]',
        [step("scorer", {"X": "IN"}, {"Y": "OUT"}), step("neg", {"X": "EXTRA"}, {"Y": "NEG"})])
    ensemble(repo, "opt", body)
    with inferd.Server(model_repository=repo, strict_readiness=False) as server:
        raw = np.ones((2, 4), np.float32)
        answer = server.infer("opt", {"IN": raw}).outputs
        assert set(answer) == {"OUT"}
        extra = np.arange(6, dtype=np.float32).reshape(2, 3)
        answer = server.infer("opt", {"IN": raw, "EXTRA": extra}).outputs
        np.testing.assert_array_equal(answer["NEG"], -extra)


def test_a_string_condition(tmp_path: Path) -> None:
    # A Python-free string condition: the ensemble's own BYTES input decides whether scorer runs.
    repo = base_repo(tmp_path / "repo")
    body = ensemble_body(
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] },'
        ' { name: "MODE" data_type: TYPE_STRING dims: [ 1 ] } ]',
        OUT3, [step("scorer", {"X": "IN"}, {"Y": "OUT"})],
        'parameters { key: "step.0.when" value: { string_value: "MODE == \\"score\\"" } }')
    ensemble(repo, "strcond", body)
    with inferd.Server(model_repository=repo, strict_readiness=False) as server:
        raw = np.ones((1, 4), np.float32)
        yes = server.infer("strcond", {"IN": raw, "MODE": np.array([["score"]], dtype=object)}).outputs
        assert set(yes) == {"OUT"}
        no = server.infer("strcond", {"IN": raw, "MODE": np.array([["skip"]], dtype=object)}).outputs
        assert no == {}
