"""torch.ops.qm custom ops: CPU results, fake kernels, and export to qm nodes (+ functions) that ORT runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qm_export.kernels as kernels
from qm_export.export.functions import attach_qm_functions
from qm_export.merge import ops
from qm_export.merge.ops_reference import (
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)


def _inputs(b: int = 2, n: int = 11, k: int = 4, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, k, (b, n), generator=g)
    x = torch.randn(b, n, d, generator=g)
    w = torch.rand(b, n, generator=g)
    w[:, 1] = 0.0
    x[:, 1] = float("nan")
    return x, w, a


def test_cpu_ops_equal_the_references():
    x, w, a = _inputs()
    order, offsets = torch.ops.qm.token_group_index(a, 4)
    ref_order, ref_offsets = token_group_index_reference(a, 4)
    assert torch.equal(order, ref_order) and torch.equal(offsets, ref_offsets)
    merged = torch.ops.qm.token_merge(x, w, order, offsets)
    assert torch.equal(merged, token_merge_reference(x, w, order, offsets))
    assert not torch.isnan(merged).any()
    assert torch.equal(torch.ops.qm.token_unmerge(merged, a), token_unmerge_reference(merged, a))


def test_ops_accept_non_contiguous_slices():
    x, w, a = _inputs(n=12)
    order, offsets = torch.ops.qm.token_group_index(a[:, 1:], 4)
    merged = torch.ops.qm.token_merge(x[:, 1:], w[:, 1:], order, offsets)
    assert torch.equal(
        merged, token_merge_reference(x[:, 1:].contiguous(), w[:, 1:].contiguous(), order, offsets)
    )


def test_opcheck_fake_kernels_and_schemas():
    x, w, a = _inputs()
    order, offsets = token_group_index_reference(a, 4)
    torch.library.opcheck(torch.ops.qm.token_group_index.default, (a, 4))
    torch.library.opcheck(torch.ops.qm.token_merge.default, (x.nan_to_num(), w, order, offsets))
    torch.library.opcheck(torch.ops.qm.token_unmerge.default, (torch.randn(2, 4, 3), a))


@pytest.mark.parametrize(
    "call,error,word",
    [
        (lambda: torch.ops.qm.token_group_index(torch.zeros(2, 3), 2), TypeError, "assign"),
        (lambda: torch.ops.qm.token_group_index(torch.zeros(2, 3, dtype=torch.int64), 0), ValueError, "k"),
        (
            lambda: torch.ops.qm.token_merge(
                torch.zeros(1, 3, 2),
                torch.zeros(1, 2),
                torch.zeros(1, 3, dtype=torch.int32),
                torch.zeros(1, 2, dtype=torch.int32),
            ),
            ValueError,
            "weight",
        ),
        (
            lambda: torch.ops.qm.token_unmerge(torch.zeros(1, 2), torch.zeros(1, 3, dtype=torch.int32)),
            ValueError,
            "y",
        ),
    ],
)
def test_ops_reject_bad_input(call, error, word):
    with pytest.raises(error, match=word):
        call()


class _MergeUnmerge(torch.nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x, w, a):
        order, offsets = torch.ops.qm.token_group_index(a, self.k)
        merged = torch.ops.qm.token_merge(x, w, order, offsets)
        return merged, torch.ops.qm.token_unmerge(merged, a), order, offsets


@pytest.fixture(scope="module")
def exported():
    x, w, a = _inputs()
    dims = {0: "B", 1: "N"}
    program = torch.onnx.export(
        _MergeUnmerge(4).eval(),
        (x, w, a),
        dynamo=True,
        dynamic_shapes=(dims, dims, dims),
        custom_translation_table=kernels.onnx_translation_table(),
        verbose=False,
    )
    return program.model_proto


def test_export_emits_exactly_the_qm_nodes(exported):
    qm_nodes = [n for n in exported.graph.node if n.domain == "qm"]
    assert sorted(n.op_type for n in qm_nodes) == ["TokenGroupIndex", "TokenMerge", "TokenUnmerge"]
    for node in qm_nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_namespace": b"qm", "plugin_version": b"1"}
    group = next(n for n in qm_nodes if n.op_type == "TokenGroupIndex")
    assert len(group.input) == 2 and len(group.output) == 2  # assign, seeds -> order, offsets


def test_exported_model_with_functions_runs_in_ort_and_matches(exported):
    model = attach_qm_functions(exported)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, n in [(2, 11), (3, 17), (1, 4)]:  # dynamic B and N
        x, w, a = _inputs(b=b, n=n, seed=b + n)
        got = session.run(None, {"x": x.numpy(), "w": w.numpy(), "a": a.numpy()})
        want = _MergeUnmerge(4)(x, w, a)
        assert np.array_equal(got[2], want[2].numpy()) and np.array_equal(got[3], want[3].numpy())
        np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[1], want[1].numpy(), rtol=1e-6, atol=1e-6)


def test_dispatcher_uses_the_reference_on_cpu():
    assert ops._kernel_ops_available() is (torch.cuda.is_available() and kernels.triton_available())
    x, w, a = _inputs()
    order, offsets = ops.group_index(a, torch.zeros(2, 4, dtype=torch.int64))
    assert torch.equal(ops.merge(x, w, order, offsets), token_merge_reference(x, w, order, offsets))


def test_import_does_not_pull_triton_or_onnxscript():
    code = (
        "import sys, qm_export.kernels, torch; torch.ops.qm.token_merge; "
        "print(sorted(m for m in ('triton', 'onnxscript') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
