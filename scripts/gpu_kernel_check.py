#!/usr/bin/env python3
"""Check the qm Triton kernels on a CUDA GPU against the torch references (no pytest needed).

    python scripts/gpu_kernel_check.py --out OUT_DIR [--quick]

Sections (each guarded; a failure is recorded and the next section runs):
1. correctness: fp32/fp16/bf16, N in {197, 577, 1025, 4096}, D in {64, 768, 1024}, K ragged
   (1, ~N/3, N), empty groups, zero-weight rows holding NaN; order/offsets exact, merge within
   one rounding of the dtype, unmerge exact;
2. determinism: the same bits on repeated runs; 3. torch.ops.qm and the merge dispatcher on CUDA;
4. AOT: compile every plugin type combination for this GPU (scratch sizes 0, Triton's hidden
   scratch parameters trimmed from the PTX), then load the PTX through the driver with CuPy
   and launch it exactly as TensorRT would (same grid/block/shared formulas, exactly the
   arguments inputs|scalars|outputs), and compare;
5. the CUDA-array-interface view of a BF16 buffer used by the JIT plugin.
Writes ``gpu_kernel_check.json``; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import qm_export.kernels as K  # noqa: E402
from qm_export.merge.ops_reference import (  # noqa: E402
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RESULTS: list[dict] = []


def record(section: str, name: str, ok: bool, **info) -> None:
    RESULTS.append({"section": section, "name": name, "ok": bool(ok), **info})
    print(f"[{'ok' if ok else 'FAIL'}] {section}: {name} {info if not ok else ''}", flush=True)


def guarded(section: str):
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                record(section, "crashed", False, error=traceback.format_exc()[-2000:], exc=repr(exc))

        return run

    return wrap


def inputs(b, n, k, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    high = k - 1 if k > 1 else 1  # group K-1 stays empty when K > 1
    a = torch.randint(0, high, (b, n), generator=g)
    w = torch.rand(b, n, generator=g) + 0.05
    w[torch.rand(b, n, generator=g) < 0.2] = 0.0
    x = torch.randn(b, n, d, generator=g)
    x[w == 0] = float("nan")
    return a.cuda(), x.to(dtype).cuda(), w.cuda()


def tol(dtype):
    eps = torch.finfo(dtype).eps
    return (1e-5, 1e-5) if dtype == torch.float32 else (eps, eps)


@guarded("correctness")
def correctness(quick: bool) -> None:
    ns = [197, 577] if quick else [197, 577, 1025, 4096]
    cases = []
    for n in ns:
        cases += [(3, n, k, 768) for k in (1, n // 3 + 1, n)]
        cases += [(3, n, n // 3 + 1, d) for d in (64, 1024)]
    for b, n, k, d in cases:
        for dtype in DTYPES:
            name = f"B={b} N={n} K={k} D={d} {str(dtype).removeprefix('torch.')}"
            a, x, w = inputs(b, n, k, d, dtype, seed=n + k + d)
            order, offsets = K.token_group_index(a, k)
            ro, rf = token_group_index_reference(a, k)
            ok_group = torch.equal(order, ro) and torch.equal(offsets, rf)
            merged = K.token_merge(x, w, order, offsets)
            ref = token_merge_reference(x, w, ro, rf)
            rtol, atol = tol(dtype)
            err = (merged.float() - ref.float()).abs()
            ok_merge = bool((err <= atol + rtol * ref.float().abs()).all()) and not torch.isnan(merged).any()
            un = K.token_unmerge(merged, a)
            ok_un = torch.equal(un, token_unmerge_reference(merged, a))
            record(
                "correctness",
                name,
                ok_group and ok_merge and ok_un,
                group=ok_group,
                merge=ok_merge,
                unmerge=ok_un,
                max_abs_err=float(err.max()),
            )


@guarded("determinism")
def determinism() -> None:
    a, x, w = inputs(4, 4096, 1366, 1024, torch.bfloat16, seed=1)
    runs = [(*K.token_group_index(a, 1366), K.merge_groups(x, a, w, 1366)) for _ in range(5)]

    def bits(t):
        return t.contiguous().view(torch.uint8)

    same = all(torch.equal(bits(r), bits(s)) for run in runs[1:] for r, s in zip(run, runs[0]))
    record("determinism", "group index + merge_groups x5 bf16 (4, 4096, 1366, 1024)", same)


@guarded("custom_ops")
def custom_ops() -> None:
    from qm_export.merge import ops

    a, x, w = inputs(2, 577, 100, 768, torch.float16, seed=3)
    order, offsets = torch.ops.qm.token_group_index(a, 100)
    merged = torch.ops.qm.token_merge(x, w, order, offsets)
    ref = token_merge_reference(x, w, *token_group_index_reference(a, 100))
    rtol, atol = tol(torch.float16)
    record(
        "custom_ops",
        "torch.ops.qm on CUDA",
        torch.allclose(merged.float(), ref.float(), rtol=rtol, atol=atol),
    )
    record("custom_ops", "dispatcher uses kernels", ops._kernel_ops_available())


def _aot_case(op, combo) -> bool:
    from cupy_aot import TORCH_DTYPES, AotLaunch

    b, n, k, d = 3, 577, 193, 768
    x_dtype = TORCH_DTYPES[combo[0]] if op != "TokenGroupIndex" else torch.float32
    a, x, w = inputs(b, n, k, d, x_dtype, seed=7)
    a32 = a.to(torch.int32)
    order, offsets = token_group_index_reference(a, k)
    if op == "TokenGroupIndex":
        seeds = torch.zeros(b, k, dtype=torch.int64 if combo[1] == "INT64" else torch.int32, device="cuda")
        ins, outs = [a32, seeds], [torch.full_like(order, -1), torch.full_like(offsets, -1)]
        want = [order, offsets]
    elif op == "TokenMerge":
        ins, outs = (
            [x, w, order, offsets],
            [torch.full((b, k, d), float("nan"), dtype=x.dtype, device="cuda")],
        )
        want = [token_merge_reference(x, w, order, offsets)]
    else:
        y = torch.randn(b, k, d, device="cuda").to(x.dtype)
        ins, outs = [y, a32], [torch.full((b, n, d), float("nan"), dtype=x.dtype, device="cuda")]
        want = [token_unmerge_reference(y, a32)]
    AotLaunch(op, ins, outs).launch()
    torch.cuda.synchronize()
    rtol, atol = tol(outs[0].dtype) if outs[0].is_floating_point() else (0, 0)
    return all(torch.allclose(o.float(), e.float(), rtol=rtol, atol=atol) for o, e in zip(outs, want))


@guarded("aot")
def aot() -> None:
    import qm_export_plugins as qp

    for op in qp.PLUGIN_NAMES:
        for combo in qp.expand_type_combinations(qp.AUTOTUNE_TYPES[op]):
            try:
                record("aot", f"{op} {'/'.join(combo)} (TensorRT's arguments)", _aot_case(op, combo))
            except Exception as exc:
                record("aot", f"{op} {'/'.join(combo)} (TensorRT's arguments)", False, error=repr(exc)[:500])


@guarded("cuda_array_interface")
def cai() -> None:
    import qm_export_plugins as qp

    t = torch.randn(5, 7, device="cuda").to(torch.bfloat16)

    class Buf:
        __cuda_array_interface__ = qp.cuda_array_interface(t.data_ptr(), t.shape, "BF16")

    view = torch.as_tensor(Buf(), device="cuda").view(torch.bfloat16)
    record(
        "cuda_array_interface",
        "bf16 zero-copy view",
        torch.equal(view, t) and view.data_ptr() == t.data_ptr(),
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    from cupy_aot import import_plugins

    import_plugins()  # `plugins/` is importable as qm_export_plugins only when installed
    name = "gpu_kernel_check"
    correctness(args.quick)
    determinism()
    custom_ops()
    aot()
    cai()
    failed = [r for r in RESULTS if not r["ok"]]
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "passed": len(RESULTS) - len(failed),
        "failed": len(failed),
        "results": RESULTS,
    }
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
