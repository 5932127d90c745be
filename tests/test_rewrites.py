"""Graph rewrites keep the model's results (checked in ONNX Runtime and the reference evaluator)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qm_export.export.rewrites import rewrite_bool_where


def _bool_where_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Where", ["c", "x", "y"], ["w"]), helper.make_node("Not", ["w"], ["out"])],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [2, 3]),
         helper.make_tensor_value_info("x", TensorProto.BOOL, [2, 1]),
         helper.make_tensor_value_info("y", TensorProto.BOOL, [1, 3])],
        [helper.make_tensor_value_info("out", TensorProto.BOOL, [2, 3]),
         helper.make_tensor_value_info("w", TensorProto.BOOL, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_bool_where_is_rewritten_and_keeps_its_truth_table():
    proto = _bool_where_model()
    rng = np.random.default_rng(0)
    feeds = {"c": rng.random((2, 3)) > 0.5, "x": np.array([[True], [False]]), "y": np.array([[True, False, True]])}
    expected = ReferenceEvaluator(proto).run(None, feeds)
    model = ir.from_proto(proto)
    assert rewrite_bool_where(model) == 1
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    assert "Where" not in {n.op_type for n in out.graph.node}
    assert [o.name for o in out.graph.output] == ["out", "w"]
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_float_where_is_left_alone():
    graph = helper.make_graph(
        [helper.make_node("Where", ["c", "x", "y"], ["w"])], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    assert rewrite_bool_where(model) == 0
