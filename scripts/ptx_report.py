#!/usr/bin/env python3
"""Static report of the qm kernels for a GPU generation, without a GPU.

Compiles each kernel at the benchmark shapes for ``GPUTarget("cuda", CC, 32)`` two ways:

- ``plugin``: exactly what the TensorRT plugin's ``aot_impl`` returns (``compile_kernel``:
  no pointer-alignment claim, ``D`` marked a multiple of 16 when it is);
- ``aligned``: the same plus every pointer marked 16-byte aligned and every int argument that
  is a multiple of 16 marked so, which is how Triton's JIT specialises the kernel the torch
  launcher runs on freshly allocated tensors.

For each it assembles the PTX with Triton's ``ptxas -v`` and reports registers per thread,
spill bytes, shared memory, threads per block, and the widths of the global loads and stores
in the PTX (``b16`` = one fp16 element per instruction, ``v4.b32`` = 16 bytes).

    env -u TRITON_INTERPRET python scripts/ptx_report.py [--cc 90] [--json out.json]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from cupy_aot import import_plugins  # noqa: E402  (imports no CuPy)

from qm_export.export.files import atomic_write_text  # noqa: E402

#: (label, op, I/O dtypes, input shapes) at the benchmark shapes of issue 5.
CASES = [
    ("group (4,16384,5462)", "TokenGroupIndex", ("INT32", "INT32", "INT32", "INT32"), [(4, 16384), (4, 5462)]),
    ("group (64,197,66)", "TokenGroupIndex", ("INT32", "INT32", "INT32", "INT32"), [(64, 197), (64, 66)]),
    ("merge fp16 (16,4096,1366,1024)", "TokenMerge", ("HALF", "FLOAT", "INT32", "INT32", "HALF"),
     [(16, 4096, 1024), (16, 4096), (16, 4096), (16, 1367)]),
    ("merge bf16 (64,197,66,768)", "TokenMerge", ("BF16", "FLOAT", "INT32", "INT32", "BF16"),
     [(64, 197, 768), (64, 197), (64, 197), (64, 67)]),
    ("unmerge fp16 (16,1366,4096,1024)", "TokenUnmerge", ("HALF", "INT32", "HALF"), [(16, 1366, 1024), (16, 4096)]),
    ("unmerge bf16 (64,66,197,768)", "TokenUnmerge", ("BF16", "INT32", "BF16"), [(64, 66, 768), (64, 197)]),
]


def _aligned_attrs(qp, op: str, shapes) -> dict:
    inputs, scalars, outputs = qp.kernel_params(op)
    values = dict(zip(scalars, qp.scalar_args(op, shapes)))
    names = [*inputs, *scalars, *outputs]
    return {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(names)
        if name not in values or values[name] % 16 == 0
    }


def compile_variant(op: str, dtypes, shapes, cc: int, aligned: bool):
    """(PTX, kernel name, threads per block, shared bytes) of one variant."""
    import triton
    from triton.backends.compiler import GPUTarget

    qp = import_plugins()
    from qm_export_plugins.aot import compile_kernel, jit_function

    target = GPUTarget("cuda", cc, 32)
    if not aligned:
        k = compile_kernel(op, dtypes, shapes, target=target)
        return k.ptx, k.name, k.block_x, k.shared_mem
    cfg = qp.launch_config(op, shapes)
    sig = qp.triton_signature(op, dtypes, tuple(cfg.constexprs))
    src = triton.compiler.ASTSource(
        fn=jit_function(op), signature=sig, constexprs=cfg.constexprs, attrs=_aligned_attrs(qp, op, shapes)
    )
    c = triton.compile(src, target=target, options={"num_warps": cfg.num_warps})
    return c.asm["ptx"], c.metadata.name, c.metadata.num_warps * 32, c.metadata.shared


def ptxas_info(ptx: str, cc: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        Path(src).write_text(ptx)
        proc = subprocess.run(
            [get_ptxas(cc).path, "-v", f"--gpu-name={sm_arch_from_capability(cc)}", src, "-o", src + ".o"],
            capture_output=True,
            text=True,
        )
    if proc.returncode:
        return {"error": proc.stderr[-300:]}
    log = proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else None}


def access_widths(ptx: str) -> dict:
    """Distinct global load / store instruction forms, e.g. ``ld.global.v4.b32``."""
    def forms(kind: str) -> list[str]:
        found = re.findall(rf"\b{kind}\.global((?:\.[\w:]+?)*?)\.((?:v\d\.)?[bfsu]\d+)\b", ptx)
        return sorted({w for _, w in found})

    return {"loads": forms("ld"), "stores": forms("st")}


@click.command()
@click.option("--cc", type=click.IntRange(70, 130), default=90, show_default=True,
              help="Compute capability to compile for (90 = H100/H200).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the rows as JSON (refused if the file exists).")
def main(cc: int, json_path: Path | None) -> None:
    """Registers, spills and memory-access widths of the qm kernels, per variant."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise click.UsageError("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    if json_path is not None and json_path.exists():
        raise click.BadParameter(f"{json_path} exists", param_hint="--json")
    console = Console()
    rows = []
    with console.status("compiling") as status:
        for label, op, dtypes, shapes in CASES:
            for aligned in (False, True):
                status.update(f"{label} ({'aligned' if aligned else 'plugin'})")
                ptx, _name, threads, shared = compile_variant(op, dtypes, shapes, cc, aligned)
                rows.append({"case": label, "variant": "aligned" if aligned else "plugin", "threads": threads,
                             "shared_bytes": shared, **ptxas_info(ptx, cc), **access_widths(ptx)})
    table = Table(title=f"qm kernels compiled for sm_{cc} (Triton ptxas -v)")
    for col in ("case", "variant", "threads", "regs", "spill B", "smem B", "global loads", "global stores"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["case"], r["variant"], str(r["threads"]), str(r.get("registers", r.get("error"))),
                      str(r.get("spill_bytes")), str(r["shared_bytes"]), " ".join(r["loads"]), " ".join(r["stores"]))
    console.print(table)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps({"cc": cc, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
