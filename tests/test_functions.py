"""The qm ONNX function bodies: checker, ONNX Runtime, onnx.reference, inlining, against the torch references."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh
from onnx.inliner import inline_local_functions
from onnx.reference import ReferenceEvaluator

from qm_export.export.functions import MIN_OPSET, QM_OPS, attach_qm_functions, qm_function_protos
from qm_export.merge.ops_reference import (
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)

ATTRS = {"plugin_namespace": "qm", "plugin_version": "1"}
_ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def _qm_model(opset: int = 20, float_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """assign, seeds, x, weight -> order, offsets, merged, unmerged (all three qm ops, dynamic dims)."""
    nodes = [
        oh.make_node("TokenGroupIndex", ["assign", "seeds"], ["order", "offsets"], domain="qm", **ATTRS),
        oh.make_node("TokenMerge", ["x", "weight", "order", "offsets"], ["merged"], domain="qm", **ATTRS),
        oh.make_node("TokenUnmerge", ["merged", "assign"], ["unmerged"], domain="qm", **ATTRS),
    ]
    inputs = [
        oh.make_tensor_value_info("assign", TensorProto.INT32, ["B", "N"]),
        oh.make_tensor_value_info("seeds", TensorProto.INT64, ["B", "K"]),
        oh.make_tensor_value_info("x", float_type, ["B", "N", "D"]),
        oh.make_tensor_value_info("weight", TensorProto.FLOAT, ["B", "N"]),
    ]
    outputs = [
        oh.make_tensor_value_info("order", TensorProto.INT32, ["B", "N"]),
        oh.make_tensor_value_info("offsets", TensorProto.INT32, ["B", None]),
        oh.make_tensor_value_info("merged", float_type, ["B", "K", "D"]),
        oh.make_tensor_value_info("unmerged", float_type, ["B", "N", "D"]),
    ]
    graph = oh.make_graph(nodes, "qm_ops", inputs, outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _case(b, n, k, d, seed, *, dtype=np.float32, empty=True, zero_rows=True):
    rng = np.random.default_rng(seed)
    high = k - 1 if empty and k > 1 else k  # the last group stays empty
    assign = rng.integers(0, high, (b, n)).astype(np.int32)
    x = rng.standard_normal((b, n, d)).astype(dtype)
    w = (rng.random((b, n)) + 0.05).astype(np.float32)
    if zero_rows:
        w[rng.random((b, n)) < 0.3] = 0.0
        x[w == 0] = np.nan  # never read
    return {"assign": assign, "seeds": np.zeros((b, k), np.int64), "x": x, "weight": w}


def _expected(feeds):
    a = torch.from_numpy(feeds["assign"])
    k = feeds["seeds"].shape[1]
    order, offsets = token_group_index_reference(a, k)
    merged = token_merge_reference(
        torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["weight"]), order, offsets
    )
    return order.numpy(), offsets.numpy(), merged.numpy(), token_unmerge_reference(merged, a).numpy()


def _check(got, want, rtol=1e-5, atol=1e-6):
    assert got[0].dtype == np.int32 and got[1].dtype == np.int32
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    for g, w in zip(got[2:], want[2:]):
        assert g.dtype == w.dtype and not np.isnan(g).any()
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def model():
    m = attach_qm_functions(_qm_model())
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.fixture(scope="module")
def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


CASES = [  # (B, N, K, D): one token, K = N, K = 1, empty groups, dynamic sizes across runs
    (1, 1, 1, 1),
    (3, 7, 3, 3),
    (2, 33, 33, 5),
    (2, 40, 1, 4),
    (1, 197, 66, 16),
    (4, 12, 5, 64),
]


@pytest.mark.parametrize("b,n,k,d", CASES)
def test_ort_matches_the_references(session, b, n, k, d):
    feeds = _case(b, n, k, d, seed=b * n + k)
    _check(session.run(None, feeds), _expected(feeds))


@pytest.mark.parametrize("b,n,k,d", CASES[:4])
def test_reference_evaluator_matches_the_references(model, b, n, k, d):
    feeds = _case(b, n, k, d, seed=n + d)
    _check(ReferenceEvaluator(model).run(None, feeds), _expected(feeds))


def test_one_token_groups_return_their_token(session):
    feeds = _case(2, 6, 6, 4, seed=1, empty=False, zero_rows=False)
    feeds["assign"] = np.tile(np.arange(6, dtype=np.int32)[::-1], (2, 1)).copy()
    merged = session.run(None, feeds)[2]
    np.testing.assert_allclose(merged, feeds["x"][:, ::-1], rtol=2.5e-7, atol=0)


def test_weightless_group_is_zero(session):
    feeds = _case(1, 8, 3, 2, seed=2, empty=False, zero_rows=False)
    feeds["assign"][:] = [[0, 1, 2, 0, 1, 2, 0, 1]]
    feeds["weight"][0, [2, 5]] = 0.0
    feeds["x"][0, [2, 5]] = np.nan
    merged = session.run(None, feeds)[2]
    assert np.array_equal(merged[0, 2], np.zeros(2, np.float32))


def test_float16_tokens_keep_their_dtype():
    m = attach_qm_functions(_qm_model(float_type=TensorProto.FLOAT16))
    onnx.checker.check_model(m, full_check=True)
    feeds = _case(2, 9, 4, 8, seed=3, dtype=np.float16)
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    _check(got, _expected(feeds), rtol=float(np.finfo(np.float16).eps), atol=1e-3)


def test_inlined_model_has_standard_ops_only_and_same_results(model, session):
    inlined = inline_local_functions(model)
    assert len(inlined.functions) == 0
    assert {n.domain for n in inlined.graph.node} <= {"", "ai.onnx"}
    banned = {"TopK", "NonZero", "OneHot", "ScatterND", "Unique", "Loop", "If"}
    assert not banned & {n.op_type for n in inlined.graph.node}
    assert all(
        a.s in (b"", b"none")
        for n in inlined.graph.node
        if n.op_type == "ScatterElements"
        for a in n.attribute
        if a.name == "reduction"
    )
    onnx.checker.check_model(inlined, full_check=True)
    inl = ort.InferenceSession(inlined.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, n, k, d in CASES[1:4]:
        feeds = _case(b, n, k, d, seed=k)
        for g, w in zip(inl.run(None, feeds), session.run(None, feeds)):
            assert np.array_equal(g, w)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 24), k=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_grouping_property(session, b, n, k, seed):
    feeds = _case(b, n, min(k, n), 2, seed=seed)
    got = session.run(["order", "offsets"], feeds)
    want = _expected(feeds)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("opset", [MIN_OPSET, 18, 21])
def test_functions_follow_the_model_opset(opset):
    m = attach_qm_functions(_qm_model(opset=opset))
    assert all(list(f.opset_import) == [oh.make_opsetid("", opset)] for f in m.functions)
    onnx.checker.check_model(m, full_check=True)
    feeds = _case(2, 5, 3, 2, seed=opset)
    _check(
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds),
        _expected(feeds),
    )


def test_attach_is_idempotent_and_declares_the_plugin_attributes():
    once = attach_qm_functions(_qm_model())
    twice = attach_qm_functions(once)
    assert sorted(f.name for f in twice.functions) == sorted(QM_OPS)
    assert [o for o in twice.opset_import if o.domain == "qm"] == [oh.make_opsetid("qm", 1)]
    for fn in twice.functions:
        assert fn.domain == "qm" and list(fn.attribute) == ["plugin_namespace", "plugin_version"]


def test_attach_adds_only_used_ops_and_covers_nested_functions():
    inner = oh.make_function(
        "my",
        "Unmerge",
        ["y", "a"],
        ["o"],
        [oh.make_node("TokenUnmerge", ["y", "a"], ["o"], domain="qm", **ATTRS)],
        opset_imports=[oh.make_opsetid("", 20)],
    )
    graph = oh.make_graph(
        [oh.make_node("Unmerge", ["y", "a"], ["o"], domain="my")],
        "g",
        [
            oh.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "M", "D"]),
            oh.make_tensor_value_info("a", TensorProto.INT32, ["B", "N"]),
        ],
        [oh.make_tensor_value_info("o", TensorProto.FLOAT, ["B", "N", "D"])],
    )
    m = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 20), oh.make_opsetid("my", 1)], functions=[inner]
    )
    out = attach_qm_functions(m)
    assert sorted((f.domain, f.name) for f in out.functions) == [("my", "Unmerge"), ("qm", "TokenUnmerge")]
    onnx.checker.check_model(out, full_check=True)
    y = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    a = np.array([[2, 0, 1, 2], [1, 1, 0, 2]], np.int32)
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"y": y, "a": a}
    )[0]
    assert np.array_equal(got, np.take_along_axis(y, a[:, :, None].astype(np.int64).repeat(4, 2), 1))


def test_attach_rejects_bad_input():
    with pytest.raises(TypeError, match="ModelProto"):
        attach_qm_functions("model.onnx")
    with pytest.raises(ValueError, match="opset must be >= 15"):
        attach_qm_functions(_qm_model(opset=14))
    bad = _qm_model()
    bad.graph.node[0].op_type = "TokenSort"
    with pytest.raises(ValueError, match="TokenSort"):
        attach_qm_functions(bad)
    with pytest.raises(ValueError, match="opset"):
        qm_function_protos(12)


class _QuickMergeUnmerge(torch.nn.Module):
    """A QuickMerge++ layer (protected token, refinement) and the unmerge back: all three qm ops."""

    def __init__(self) -> None:
        super().__init__()
        from qm_export.merge import QuickMerge

        self.layer = QuickMerge(keep_ratio=0.5, protect=1, refine_iters=1)

    def forward(self, x):
        from qm_export.merge import unmerge

        merged, info = self.layer(x)
        return merged, unmerge(merged, info["assign"])


@pytest.fixture(scope="module")
def quickmerge_onnx():
    module = _QuickMergeUnmerge().eval()
    x = torch.randn(2, 17, 8, generator=torch.Generator().manual_seed(0))
    program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=({0: "B"},), verbose=False)
    model = attach_qm_functions(program.model_proto)
    onnx.checker.check_model(model, full_check=True)
    return module, model


def test_quickmerge_export_with_functions_matches_eager(quickmerge_onnx):
    module, model = quickmerge_onnx
    assert {n.op_type for n in model.graph.node if n.domain == "qm"} == set(QM_OPS)
    for b in (2, 3):
        x = torch.randn(b, 17, 8, generator=torch.Generator().manual_seed(b))
        got = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
        for g, w in zip(got, module(x)):
            np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_quickmerge_export_with_functions_runs_in_onnxruntime(quickmerge_onnx):
    module, model = quickmerge_onnx
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 17, 8, generator=torch.Generator().manual_seed(3))
    got = session.run(None, {model.graph.input[0].name: x.numpy()})
    for g, w in zip(got, module(x)):
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-5, atol=1e-5)
