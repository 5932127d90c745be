#!/usr/bin/env python3
"""Benchmark the qm Triton kernels against torch forms: effective bandwidth and % of copy bandwidth.

    python scripts/bench_kernels.py --out OUT_DIR            # CUDA, the three report shapes
    python scripts/bench_kernels.py --smoke --out OUT_DIR    # CPU, tiny shapes, Triton interpreter

Bytes counted (each tensor once, as the op must at least read or write it):
- merge:   x (B*N*D*s) + weight, order (B*N*4 each) + offsets (B*(K+1)*4) + out (B*K*D*s)
- unmerge: y (B*M*D*s, every merged row is read) + assign (B*N*4) + out (B*N*D*s)
- group:   assign (B*N*4) + order (B*N*4) + offsets (B*(K+1)*4)
s = bytes per element of x. Effective bandwidth = bytes / median time. Copy bandwidth =
2 * bytes of a `clone()` of a 2 GiB buffer / its median time. Times are medians over
`--repeats` runs, each timed with CUDA events after flushing L2 (a 256 MiB write, which also
keeps the GPU busy while the host launches the timed call, so launch overhead below its
duration is not counted). Every measurement is guarded: a failure is recorded in the JSON and
the run continues.

Implementations: ``triton`` is the torch launcher (Triton JIT, which specialises on 16-byte
aligned pointers); ``triton_aot`` is the PTX the TensorRT plugin's ``aot_impl`` returns, loaded
and launched with CuPy exactly as TensorRT does (``cupy_aot.py``; no pointer-alignment claim,
so narrower loads); the ``torch_*`` rows are the torch forms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from qm_export.export.files import atomic_write_text  # noqa: E402
from qm_export.kernels import token_group_index, token_merge, token_unmerge  # noqa: E402

SHAPES = [(64, 197, 66, 768), (16, 4096, 1366, 1024), (4, 16384, 5462, 1024)]
SMOKE_SHAPES = [(2, 37, 9, 16)]
GOAL_COPY_FRACTION, GOAL_SPEEDUP = 0.70, 3.0


def make_inputs(b, n, k, d, dtype, device, seed=0):
    """Ragged groups (every group non-empty), positive weights."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, k, (b, n), generator=g)
    a[:, :k] = torch.arange(k)
    a = torch.stack([row[torch.randperm(n, generator=g)] for row in a])
    x = torch.randn(b, n, d, generator=g).to(dtype)
    w = torch.rand(b, n, generator=g) + 0.1
    y = torch.randn(b, k, d, generator=g).to(dtype)
    return {t: v.to(device) for t, v in {"a": a, "x": x, "w": w, "y": y}.items()}


# ---- torch forms -------------------------------------------------------------------------


def merge_index_add(x, w, a, k):
    b, n, d = x.shape
    flat = (a + torch.arange(b, device=a.device).unsqueeze(1) * k).reshape(-1)
    num = torch.zeros(b * k, d, dtype=torch.float32, device=x.device)
    num.index_add_(0, flat, (x.float() * w.unsqueeze(-1)).reshape(-1, d))
    den = torch.zeros(b * k, dtype=torch.float32, device=x.device).index_add_(0, flat, w.reshape(-1))
    return (num / den.unsqueeze(-1)).view(b, k, d).to(x.dtype)


def merge_scatter_add(x, w, a, k):
    b, n, d = x.shape
    num = torch.zeros(b, k, d, dtype=torch.float32, device=x.device)
    num.scatter_add_(1, a.unsqueeze(-1).expand(b, n, d), x.float() * w.unsqueeze(-1))
    den = torch.zeros(b, k, dtype=torch.float32, device=x.device).scatter_add_(1, a, w)
    return (num / den.unsqueeze(-1)).to(x.dtype)


def merge_onehot_matmul(x, w, a, k):
    m = torch.nn.functional.one_hot(a, k).transpose(1, 2).to(x.dtype) * w.unsqueeze(1).to(x.dtype)
    return (torch.bmm(m, x).float() / m.float().sum(-1, keepdim=True)).to(x.dtype)


def unmerge_gather(y, a):
    return torch.gather(y, 1, a.unsqueeze(-1).expand(*a.shape, y.shape[-1]))


def unmerge_index_select(y, a):
    b, m, d = y.shape
    flat = (a + torch.arange(b, device=a.device).unsqueeze(1) * m).reshape(-1)
    return y.reshape(b * m, d).index_select(0, flat).view(*a.shape, d)


