"""The export view traces: torch.export with dynamic batch (and length) and ONNX with qm nodes."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch

from qm_export.models import load_source

OTHER_SHAPES = {  # a batch and (for text) a length the export was not traced with
    "vit-tiny": {"pixel_values": (3, 3, 32, 32)},
    "video-tiny": {"pixel_values": (1, 3, 4, 32, 32)},
    "encoder-tiny": {"input_ids": (3, 23)},
    "causal-lm-tiny": {"input_ids": (1, 37)},
}


@pytest.mark.parametrize("name", list(OTHER_SHAPES))
def test_torch_export_with_dynamic_dims_matches_eager(name):
    loaded = load_source(name, debug_outputs=True)
    assert loaded.example_inputs[0].shape[0] == 2
    assert loaded.trace_inputs is loaded.example_inputs
    program = torch.export.export(loaded.export_module, loaded.trace_inputs, dynamic_shapes=loaded.dynamic_shapes)
    dims = {str(d) for spec in loaded.dynamic_shapes for d in spec.values()}
    assert len(program.range_constraints) == len(dims) == (2 if loaded.model.dynamic_sequence else 1)
    inputs = loaded.model.example_inputs(OTHER_SHAPES[name], torch.Generator().manual_seed(9))
    got = program.module()(*inputs)
    want = loaded.run(*inputs)
    assert len(got) == len(want) == len(loaded.output_names)
    for out_name, g, w in zip(loaded.output_names, got, want):
        assert g.shape == w.shape, out_name
        if g.is_floating_point():
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=out_name)
        else:
            assert torch.equal(g, w), out_name
    assert want[0].shape[0] == inputs[0].shape[0]
    n = inputs[0].shape[1] if loaded.model.dynamic_sequence else None
    if n is not None:  # the merge count follows the run-time length: K = round(N / 2)
        seeds = want[loaded.output_names.index("merge0_seeds")]
        assert seeds.shape[1] == (n + 1) // 2


def test_a_batch_of_one_traces_with_two_rows_and_runs_at_one():
    loaded = load_source("causal-lm-tiny", batch=1, seq_len=12)
    assert loaded.example_inputs[0].shape == (1, 12) and loaded.trace_inputs[0].shape == (2, 12)
    program = torch.export.export(loaded.export_module, loaded.trace_inputs, dynamic_shapes=loaded.dynamic_shapes)
    got, want = program.module()(*loaded.example_inputs), loaded.run(*loaded.example_inputs)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)


def test_prior_is_part_of_the_exported_graph():
    loaded = load_source("encoder-tiny", schedule="1:0.5")
    model = loaded.model.with_schedule("1:0.5", {"prior_weight": 0.5})
    from qm_export.models.export_view import make_export_module

    module = make_export_module(model, model.input_names, model.output_names(),
                                lambda out: (model.flat_outputs(out), out.merges))
    program = torch.export.export(module, loaded.trace_inputs, dynamic_shapes=loaded.dynamic_shapes)
    assert any(".priors.1." in k for k in program.state_dict)
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = module(ids, mask)
    torch.testing.assert_close(program.module()(ids, mask)[1], want[1], atol=1e-5, rtol=1e-5)


def _attach_functions():
    if importlib.util.find_spec("qm_export.export.functions") is None:
        return None
    from qm_export.export import functions

    return getattr(functions, "attach_qm_functions", None)


def test_onnx_export_has_the_qm_nodes_and_runs_in_onnxruntime():
    loaded = load_source("vit-tiny")
    program = torch.onnx.export(
        loaded.export_module, loaded.trace_inputs, dynamic_shapes=loaded.dynamic_shapes, dynamo=True,
        input_names=list(loaded.input_names), output_names=list(loaded.output_names),
        opset_version=loaded.export_defaults.opset, verbose=False,
    )
    proto = program.model_proto
    qm = [n for n in proto.graph.node if n.domain == "qm"]
    # One merge: one grouping, one TokenMerge of the tokens and one of their sizes.
    assert Counter(n.op_type for n in qm) == {"TokenGroupIndex": 1, "TokenMerge": 2}
    for node in qm:
        assert {a.name: a.s.decode() for a in node.attribute} == {"plugin_namespace": "qm", "plugin_version": "1"}
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    attach = _attach_functions()
    if attach is None:
        pytest.skip("qm_export.export.functions.attach_qm_functions is not on this branch: "
                    "the qm nodes have no function bodies for onnxruntime to run")
    import onnxruntime as ort

    attached = attach(proto)
    proto = attached if attached is not None else proto
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    np.testing.assert_allclose(got, loaded.run(x)[0].numpy(), atol=1e-4, rtol=1e-4)
