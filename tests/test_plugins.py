"""The qm TensorRT plugins: helpers tested without TensorRT, AOT compilation for sm_90 without a GPU,
and TensorRT tests that skip where TensorRT is absent."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

import qm_export_plugins as qp
from qm_export_plugins import specs

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None
SHAPES = {  # input shapes per plugin: B=4, N=197, K=66, D=768
    "TokenGroupIndex": [(4, 197), (4, 66)],
    "TokenMerge": [(4, 197, 768), (4, 197), (4, 197), (4, 67)],
    "TokenUnmerge": [(4, 66, 768), (4, 197)],
}


def test_import_pulls_in_neither_tensorrt_nor_triton():
    code = (
        "import sys, qm_export_plugins; print(sorted(m for m in ('tensorrt', 'triton') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-dependency message cannot be seen")
def test_register_without_tensorrt_says_what_to_install():
    with pytest.raises(ImportError) as info:
        qp.register_plugins()
    assert isinstance(info.value, qp.PluginDependencyError)
    assert "TensorRT" in str(info.value) and "pip install" in str(info.value)


def test_register_needs_an_implementation():
    with pytest.raises(ValueError, match="aot=True or jit=True"):
        qp.register_plugins(aot=False, jit=False)


def test_plugin_ids_and_constants():
    assert [qp.plugin_id(op) for op in qp.PLUGIN_NAMES] == [
        "qm::TokenGroupIndex",
        "qm::TokenMerge",
        "qm::TokenUnmerge",
    ]
    assert (qp.PLUGIN_NAMESPACE, qp.PLUGIN_VERSION) == ("qm", "1")
    with pytest.raises(ValueError, match="TokenSort"):
        qp.plugin_id("TokenSort")


def test_output_shapes_and_scalars_from_input_shapes():
    b, n, k, d, m = 4, 197, 66, 768, 66
    assert qp.output_shapes("TokenGroupIndex", [(b, n), (b, k)]) == ((b, n), (b, k + 1))
    assert qp.output_shapes("TokenMerge", [(b, n, d), (b, n), (b, n), (b, k + 1)]) == ((b, k, d),)
    assert qp.output_shapes("TokenUnmerge", [(b, m, d), (b, n)]) == ((b, n, d),)
    assert qp.scalar_args("TokenGroupIndex", [(b, n), (b, k)]) == (n, k)
    assert qp.scalar_args("TokenMerge", [(b, n, d), (b, n), (b, n), (b, k + 1)]) == (n, k, d)
    assert qp.scalar_args("TokenUnmerge", [(b, m, d), (b, n)]) == (m, n, d)


def test_grids_cover_the_work():
    cfg = qp.launch_config("TokenGroupIndex", [(4, 197), (4, 66)])
    block = cfg.constexprs["BLOCK"]
    assert cfg.grid == ((-(-197 // block) - (-67 // block)) * 4, 1, 1)
    cfg = qp.launch_config("TokenMerge", [(4, 197, 768), (4, 197), (4, 197), (4, 67)])
    assert cfg.grid[0] == 4 * 66 and cfg.grid[1] * cfg.constexprs["BLOCK_D"] >= 768 and cfg.grid[2] == 1
    cfg = qp.launch_config("TokenUnmerge", [(4, 66, 768), (4, 197)])
    rows, block_d = cfg.constexprs["ROWS"], cfg.constexprs["BLOCK_D"]
    assert cfg.grid[0] == 4 * -(-197 // rows) and cfg.grid[1] * block_d >= 768 and cfg.grid[2] == 1
    assert all(v & (v - 1) == 0 for v in (block, rows, block_d))  # tl.arange needs powers of two


@pytest.mark.parametrize("b", [1, 65535, 65536, 1_000_000])
def test_grids_fold_the_batch_into_axis_0_so_any_batch_launches(b):
    # CUDA grids: x < 2**31, y and z <= 65535. The batch rides on x, with the program count per row.
    for op, shapes in SHAPES.items():
        shapes = [(b, *s[1:]) for s in shapes]
        grid = qp.launch_config(op, shapes).grid
        assert grid[0] % b == 0 and grid[0] < 2**31 and max(grid[1:]) <= 65535, (op, grid)


def test_a_grid_past_the_cuda_limits_is_refused_with_the_dims():
    from qm_export.kernels.config import check_grid

    check_grid((2**31 - 1, 65535, 65535), "x")
    with pytest.raises(ValueError, match=r"token_merge.*\(2147483648, 1, 1\)"):
        check_grid((2**31, 1, 1), "token_merge")
    with pytest.raises(ValueError, match="65535"):
        check_grid((1, 65536, 1), "token_unmerge")


def test_autotune_strings_expand_to_the_supported_types():
    floats = ["FLOAT", "HALF", "BF16"]
    assert sorted(qp.expand_type_combinations(qp.AUTOTUNE_TYPES["TokenGroupIndex"])) == sorted(
        [("INT32", "INT32", "INT32", "INT32"), ("INT32", "INT64", "INT32", "INT32")]
    )
    assert qp.expand_type_combinations(qp.AUTOTUNE_TYPES["TokenMerge"]) == [
        (f, "FLOAT", "INT32", "INT32", f) for f in floats
    ]
    assert qp.expand_type_combinations(qp.AUTOTUNE_TYPES["TokenUnmerge"]) == [(f, "INT32", f) for f in floats]
    with pytest.raises(ValueError, match="different lengths"):
        qp.expand_type_combinations("FP32|FP16, INT32|INT64|INT8")


def test_triton_signature_follows_the_kernel_parameter_order():
    pytest.importorskip("triton", reason="needs triton to read the kernels' parameters")
    from qm_export.kernels import triton_kernels

    for op in qp.PLUGIN_NAMES:
        combo = qp.expand_type_combinations(qp.AUTOTUNE_TYPES[op])[-1]
        cfg = qp.launch_config(op, SHAPES[op])
        sig = qp.triton_signature(op, combo, tuple(cfg.constexprs))
        kernel = getattr(triton_kernels, specs.KERNEL_NAMES[op])
        params = list(inspect.signature(kernel.fn).parameters)
        assert list(sig) == params  # inputs, scalars, outputs, constexprs: TensorRT's AOT order
    sig = qp.triton_signature("TokenMerge", ("BF16", "FLOAT", "INT32", "INT32", "BF16"))
    assert sig == {
        "x_ptr": "*bf16",
        "weight_ptr": "*fp32",
        "order_ptr": "*i32",
        "offsets_ptr": "*i32",
        "N": "i32",
        "K": "i32",
        "D": "i32",
        "out_ptr": "*bf16",
    }
    with pytest.raises(ValueError, match="FP8"):
        qp.triton_signature("TokenUnmerge", ("FP8", "INT32", "FP8"))
    with pytest.raises(ValueError, match="3 inputs and outputs"):
        qp.triton_signature("TokenUnmerge", ("FLOAT", "INT32"))


def test_divisibility_hint_only_for_static_multiples_of_16():
    assert qp.aot_attrs("TokenMerge", 768) == {
        (6,): [["tt.divisibility", 16]]
    }  # x, w, order, offsets, N, K, D
    assert qp.aot_attrs("TokenUnmerge", 1024) == {(4,): [["tt.divisibility", 16]]}  # y, assign, M, N, D
    assert qp.aot_attrs("TokenMerge", 100) == {} and qp.aot_attrs("TokenMerge", None) == {}
    assert qp.aot_attrs("TokenGroupIndex", 768) == {}


def test_cuda_array_interface_describes_bf16_as_int16():
    cai = qp.cuda_array_interface(0x7F00, (2, 3), "BF16")
    assert cai == {"shape": (2, 3), "typestr": "<i2", "data": (0x7F00, False), "strides": None, "version": 3}
    assert qp.cuda_array_interface(1, [4], "INT64")["typestr"] == "<i8"
    with pytest.raises(ValueError, match="BOOL"):
        qp.cuda_array_interface(1, [4], "BOOL")


#: Compute capabilities the AOT kernels must compile for: Turing, Ampere (A100, A10), Ada (L4,
#: L40S), Hopper (H100/H200), Blackwell (B200, RTX 50).
AOT_TARGETS = (75, 80, 86, 89, 90, 100, 120)

#: Drivers the AOT PTX must load on: CUDA 12.4 (R550, below Triton 3.8's default PTX 8.8)
#: and CUDA 13.0 (above it for cc < 100).
AOT_DRIVERS = (12040, 13000)

_AOT_SCRIPT = textwrap.dedent(
    """
    import json, os, re, subprocess, sys, tempfile
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    import qm_export_plugins as qp
    from qm_export_plugins.aot import compile_kernel, triton_ptx_version
    from qm_export_plugins.ptx import capped_ptx_version, driver_ptx_version, ptx_directives, ptx_version_text
    shapes = {"TokenGroupIndex": [(4, 197), (4, 66)],
              "TokenMerge": [(4, 197, 768), (4, 197), (4, 197), (4, 67)],
              "TokenUnmerge": [(4, 66, 768), (4, 197)]}
    targets, drivers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for cc in targets:
            for driver in drivers:
                ptx_version = capped_ptx_version(triton_ptx_version(cc), driver_ptx_version(driver), cc)
                for op, s in shapes.items():
                    for combo in qp.expand_type_combinations(qp.AUTOTUNE_TYPES[op]):
                        ck = compile_kernel(op, combo, s, target=GPUTarget("cuda", cc, 32), ptx_version=ptx_version)
                        entry = re.search(r"\\.entry\\s+(\\w+)\\(([^)]*)\\)", ck.ptx)
                        params = re.findall(r"\\.param \\.(\\w+)", entry.group(2))
                        version, target = ptx_directives(ck.ptx)
                        # The trimmed PTX must assemble for the PLAIN architecture (sm_90, not sm_90a).
                        src = os.path.join(tmp, "k.ptx")
                        with open(src, "w") as f:
                            f.write(ck.ptx)
                        asm = subprocess.run([get_ptxas(cc).path, f"--gpu-name=sm_{cc}", src, "-o", src + ".o"],
                                             capture_output=True, text=True)
                        out.append({"cc": cc, "driver": driver, "op": op, "combo": combo, "name": ck.name,
                                    "entry": entry.group(1), "params": params, "target": target,
                                    "version": version, "expected_version": ptx_version_text(ptx_version),
                                    "block_x": ck.block_x, "ptxas": asm.returncode, "ptxas_err": asm.stderr[-500:]})
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="AOT compilation needs triton")
def test_aot_compilation_for_every_gpu_generation_without_a_gpu():
    # A subprocess: triton must be imported without TRITON_INTERPRET, which the kernel tests set.
    # Triton ships ptxas, so PTX is generated and assembled for each target with no GPU present,
    # and with no host C compiler: PATH holds only the interpreter's folder and CC is unset
    # (an explicit target never starts Triton's driver layer, the part that compiles C).
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CC")}
    env["PATH"] = os.path.dirname(sys.executable)
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, json.dumps(AOT_TARGETS), json.dumps(AOT_DRIVERS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == (2 + 3 + 3) * len(AOT_TARGETS) * len(AOT_DRIVERS)
    n_io_scalars = {"TokenGroupIndex": (2, 2, 2), "TokenMerge": (4, 3, 1), "TokenUnmerge": (2, 3, 1)}
    for r in results:
        n_in, n_scalar, n_out = n_io_scalars[r["op"]]
        assert r["name"] == r["entry"] == specs.KERNEL_NAMES[r["op"]]
        assert r["target"] == f"sm_{r['cc']}", r  # plain, never Triton's sm_90a
        assert r["version"] == r["expected_version"], r  # the capped PTX version, stamped
        # Exactly what TensorRT passes: Triton's two hidden scratch pointers are trimmed away.
        assert r["params"] == ["u64"] * n_in + ["u32"] * n_scalar + ["u64"] * n_out, r
        assert r["ptxas"] == 0, r
        assert r["block_x"] % 32 == 0 and r["block_x"] >= 32
    versions = {(r["cc"], r["driver"]): r["version"] for r in results}
    assert versions[(90, 12040)] == "8.4" and versions[(90, 13000)] == "8.8"  # capped / Triton's own
    assert versions[(100, 12040)] == "8.6"  # never below what sm_100a needs


_PTX = """.version 8.8
.target sm_90a
.address_size 64
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3
)
.reqntid 32
{
\tld.param.b64 \t%rd1, [k_param_0];
\tld.param.b32 \t%r1, [k_param_1];
\tret;
}
"""


def test_trim_entry_params_drops_only_unreferenced_trailing_parameters():
    from qm_export_plugins.aot import trim_entry_params

    trimmed = trim_entry_params(_PTX, "k", 2)
    assert "k_param_2" not in trimmed and "k_param_3" not in trimmed
    assert ".align 1 k_param_0,\n\t.param .u32 k_param_1\n)\n.reqntid 32" in trimmed
    assert trimmed.split(")", 1)[1] == _PTX.split(")", 1)[1]  # the body is untouched
    assert trim_entry_params(_PTX, "k", 4) == _PTX
    with pytest.raises(RuntimeError, match="k_param_1.*is used"):
        trim_entry_params(_PTX, "k", 1)  # k_param_1 is loaded by the body
    with pytest.raises(RuntimeError, match="declares 4 parameters, TensorRT passes 5"):
        trim_entry_params(_PTX, "k", 5)
    with pytest.raises(RuntimeError, match="no .entry 'other'"):
        trim_entry_params(_PTX, "other", 2)


def test_launch_arg_count_is_inputs_scalars_outputs():
    assert [qp.launch_arg_count(op) for op in qp.PLUGIN_NAMES] == [2 + 2 + 2, 4 + 3 + 1, 2 + 3 + 1]


trt_only = pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT >= 10.9 (not installable on this machine)")


@trt_only
def test_register_plugins_is_idempotent_and_fills_the_registry():
    import tensorrt as trt

    ids = qp.register_plugins()
    assert qp.register_plugins() == ids
    registry = trt.get_plugin_registry()
    for op in qp.PLUGIN_NAMES:
        assert registry.get_creator(op, "1", "qm") is not None
    with pytest.raises(ValueError, match="already registered"):
        qp.register_plugins(jit=False)


@trt_only
@pytest.mark.tensorrt
def test_parser_builds_and_runs_the_plugins_against_the_reference(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import tensorrt as trt

    from qm_export.merge.ops_reference import token_group_index_reference, token_merge_reference
    from test_functions import _qm_model  # tests/ is on sys.path under pytest

    qp.register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(_qm_model().SerializeToString()), [
        str(parser.get_error(i)) for i in range(parser.num_errors)
    ]
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, shape in {"assign": (2, 33), "seeds": (2, 7), "x": (2, 33, 16), "weight": (2, 33)}.items():
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    ctx = engine.create_execution_context()
    g = torch.Generator().manual_seed(0)
    feeds = {
        "assign": torch.randint(0, 7, (2, 33), generator=g).int(),
        "seeds": torch.zeros(2, 7, dtype=torch.int64),
        "x": torch.randn(2, 33, 16, generator=g),
        "weight": torch.rand(2, 33, generator=g),
    }
    buffers = {k: v.cuda() for k, v in feeds.items()}
    for name, v in buffers.items():
        ctx.set_input_shape(name, tuple(v.shape))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if name not in buffers:
            dtype = {trt.int32: torch.int32, trt.float32: torch.float32}[engine.get_tensor_dtype(name)]
            buffers[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device="cuda")
        ctx.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    order, offsets = token_group_index_reference(feeds["assign"], 7)
    assert torch.equal(buffers["order"].cpu(), order) and torch.equal(buffers["offsets"].cpu(), offsets)
    want = token_merge_reference(feeds["x"], feeds["weight"], order, offsets)
    torch.testing.assert_close(buffers["merged"].cpu(), want, rtol=1e-5, atol=1e-6)
