"""``qm-export check`` rules on small hand-built graphs: each rule fires with its severity,
and stays quiet on the clean graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from qm_export.trt.check.checker import check_model
from qm_export.trt.check.findings import CheckReport
from qm_export.trt.versions import parse_trt_version

from trt_onnx_graphs import export_like_model, make_model, qm_node, single_op_model, token_unmerge_function


def run(model: onnx.ModelProto, version: str = "10.13") -> CheckReport:
    return check_model(model, parse_trt_version(version))


def rules(report: CheckReport, severity: str | None = None) -> set[str]:
    return {f.rule for f in report.findings if severity is None or f.severity == severity}


def only(report: CheckReport, rule: str):
    found = [f for f in report.findings if f.rule == rule]
    assert len(found) == 1, [f.to_dict() for f in report.findings]
    return found[0]


def i64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


# --- the clean graph ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10.9", "10.13", "10.16", "11.0", "11.4"])
def test_clean_export_like_graph(version: str) -> None:
    report = run(export_like_model(), version)
    assert report.ok
    assert rules(report, "error") == set() and rules(report, "warning") == set()
    summary = only(report, "plugin-summary")
    assert "1x qm::TokenGroupIndex, 1x qm::TokenMerge, 1x qm::TokenUnmerge" in summary.message


# --- TopK ---------------------------------------------------------------------------------


def _topk(
    k_input: str,
    inits=(),
    extra_inputs=(),
    sorted_attr: int | None = None,
    n: int = 5000,
    opset: int = 20,
    k_attr: int | None = None,
) -> onnx.ModelProto:
    attrs = {"axis": 1}
    if sorted_attr is not None:
        attrs["sorted"] = sorted_attr
    if k_attr is not None:
        attrs["k"] = k_attr
    node = h.make_node("TopK", ["s", k_input] if k_input else ["s"], ["v", "i"], name="topk", **attrs)
    return single_op_model(
        node,
        [("s", TP.FLOAT, [2, n]), *extra_inputs],
        [("v", TP.FLOAT, None), ("i", TP.INT64, None)],
        inits,
        opset=opset,
    )


def test_topk_k_at_limit_is_an_error() -> None:
    f = only(run(_topk("K", [i64("K", [3840])])), "topk-k-limit")
    assert (f.severity, f.node, f.op) == ("error", "topk", "TopK")
    assert "K=3840" in f.message


def test_topk_k_below_limit_is_fine() -> None:
    assert rules(run(_topk("K", [i64("K", [3839])]))) <= {"dtype"}


def test_topk_k_folded_from_constants() -> None:
    nodes = [
        h.make_node("Constant", [], ["a"], value=i64("a", [2000])),
        h.make_node("Constant", [], ["b"], value_ints=[2000]),
        h.make_node("Add", ["a", "b"], ["K"]),
        h.make_node("TopK", ["s", "K"], ["v", "i"], axis=1, name="topk"),
    ]
    model = make_model(nodes, [("s", TP.FLOAT, [2, 5000])], [("v", TP.FLOAT, None), ("i", TP.INT64, None)])
    assert "K=4000" in only(run(model), "topk-k-limit").message


def test_topk_k_from_static_shape_is_constant() -> None:
    nodes = [
        h.make_node("Shape", ["s"], ["sh"], start=1, end=2),
        h.make_node("TopK", ["s", "sh"], ["v", "i"], axis=1, name="sort_all"),
    ]
    model = make_model(nodes, [("s", TP.FLOAT, [2, 4096])], [("v", TP.FLOAT, None), ("i", TP.INT64, None)])
    assert "K=4096" in only(run(model), "topk-k-limit").message
    dynamic = make_model(nodes, [("s", TP.FLOAT, [2, "N"])], [("v", TP.FLOAT, None), ("i", TP.INT64, None)])
    assert only(run(dynamic), "topk-k-dynamic").severity == "warning"


def test_topk_k_from_input_is_a_warning() -> None:
    f = only(run(_topk("K", extra_inputs=[("K", TP.INT64, [1])])), "topk-k-dynamic")
    assert f.severity == "warning" and "3840" in f.message


def test_topk_unsorted_is_an_error() -> None:
    assert only(run(_topk("K", [i64("K", [4])], sorted_attr=0)), "topk-unsorted").severity == "error"


def test_topk_opset9_attribute_k() -> None:
    assert only(run(_topk("", k_attr=4000, opset=9)), "topk-k-limit").severity == "error"


# --- scatter, OneHot, CumSum, data-dependent shapes ---------------------------------------


@pytest.mark.parametrize("op,severity", [("ScatterND", "error"), ("ScatterElements", "warning")])
def test_scatter_reductions(op: str, severity: str) -> None:
    idx_shape = [2, 1] if op == "ScatterND" else [2]
    node = h.make_node(op, ["data", "idx", "upd"], ["out"], name="scatter", reduction="add")
    model = single_op_model(
        node,
        [("data", TP.FLOAT, [4]), ("upd", TP.FLOAT, [2])],
        [("out", TP.FLOAT, [4])],
        [i64("idx", np.zeros(idx_shape))],
    )
    rule = f"{op.lower()}-reduction"
    assert only(run(model), rule).severity == severity
    plain = h.make_node(op, ["data", "idx", "upd"], ["out"], name="scatter")
    model.graph.node[0].CopyFrom(plain)
    assert rule not in rules(run(model))


@pytest.mark.parametrize("op,rule", [("OneHot", "onehot-depth"), ("CumSum", "cumsum-axis")])
def test_needs_build_time_constant(op: str, rule: str) -> None:
    if op == "OneHot":
        node = h.make_node("OneHot", ["ind", "c", "vals"], ["out"], name="n")
        inputs = [("ind", TP.INT64, [3]), ("c", TP.INT64, [])]
        inits = [numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "vals")]
    else:
        node = h.make_node("CumSum", ["x", "c"], ["out"], name="n")
        inputs = [("x", TP.FLOAT, [3, 4]), ("c", TP.INT64, [])]
        inits = []
    model = single_op_model(node, inputs, [("out", TP.FLOAT, None)], inits)
    assert only(run(model), rule).severity == "error"
    constant = single_op_model(node, inputs[:1], [("out", TP.FLOAT, None)], inits + [i64("c", 1)])
    assert rule not in rules(run(constant))


def test_nonzero_is_data_dependent_warning() -> None:
    model = single_op_model(
        h.make_node("NonZero", ["x"], ["y"], name="nz"), [("x", TP.FLOAT, [4])], [("y", TP.INT64, None)]
    )
    assert only(run(model), "data-dependent-shape").severity == "warning"


def test_unique_is_unsupported() -> None:
    node = h.make_node("Unique", ["x"], ["y"], name="u")
    f = only(run(single_op_model(node, [("x", TP.FLOAT, [4])], [("y", TP.FLOAT, None)])), "unsupported-op")
    assert f.severity == "error" and "depends on the data" in f.message


# --- op tables per version, custom domains -----------------------------------------------


@pytest.mark.parametrize("op", ["BitShift", "Det", "StringNormalizer", "NoSuchOp"])
def test_unsupported_ops(op: str) -> None:
    model = single_op_model(h.make_node(op, ["x"], ["y"], name="n"), [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, None)])
    assert only(run(model), "unsupported-op").severity == "error"


@pytest.mark.parametrize(
    "op,old,new", [("Attention", "10.13", "10.14"), ("Swish", "10.16", "11.0"), ("STFT", "10.4", "10.5")]
)
def test_ops_added_in_later_versions(op: str, old: str, new: str) -> None:
    model = single_op_model(
        h.make_node(op, ["x"], ["y"], name="n"), [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, None)], opset=24
    )
    assert f"TensorRT {new} and later" in only(run(model, old), "op-too-new").message
    assert "op-too-new" not in rules(run(model, new))


def test_custom_domain_op() -> None:
    node = h.make_node("FusedMatMul", ["x"], ["y"], name="fm", domain="com.microsoft")
    model = single_op_model(node, [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, None)], extra_opsets={"com.microsoft": 1})
    f = only(run(model), "custom-op")
    assert (f.severity, f.op) == ("error", "com.microsoft::FusedMatMul")


def test_custom_op_with_local_function_is_inlined() -> None:
    fn = h.make_function("my", "Twice", ["a"], ["b"], [h.make_node("Add", ["a", "a"], ["b"])], [h.make_opsetid("", 20)])
    node = h.make_node("Twice", ["x"], ["y"], name="t", domain="my")
    model = single_op_model(
        node, [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])], functions=[fn], extra_opsets={"my": 1}
    )
    assert run(model).ok and "custom-op" not in rules(run(model))


def test_op_dtype_documented_types() -> None:
    node = h.make_node("CumSum", ["x", "ax"], ["y"], name="cs")
    model = single_op_model(node, [("x", TP.INT32, [3])], [("y", TP.INT32, [3])], [i64("ax", 0)])
    f = only(run(model), "op-dtype")
    assert f.severity == "warning" and "INT32" in f.message


# --- data types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,severity",
    [(TP.DOUBLE, "warning"), (TP.STRING, "error"), (TP.COMPLEX64, "error"), (TP.UINT16, "error"), (TP.INT64, "info")],
)
def test_dtypes(dtype: int, severity: str) -> None:
    model = single_op_model(h.make_node("Identity", ["x"], ["y"], name="id"), [("x", dtype, [2])], [("y", dtype, [2])])
    f = only(run(model), "dtype")
    assert f.severity == severity and "'x'" in f.message


def test_uint8_only_at_the_boundary() -> None:
    io = single_op_model(h.make_node("Identity", ["x"], ["y"]), [("x", TP.UINT8, [2])], [("y", TP.UINT8, [2])])
    assert "dtype" not in rules(run(io))
    nodes = [h.make_node("Cast", ["x"], ["u"], to=TP.UINT8), h.make_node("Cast", ["u"], ["y"], to=TP.FLOAT)]
    inner = make_model(nodes, [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])])
    f = only(run(inner), "dtype")
    assert f.severity == "warning" and "'u'" in f.message


def test_fp4_needs_10_8() -> None:
    model = single_op_model(
        h.make_node("Identity", ["x"], ["y"]), [("x", TP.FLOAT4E2M1, [2])], [("y", TP.FLOAT4E2M1, [2])], opset=23
    )
    assert only(run(model, "10.7"), "dtype").severity == "error"
    assert only(run(model, "10.8"), "dtype").severity == "info"


# --- qm plugin nodes ----------------------------------------------------------------------


def _unmerge(
    attrs: dict | None = None,
    domain: str = "qm",
    functions: bool = True,
    op: str = "TokenUnmerge",
    inputs=("y", "assign"),
) -> onnx.ModelProto:
    node = qm_node(op, inputs, ["out"], "unmerge", domain=domain, attrs=attrs)
    return make_model(
        [node],
        [("y", TP.FLOAT, ["B", 4, 8]), ("assign", TP.INT32, ["B", "N"])],
        [("out", TP.FLOAT, ["B", "N", 8])],
        functions=[token_unmerge_function()] if functions else [],
        extra_opsets={"qm": 1},
    )


@pytest.mark.parametrize(
    "attrs,rule,severity",
    [
        ({"plugin_version": "1"}, "plugin-namespace", "error"),
        ({"plugin_namespace": "other", "plugin_version": "1"}, "plugin-namespace", "error"),
        ({"plugin_namespace": "qm"}, "plugin-version", "warning"),
        ({"plugin_namespace": "qm", "plugin_version": "2"}, "plugin-version", "error"),
        ({"plugin_namespace": "qm", "plugin_version": "1", "k": 4}, "plugin-extra-attr", "error"),
        ({"plugin_namespace": "qm", "plugin_version": "1", "aot": 0}, "plugin-aot-attr", "warning"),
    ],
)
def test_plugin_attribute_contract(attrs: dict, rule: str, severity: str) -> None:
    f = only(run(_unmerge(attrs)), rule)
    assert (f.severity, f.node, f.op) == (severity, "unmerge", "qm::TokenUnmerge")


def test_plugin_unknown_op_and_arity() -> None:
    assert only(run(_unmerge(op="TokenShuffle", functions=False)), "plugin-unknown-op").severity == "error"
    assert only(run(_unmerge(inputs=("y",), functions=False)), "plugin-arity").severity == "error"


def test_plugin_outside_qm_domain() -> None:
    report = run(_unmerge(domain="", functions=False))
    assert only(report, "plugin-domain").severity == "warning"


# --- which version uses the plugin, which inlines the function ---------------------------

NO_NS = {"plugin_version": "1"}


@pytest.mark.parametrize(
    "attrs,functions,version,expected",
    [
        (None, True, "10.5", "plugin-inlined"),
        (None, True, "10.6", "plugin-inlined"),
        (None, True, "10.7", "plugin-jit-only"),
        (None, True, "10.9", None),
        (None, True, "10.15", None),
        (None, True, "11.4", None),
        (NO_NS, True, "10.9", "plugin-inlined"),  # isNodeInPluginRegistry looks in namespace ''
        (NO_NS, True, "10.13", "plugin-inlined"),  # ... on 10.10-10.14 too: the domain is not read there
        (NO_NS, True, "10.14", "plugin-inlined"),
        (NO_NS, True, "10.15", "plugin-inlined"),  # 10.15+: only with plugin_namespace
        (None, True, "10.14", "plugin-broken-trt"),  # the plugin is chosen, and 10.14 breaks Python plugins
        (None, False, "10.14", "plugin-broken-trt"),
        (None, False, "10.5", "plugin-unavailable"),
        (None, False, "10.8", "plugin-jit-only"),
        (None, False, "10.13", None),
        (NO_NS, False, "10.9", "plugin-unavailable"),
        (NO_NS, False, "10.10", None),  # no local function: the fallback importer takes the domain (10.10+)
        (NO_NS, False, "10.13", None),
    ],
)
def test_plugin_or_function_per_version(attrs, functions: bool, version: str, expected: str | None) -> None:
    report = run(_unmerge(attrs, functions=functions), version)
    fate_rules = rules(report) & {"plugin-inlined", "plugin-jit-only", "plugin-unavailable", "plugin-broken-trt"}
    assert fate_rules == ({expected} if expected else set())
    severities = {"plugin-inlined": "warning", "plugin-jit-only": "warning", "plugin-unavailable": "error",
                  "plugin-broken-trt": "error"}
    if expected:
        assert only(report, expected).severity == severities[expected]
    else:
        assert "plugin-summary" in rules(report)
    if expected == "plugin-broken-trt":
        assert "known bug that breaks Python plugins" in only(report, expected).message


@pytest.mark.parametrize("attrs,expected", [(None, None), (NO_NS, "plugin-inlined")])
def test_the_parser_finds_a_local_function_by_name_only(attrs, expected) -> None:
    # The parser keys local functions by name: a TokenUnmerge function in another domain is
    # still the one inlined for a qm node without plugin_namespace (TensorRT 10.13).
    model = _unmerge(attrs)
    model.functions[0].domain = "elsewhere"
    model.opset_import.append(h.make_opsetid("elsewhere", 1))
    fate_rules = rules(run(model)) & {"plugin-inlined", "plugin-unavailable"}
    assert fate_rules == ({expected} if expected else set())


def test_plugin_summary_says_how_to_register_and_prefer_aot() -> None:
    fix = only(run(_unmerge()), "plugin-summary").fix
    assert "register_plugins()" in fix and "PREFER_AOT_PYTHON_PLUGINS" in fix and "jit=False" in fix
    assert "has both AOT and JIT implementations" in fix


def _unmerge_with_bad_body() -> onnx.ModelProto:
    model = _unmerge()
    body = model.functions[0]
    body.node.append(h.make_node("NonZero", ["assign"], ["nz"], name="body_nonzero"))
    return model


def test_function_body_findings_follow_the_plugin_choice() -> None:
    used = only(run(_unmerge_with_bad_body(), "10.13"), "data-dependent-shape")
    assert used.severity == "info" and used.function == "qm::TokenUnmerge" and "not parsed" in used.message
    inlined = only(run(_unmerge_with_bad_body(), "10.6"), "data-dependent-shape")
    assert inlined.severity == "warning" and inlined.node == "body_nonzero"


def test_unused_and_nested_functions() -> None:
    inner = h.make_function(
        "my", "Inner", ["a"], ["b"], [h.make_node("NonZero", ["a"], ["b"], name="deep")], [h.make_opsetid("", 20)]
    )
    outer = h.make_function(
        "my",
        "Outer",
        ["a"],
        ["b"],
        [h.make_node("Inner", ["a"], ["b"], domain="my")],
        [h.make_opsetid("", 20), h.make_opsetid("my", 1)],
    )
    unused = h.make_function(
        "my", "Unused", ["a"], ["b"], [h.make_node("Det", ["a"], ["b"], name="dead")], [h.make_opsetid("", 20)]
    )
    node = h.make_node("Outer", ["x"], ["y"], domain="my", name="call")
    model = single_op_model(
        node, [("x", TP.FLOAT, [4])], [("y", TP.INT64, None)], functions=[inner, outer, unused], extra_opsets={"my": 1}
    )
    report = run(model)
    assert only(report, "data-dependent-shape").severity == "warning"  # Inner is parsed through Outer
    dead = only(report, "unsupported-op")
    assert dead.severity == "info" and dead.function == "my::Unused"


# --- subgraphs ----------------------------------------------------------------------------


def test_if_branches_are_walked() -> None:
    def branch(name: str, k: int) -> onnx.GraphProto:
        return h.make_graph(
            [h.make_node("TopK", ["s", f"K{name}"], [f"v{name}", f"i{name}"], axis=1, name=f"topk_{name}")],
            name,
            [],
            [h.make_tensor_value_info(f"v{name}", TP.FLOAT, None)],
            initializer=[i64(f"K{name}", [k])],
        )

    node = h.make_node("If", ["c"], ["v"], name="if0", then_branch=branch("then", 5000), else_branch=branch("else", 8))
    model = single_op_model(node, [("c", TP.BOOL, []), ("s", TP.FLOAT, [2, 6000])], [("v", TP.FLOAT, None)])
    f = only(run(model), "topk-k-limit")
    assert f.node == "topk_then" and f.graph == "main/if0.then_branch" and f.function is None


# --- model level: opset, external data ----------------------------------------------------


@pytest.mark.parametrize(
    "opset,version,warn",
    [
        (8, "10.13", True),
        (17, "10.13", False),
        (24, "10.13", True),
        (24, "10.15", False),
        (25, "11.4", True),
        (25, "11.5", False),
    ],
)
def test_opset_range(opset: int, version: str, warn: bool) -> None:
    model = single_op_model(
        h.make_node("Relu", ["x"], ["y"]), [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])], opset=opset
    )
    report = run(model, version)
    assert ("opset-range" in rules(report, "warning")) is warn


def test_external_data(tmp_path) -> None:
    from qm_export.trt.check.checker import check_onnx_file

    path = tmp_path / "m.onnx"
    onnx.save(
        export_like_model(d=64),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    f = only(check_onnx_file(path, parse_trt_version("10.13")), "external-data")
    assert f.severity == "info" and "m.onnx.data" in f.message
    (tmp_path / "m.onnx.data").unlink()
    report = check_onnx_file(path, parse_trt_version("10.13"))
    assert "external-data" in rules(report, "error") and not report.ok


def test_load_errors(tmp_path) -> None:
    from qm_export.trt.check.checker import load_onnx

    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x12\x34 definitely not protobuf \xff" * 4)
    with pytest.raises(ValueError, match="not an ONNX model"):
        load_onnx(bad)


def test_json_document() -> None:
    doc = run(_topk("K", [i64("K", [5000])])).to_dict()
    assert set(doc) == {"schema", "model", "trt_version", "opset", "ok", "summary", "findings"}
    assert doc["schema"] == "qm-export.trt-check/1" and doc["trt_version"] == "10.13" and doc["ok"] is False
    assert doc["summary"]["error"] == 1
    finding = next(f for f in doc["findings"] if f["rule"] == "topk-k-limit")
    assert set(finding) == {"severity", "rule", "node", "op", "function", "graph", "message", "fix"}
    severities = [f["severity"] for f in doc["findings"]]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)


def test_cumsum_folded_axis_needs_10_8() -> None:
    nodes = [
        h.make_node("Constant", [], ["a"], value=i64("a", 0)),
        h.make_node("Identity", ["a"], ["axis"]),
        h.make_node("CumSum", ["x", "axis"], ["y"], name="cs"),
    ]
    model = make_model(nodes, [("x", TP.FLOAT, [3])], [("y", TP.FLOAT, [3])])
    assert only(run(model, "10.7"), "cumsum-axis").severity == "error"
    assert "cumsum-axis" not in rules(run(model, "10.8"))
    direct = make_model(
        [nodes[0], h.make_node("CumSum", ["x", "a"], ["y"])], [("x", TP.FLOAT, [3])], [("y", TP.FLOAT, [3])]
    )
    assert "cumsum-axis" not in rules(run(direct, "10.7"))