def unmerge_onehot_matmul(y, a):
    return torch.bmm(torch.nn.functional.one_hot(a, y.shape[1]).to(y.dtype), y)


def group_torch_sort(a, k):
    order = torch.sort(a, dim=1, stable=True).indices.to(torch.int32)
    counts = torch.zeros(a.shape[0], k, dtype=torch.int64, device=a.device).scatter_add_(
        1, a, torch.ones_like(a)
    )
    return order, torch.cat([counts.new_zeros(a.shape[0], 1), counts.cumsum(1)], 1).to(torch.int32)


# ---- timing ------------------------------------------------------------------------------


class Timer:
    def __init__(self, device: str, repeats: int, warmup: int):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device == "cuda" else None

    def median_ms(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.device == "cuda":
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth(timer: Timer, nbytes: int) -> dict:
    buf = torch.empty(nbytes // 4, dtype=torch.float32, device=timer.device).normal_()
    ms = timer.median_ms(lambda: buf.clone())
    return {"bytes_per_copy": 2 * buf.numel() * 4, "median_ms": ms, "gbps": 2 * buf.numel() * 4 / ms / 1e6}


def op_bytes(op, b, n, k, d, itemsize):
    if op == "merge":
        return b * n * d * itemsize + 2 * b * n * 4 + b * (k + 1) * 4 + b * k * d * itemsize
    if op == "unmerge":
        return b * k * d * itemsize + b * n * 4 + b * n * d * itemsize
    return 2 * b * n * 4 + b * (k + 1) * 4


def aot_launches(t: dict, order, offsets, a32, k: int) -> dict:
    """``op -> launch()`` of the TensorRT plugins' AOT kernels, or the exception that stopped one."""
    from cupy_aot import AotLaunch

    x, w, y = t["x"], t["w"], t["y"]
    b, n, d = x.shape
    makers = {
        "merge": lambda: AotLaunch("TokenMerge", [x, w, order, offsets], [torch.empty(b, k, d, dtype=x.dtype, device=x.device)]),
        "unmerge": lambda: AotLaunch("TokenUnmerge", [y, a32], [torch.empty(b, n, d, dtype=y.dtype, device=y.device)]),
        "group_index": lambda: AotLaunch(
            "TokenGroupIndex", [a32, torch.zeros(b, k, dtype=torch.int32, device=x.device)],
            [torch.empty_like(order), torch.empty_like(offsets)],
        ),
    }
    out = {}
    for op, make in makers.items():
        try:
            out[op] = make().launch
        except Exception as exc:  # recorded as an error row
            out[op] = exc
    return out


def bench_shape(timer, shape, dtype, copy_gbps) -> list[dict]:
    b, n, k, d = shape
    t = make_inputs(b, n, k, d, dtype, timer.device)
    order, offsets = token_group_index(t["a"], k)
    a32 = t["a"].to(torch.int32)
    aot = aot_launches(t, order, offsets, a32, k) if timer.device == "cuda" else {}
    forms = {
        "merge": {
            "triton": lambda: token_merge(t["x"], t["w"], order, offsets, validate=False),
            "torch_index_add": lambda: merge_index_add(t["x"], t["w"], t["a"], k),
            "torch_scatter_add": lambda: merge_scatter_add(t["x"], t["w"], t["a"], k),
            "torch_onehot_matmul": lambda: merge_onehot_matmul(t["x"], t["w"], t["a"], k),
        },
        "unmerge": {
            "triton": lambda: token_unmerge(t["y"], a32, validate=False),
            "torch_gather": lambda: unmerge_gather(t["y"], t["a"]),
            "torch_index_select": lambda: unmerge_index_select(t["y"], t["a"]),
            "torch_onehot_matmul": lambda: unmerge_onehot_matmul(t["y"], t["a"]),
        },
        "group_index": {
            "triton": lambda: token_group_index(a32, k, validate=False),
            "torch_sort": lambda: group_torch_sort(t["a"], k),
        },
    }
    for op, launch in aot.items():
        forms[op] = {"triton": forms[op].pop("triton"), "triton_aot": launch, **forms[op]}
    rows = []
    itemsize = torch.empty((), dtype=dtype).element_size()
    for op, impls in forms.items():
        nbytes = op_bytes(op, b, n, k, d, itemsize)
        results = {}
        for name, fn in impls.items():
            if isinstance(fn, Exception):
                results[name] = {"error": f"{type(fn).__name__}: {fn}"[:300]}
                continue
            try:
                results[name] = {"median_ms": timer.median_ms(fn)}
            except Exception as exc:  # keep going: record and continue
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                if timer.device == "cuda":
                    torch.cuda.empty_cache()
        torch_ms = [r["median_ms"] for name, r in results.items() if name.startswith("torch") and "median_ms" in r]
        for name, r in results.items():
            row = {
                "op": op,
                "impl": name,
                "dtype": str(dtype).removeprefix("torch."),
                "B": b,
                "N": n,
                "K": k,
                "D": d,
                "bytes": nbytes,
                **r,
            }
            if "median_ms" in r:
                row["gbps"] = nbytes / r["median_ms"] / 1e6
                row["pct_copy"] = 100 * row["gbps"] / copy_gbps if copy_gbps else None
                if name.startswith("triton") and torch_ms:
                    row["speedup_vs_best_torch"] = min(torch_ms) / r["median_ms"]
            rows.append(row)
    return rows


def to_markdown(report: dict) -> str:
    cb = report.get("copy_bandwidth", {})
    lines = [
        f"Device: {report['device']}; torch {report['torch']}, triton {report['triton']}",
        f"Copy bandwidth (clone of {cb.get('bytes_per_copy', 0) // 2 // 2**20} MiB, read+write): "
        f"{cb.get('gbps', float('nan')):.0f} GB/s",
        "",
        "| op | impl | dtype | B | N | K | D | median ms | GB/s | % copy | x best torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['op']} | {r['impl']} | {r['dtype']} | {r['B']} | {r['N']} | {r['K']} | {r['D']} | "
                f"error: {r['error'][:60]} | | | |"
            )
            continue
        pct = f"{r['pct_copy']:.0f}" if r.get("pct_copy") is not None else ""
        sp = f"{r['speedup_vs_best_torch']:.1f}" if "speedup_vs_best_torch" in r else ""
        lines.append(
            f"| {r['op']} | {r['impl']} | {r['dtype']} | {r['B']} | {r['N']} | {r['K']} | {r['D']} | "
            f"{r['median_ms']:.4f} | {r['gbps']:.0f} | {pct} | {sp} |"
        )
    lines += [
        "",
        f"Goals (merge/unmerge, two large shapes): >= {GOAL_COPY_FRACTION:.0%} of copy bandwidth, "
        f">= {GOAL_SPEEDUP:.0f}x the best torch form.",
    ]
    for r in report["rows"]:
        if r["impl"].startswith("triton") and r["op"] != "group_index" and r["N"] >= 4096 and "gbps" in r:
            ok = (r.get("pct_copy") or 0) >= 100 * GOAL_COPY_FRACTION and r.get(
                "speedup_vs_best_torch", 0
            ) >= GOAL_SPEEDUP
            lines.append(
                f"- {r['op']} ({r['impl']}) {r['dtype']} N={r['N']}: {r['pct_copy']:.0f}% copy, "
                f"{r.get('speedup_vs_best_torch', float('nan')):.1f}x -> {'met' if ok else 'NOT met'}"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Triton interpreter")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dtypes", default="float16,bfloat16")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    timer = Timer(device, args.repeats or (3 if args.smoke else 20), warmup=1 if args.smoke else 3)
    import triton

    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    try:
        report["copy_bandwidth"] = copy_bandwidth(timer, 2**20 if args.smoke else 2 * 2**30)
    except Exception as exc:
        report["copy_bandwidth"] = {"error": repr(exc)}
    copy_gbps = report["copy_bandwidth"].get("gbps")
    for shape in SMOKE_SHAPES if args.smoke else SHAPES:
        for dtype in [getattr(torch, name) for name in args.dtypes.split(",")]:
            try:
                report["rows"] += bench_shape(timer, shape, dtype, copy_gbps)
            except Exception as exc:
                report["rows"].append(
                    {
                        "op": "all",
                        "impl": "all",
                        "dtype": str(dtype),
                        "B": shape[0],
                        "N": shape[1],
                        "K": shape[2],
                        "D": shape[3],
                        "error": traceback.format_exception_only(exc)[-1],
                    }
                )
            atomic_write_text(args.out / "bench.json", json.dumps(report, indent=1))
            atomic_write_text(args.out / "bench.md", to_markdown(report))
            print(f"done {shape} {dtype}", file=sys.stderr, flush=True)
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
