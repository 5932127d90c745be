"""How far is a recipe's own fp16 / bf16 forward from its fp32 forward? The floor under any
reduced-precision value tolerance.

Parity compares a runtime's fp16 (bf16) outputs with torch's fp16 (bf16) outputs. Both carry
the rounding of their precision, independently, so they cannot be expected to agree more
closely than the reference itself agrees with fp32. This script measures that, without
exporting anything: per recipe, precision and seed, torch at the reduced precision against
torch in float32 arithmetic on the *same* rounded weights and inputs (what ONNX Runtime's
float32 upcast twin computes for bf16) at every declared shape, leaving out rows
whose merge selection differs (as parity does: their values are not judged), and the largest
absolute difference over all outputs. ``suggested`` is twice that, rounded up to one
significant digit; a recipe tolerance below it fails on rounding alone.

Usage::

    python scripts/calibrate_tolerances.py --json tolerances.json [--sizes tiny,small,base] [--seeds 0-2] [--example-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def _round_up(x: float) -> float:
    """Up to one significant digit: 0.0234 -> 0.03."""
    if x <= 0:
        return 0.0
    exp = math.floor(math.log10(x))
    return math.ceil(x / 10**exp) * 10**exp


def _same_selection_rows(a, b) -> torch.Tensor:
    """``(B,)`` bool: rows whose every merge picked the same seeds and groups in both runs."""
    batch = None
    keep = None
    for ma, mb in zip(a.merges, b.merges):
        for key in ("assign", "seeds"):
            if key in ma and key in mb:
                ta, tb = ma[key], mb[key]
                same = (ta == tb).reshape(ta.shape[0], -1).all(1) if ta.shape == tb.shape else torch.zeros(
                    ta.shape[0], dtype=torch.bool)
                keep = same if keep is None else keep & same
                batch = ta.shape[0]
    return keep if keep is not None else torch.ones(batch or 1, dtype=torch.bool)


def measure(source: str, precision: str, seed: int, example_only: bool = False) -> dict:
    from qm_export.models import load_source

    low = load_source(source, precision=precision, seed=seed)
    ref_model = copy.deepcopy(low.model).float()  # the same (rounded) weights, float32 arithmetic
    worst, excluded, rows = 0.0, 0, 0
    shapes = list(low.declared_shapes)[:1] if example_only else list(low.declared_shapes)
    for i, (b, s) in enumerate(shapes):
        xlo = low.sample_inputs(batch=b, seq_len=s, seed=seed + i)
        x32 = tuple(t.float() if t.is_floating_point() else t for t in xlo)
        with torch.no_grad():
            o32, olo = ref_model(*x32), low.model(*xlo)
        keep = _same_selection_rows(o32, olo)
        rows += int(keep.numel())
        excluded += int((~keep).sum())
        for name in low.model.output_names():
            a, c = o32.outputs[name].float(), olo.outputs[name].float()
            if a.shape[0] == keep.shape[0] and keep.any():
                d = (a[keep] - c[keep]).abs()
                worst = max(worst, float(d.max()) if d.numel() else 0.0)
    return {"source": source, "precision": precision, "seed": seed, "max_abs_vs_fp32": worst,
            "rows": rows, "rows_excluded": excluded, "recipe_max_abs": float(low.tolerance.max_abs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--precisions", default="fp16,bf16")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--example-only", action="store_true",
                        help="only the recipe's example shape (torch fp16 on a CPU is slow at the base recipes' "
                             "largest declared shapes)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    from qm_export.export.files import atomic_write_text
    from qm_export.recipes import recipe_names

    torch.set_num_threads(2)
    names = [n for n in recipe_names() if n.rsplit("-", 1)[-1] in args.sizes.split(",")]
    results = []
    for source in names:
        for precision in args.precisions.split(","):
            for seed in _seeds(args.seeds):
                t0 = time.perf_counter()
                row = measure(source, precision, seed, args.example_only)
                row["seconds"] = round(time.perf_counter() - t0, 1)
                results.append(row)
                print(f"{source} {precision} seed {seed}: {row['max_abs_vs_fp32']:.3g} "
                      f"(recipe {row['recipe_max_abs']:g}, {row['rows_excluded']}/{row['rows']} rows excluded, "
                      f"{row['seconds']} s)", file=sys.stderr, flush=True)
                summary = {}
                for r in results:
                    key = f"{r['source']} {r['precision']}"
                    s = summary.setdefault(key, {"worst": 0.0, "recipe_max_abs": r["recipe_max_abs"]})
                    s["worst"] = max(s["worst"], r["max_abs_vs_fp32"])
                    s["suggested"] = _round_up(2 * s["worst"])
                    s["recipe_below_floor"] = s["recipe_max_abs"] < s["suggested"]
                atomic_write_text(args.json, json.dumps({"rows": results, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
