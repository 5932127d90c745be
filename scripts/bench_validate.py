"""How long ``qm-export validate`` takes against the work it cannot avoid (issue 9's goal).

The goal: ``validate`` of a base model on ``ort`` takes at most 2x the time of one torch
forward plus one ONNX Runtime forward per input set. This script exports the model (not
timed), then, in fresh processes so that nothing is cached between them:

1. ``qm-export validate MODEL --backends ort`` wall time (the whole command, Python start included);
2. the floor: one torch forward and one ORT forward of every input set validate uses
   (the model's declared shapes), timed after loading, each run once, cold like validate's.

Usage::

    python scripts/bench_validate.py --recipe vit-base [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

FLOOR = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from qm_export.backends.onnxruntime import OrtRunner
    from qm_export.backends.torch_runner import TorchRunner
    from qm_export.validate.inputs import source_input_sets
    from qm_export.validate.model_file import load_reference, open_model_file

    model, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    mf = open_model_file(model)
    loaded, _ = load_reference(mf, debug_outputs=True)
    sets = source_input_sets(loaded, seed=0)
    t, o = TorchRunner(loaded), OrtRunner(model, threads=threads)
    out = []
    for feeds in sets:
        t0 = time.perf_counter(); t.run(feeds); t1 = time.perf_counter(); o.run(feeds); t2 = time.perf_counter()
        out.append({"shape": list(next(iter(feeds.values())).shape), "torch_s": t1 - t0, "ort_s": t2 - t1})
    print(json.dumps(out))
    """
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="vit-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here (atomically)")
    args = parser.parse_args(argv)
    exe = Path(sys.executable)
    cli = [str(exe.parent / "qm-export")]
    with tempfile.TemporaryDirectory(prefix="qm-bench-validate-") as tmp:
        model = Path(tmp) / f"{args.recipe}.onnx"
        print(f"exporting {args.recipe} (not timed)", file=sys.stderr)
        subprocess.run(cli + ["convert", args.recipe, "-o", str(model), "--no-verify"], check=True,
                       capture_output=True)
        t0 = time.perf_counter()
        done = subprocess.run(cli + ["validate", str(model), "--backends", "ort", "--threads", str(args.threads)],
                              capture_output=True, text=True)
        validate_s = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        floor = json.loads(subprocess.run([str(exe), "-c", FLOOR, str(model), str(args.threads)], check=True,
                                          capture_output=True, text=True).stdout)
    floor_s = sum(r["torch_s"] + r["ort_s"] for r in floor)
    result = {"recipe": args.recipe, "threads": args.threads, "validate_s": validate_s, "floor_s": floor_s,
              "ratio": validate_s / floor_s, "goal": 2.0, "input_sets": floor}
    print(f"{args.recipe}: validate --backends ort {validate_s:.1f} s; one torch + one ORT forward per input set "
          f"{floor_s:.1f} s; ratio {validate_s / floor_s:.2f} (goal <= 2)")
    for r in floor:
        print(f"  {'x'.join(map(str, r['shape']))}: torch {r['torch_s']:.2f} s, ort {r['ort_s']:.2f} s")
    if args.json:
        from qm_export.export.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
