"""The hand-built test graphs are valid ONNX and their qm function bodies compute the
spec §6 ops: checked in ONNX Runtime against the torch references."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qm_export.merge.ops_reference import (
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)

from trt_onnx_graphs import export_like_model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("batch,n", [(1, 5), (2, 13), (3, 40)])
def test_export_like_model_matches_torch_reference(batch: int, n: int) -> None:
    model = export_like_model(k=4, d=8)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(n).standard_normal((batch, n, 8)).astype(np.float32)
    out, merged = _run(model, {"x": x})

    # The same selection in numpy/torch, then the torch references of the three ops.
    xt = torch.from_numpy(x)
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    scores = xt.mean(dim=2)
    seeds = torch.topk(scores, 4, dim=1).indices.to(torch.int32)
    assign = (xt @ torch.from_numpy(w.copy())).argmax(dim=2).to(torch.int32)
    weight = torch.sigmoid(scores)
    order, offsets = token_group_index_reference(assign, seeds.shape[1])
    ref_merged = token_merge_reference(xt, weight, order, offsets)
    ref_out = token_unmerge_reference(torch.relu(ref_merged), assign)

    np.testing.assert_allclose(merged, ref_merged.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, ref_out.numpy(), rtol=1e-5, atol=1e-6)
