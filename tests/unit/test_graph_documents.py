"""Pure logic of the deployment graphs: KServe InferenceGraph checks (schema and webhook rules), the JSON
documents an InferenceGraph passes between steps, and SeldonMessage <-> tensor conversions of a Seldon graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inferd.graph.inference_graph import answer_tensors, check_inference_graph, document_tensors, request_document
from inferd.graph.seldon_messages import graph_outputs, outputs_message, tensors_message
from inferd.types import InferError


def graph(nodes: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "g"},
            "spec": {"nodes": nodes, **spec}}


SEQ = {"routerType": "Sequence", "steps": [{"serviceName": "m"}]}


def test_a_valid_graph_is_read() -> None:
    name, nodes = check_inference_graph(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "a", "serviceName": "m", "dependency": "Hard"},
        {"nodeName": "inner", "data": "$response", "condition": "outputs.#"}]}, "inner": SEQ}, timeout=30))
    assert name == "g"
    assert [s.name for s in nodes["root"].steps] == ["a", ""]
    assert nodes["root"].steps[0].hard and not nodes["root"].steps[1].hard
    assert nodes["root"].steps[1].node == "inner"


@pytest.mark.parametrize(("doc", "words"), [
    (graph({"start": SEQ}), "no 'root' node"),
    (graph({"root": {"routerType": "Loop", "steps": [{"serviceName": "m"}]}}), "routerType must be one of"),
    (graph({"root": {"routerType": "Sequence", "steps": []}}), "has no steps"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"serviceName": "m", "nodeName": "x"}]}}),
     "exactly one of serviceName, nodeName or serviceUrl"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"nodeName": "nowhere"}]}}), "which the graph lacks"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"nodeName": "b"}]},
            "b": {"routerType": "Sequence", "steps": [{"nodeName": "root"}]}}), "cycle: root -> b -> root"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"serviceName": "m", "data": "$input"}]}}),
     "data must be $request or $response"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"serviceName": "m", "dependency": "Strong"}]}}),
     "dependency must be Soft or Hard"),
    (graph({"root": {"routerType": "Splitter", "steps": [{"serviceName": "m"}]}}), "positive weight"),
    (graph({"root": {"routerType": "Splitter", "steps": [{"serviceName": "m", "weight": "100"}]}}),
     "'weight' must be an integer"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"serviceName": 5}]}}), "'serviceName' must be a str"),
    (graph({"root": {"routerType": "Sequence", "steps": [{"serviceName": "m"}], "extra": 1}}), "unknown field"),
    (graph({"root": SEQ}, replicas=2), "unknown field(s) in spec: replicas"),
    ({**graph({"root": SEQ}), "apiVersion": "serving.kserve.io/v1beta1"}, "apiVersion must be"),
    ({**graph({"root": SEQ}), "metadata": {}}, "metadata.name is required"),
])
def test_graphs_kserve_refuses_are_refused(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")):
        check_inference_graph(doc)


def test_the_request_document_is_v2_json_without_wire_parameters() -> None:
    feeds = {"INPUT0": np.array([[1.0, 2.0]], dtype=np.float32), "TEXT": np.array([b"hi"], dtype=object)}
    doc = request_document(feeds, {"id": "r", "parameters": {"route": "add", "binary_data_output": True},
                                   "datatypes": {"TEXT": "BYTES"}})
    assert doc == {"id": "r", "parameters": {"route": "add"}, "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
        {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    tensors = document_tensors(doc, "step")
    assert tensors["INPUT0"].dtype == np.float32 and tensors["INPUT0"].shape == (1, 2)
    assert tensors["TEXT"].tolist() == [b"hi"]


def test_an_ensembles_answer_is_flattened_by_step() -> None:
    out = {"outputs": [{"name": "Y", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}
    answer = {"a": out, "b": {"inner": out}, "c": {"error": "failed"}}
    tensors = answer_tensors(answer)
    assert sorted(tensors) == ["a.Y", "b.inner.Y"]
    assert tensors["a.Y"].dtype == np.int32
    with pytest.raises(InferError, match="the step before it failed: boom"):
        document_tensors({"error": "boom"}, "step 'm'")
    with pytest.raises(InferError, match="cannot be read"):
        document_tensors({"inputs": [{"name": "X", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}, "step")


def test_seldon_messages_and_tensors() -> None:
    message = tensors_message({"input": np.array([[1.0, 2.0]])})
    assert message["data"]["tensor"]["shape"] == [1, 2]
    assert tensors_message({"input": np.array([b"hello"], dtype=object)}) == {"strData": "hello"}
    assert tensors_message({"a": np.array([1]), "b": np.array([b"x"], dtype=object)}) == {
        "jsonData": {"a": [1], "b": ["x"]}}
    answer = outputs_message({"OUT": np.array([[2.0, 4.0]])}, {"data": {"ndarray": [[1, 2]]}})
    assert answer == {"data": {"names": [], "ndarray": [[2.0, 4.0]]}}
    assert graph_outputs(answer)["output"].tolist() == [[2.0, 4.0]]
    assert graph_outputs({"strData": "x"})["output"].tolist() == [b"x"]
    assert graph_outputs({"jsonData": {"k": 1}})["output"].tolist() == [b'{"k":1}']
    with pytest.raises(InferError):
        graph_outputs({"meta": {}})
