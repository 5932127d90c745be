"""Malformed models never crash ``qm-export check`` or ``validate`` (issue 14, section 4).

Takes a small exported model (vit-tiny merged, exported here) and its external-data variant,
applies seeded mutations (bit flips, truncations, duplicated or dropped protobuf fields, huge,
negative and int64-overflowing dims, broken external-data entries, changed types and
attributes) and runs ``check`` and ``validate`` on each mutated model, each case in a child
process forked from this one (so the imports are paid once) under a memory cap
(``RLIMIT_AS``) and a time limit. Every run must end with exit code 0, 1 or 2, one line of
reason on failure, no traceback, no signal and no hang.

Usage::

    python scripts/fuzz_models.py --count 300 --seed 0 [--jobs 2] [--json out.json]

Exit code 0 when every case passed those rules, 1 otherwise. ``tests/test_fuzz_models.py``
runs the same engine on fewer cases.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import random
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

#: Cap on a child's address space above the parent's (torch and ONNX Runtime map a lot of
#: virtual memory without touching it).
MEMORY_HEADROOM = 4 * 2**30
_PROGRESS = re.compile(r"^\s*\d+\.\ds  ")
_VERDICT = {1: "FAILED: ", 2: "Error: "}


# --- mutations ------------------------------------------------------------------------------

def _bitflip(rng: random.Random, data: bytes, _model: onnx.ModelProto) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _truncate(rng: random.Random, data: bytes, _model: onnx.ModelProto) -> bytes:
    return data[: rng.randrange(len(data))]


def _dup_bytes(rng: random.Random, data: bytes, _model: onnx.ModelProto) -> bytes:
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 256))
    return data[:j] + data[i:j] + data[j:]


def _lists(model: onnx.ModelProto) -> list[Any]:
    g = model.graph
    return [x for x in (g.node, g.initializer, g.input, g.output, g.value_info, model.opset_import,
                        model.functions, model.metadata_props) if len(x)]


def _dup_field(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    target = rng.choice(_lists(model))
    item = rng.choice(list(target))
    target.add().CopyFrom(item)
    return model


def _drop_field(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    choice = rng.randrange(4)
    if choice == 0:
        model.ClearField(rng.choice(["graph", "opset_import", "ir_version", "functions", "metadata_props"]))
    elif choice == 1 and len(model.graph.node):
        node = rng.choice(list(model.graph.node))
        if len(node.input):
            del node.input[rng.randrange(len(node.input))]
        elif len(node.attribute):
            del node.attribute[rng.randrange(len(node.attribute))]
    else:
        target = rng.choice(_lists(model))
        del target[rng.randrange(len(target))]
    return model


def _shapes(model: onnx.ModelProto) -> list[Any]:
    g = model.graph
    return [vi.type.tensor_type.shape for vi in (*g.input, *g.output, *g.value_info)
            if vi.type.HasField("tensor_type") and len(vi.type.tensor_type.shape.dim)]


def _set_dims(rng: random.Random, model: onnx.ModelProto, values: list[int]) -> onnx.ModelProto:
    """Put ``values`` into a declared shape or an initializer's dims (chosen at random)."""
    shapes = _shapes(model)
    if shapes and rng.random() < 0.5:
        shape = rng.choice(shapes)
        del shape.dim[:]
        for v in values:
            shape.dim.add().dim_value = v
        return model
    inits = list(model.graph.initializer)
    if inits:
        t = rng.choice(inits)
        del t.dims[:]
        t.dims.extend(values)
    return model


def _huge_dim(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    return _set_dims(rng, model, [rng.choice([2**31, 2**40, 2**62, 2**63 - 1]), rng.randint(1, 8)])


def _negative_dim(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    return _set_dims(rng, model, [rng.choice([-1, -7, -(2**62)]), rng.randint(1, 8)])


def _overflow_dims(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    return _set_dims(rng, model, [2**31 + rng.randint(0, 9)] * rng.randint(3, 5))  # product > 2**63


def _retype(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    pool = list(model.graph.initializer) + [vi.type.tensor_type for vi in (*model.graph.input, *model.graph.output)]
    target = rng.choice(pool)
    if isinstance(target, onnx.TensorProto):
        target.data_type = rng.randint(0, 30)
    else:
        target.elem_type = rng.randint(0, 30)
    return model


def _attribute(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    nodes = [n for n in model.graph.node if len(n.attribute)]
    nodes += [n for fn in model.functions for n in fn.node if len(n.attribute)]
    if not nodes:
        return model
    attr = rng.choice(list(rng.choice(nodes).attribute))
    value = rng.choice([-1, 0, 2**31, -(2**63), 2**63 - 1, 7])
    if attr.type == onnx.AttributeProto.INT:
        attr.i = value
    elif attr.type == onnx.AttributeProto.INTS:
        attr.ints.append(value)
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float("nan")
    else:
        attr.type = rng.randint(0, 14)  # a type that disagrees with the value
    return model


def _external_entry(rng: random.Random, _data: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    tensors = [t for t in model.graph.initializer if len(t.external_data)]
    if not tensors:
        return _retype(rng, _data, model)
    t = rng.choice(tensors)
    entry = rng.choice(list(t.external_data))
    entry.value = rng.choice({
        "location": ["../outside.bin", "/etc/hostname", "", "sub/../../x", "missing.bin", ".", "model.onnx"],
        "offset": ["-1", str(2**63), "x", "999999999", "0"],
        "length": ["-8", str(2**64), "0", "1", "4096"],
    }.get(entry.key, ["?"]))
    return model


MUTATORS: dict[str, Callable[..., Any]] = {
    "bitflip": _bitflip, "truncate": _truncate, "dup-bytes": _dup_bytes, "dup-field": _dup_field,
    "drop-field": _drop_field, "huge-dim": _huge_dim, "negative-dim": _negative_dim,
    "overflow-dims": _overflow_dims, "retype": _retype, "attribute": _attribute, "external-entry": _external_entry,
}


@dataclass
class Case:
    """One mutated model: ``index``, the base model's ``variant`` (``inline``/``external``),
    the ``mutator`` and where the mutated file is."""

    index: int
    variant: str
    mutator: str
    path: str


def make_cases(bases: dict[str, Path], folder: Path, count: int, seed: int) -> list[Case]:
    """``count`` mutated models written into ``folder`` (each base variant's own subfolder, so
    an external-data model finds its data file), mutators in turn, seeded."""
    rng = random.Random(seed)
    names = sorted(MUTATORS)
    cases = []
    protos = {v: onnx.load(os.fspath(p), load_external_data=False) for v, p in bases.items()}
    raw = {v: p.read_bytes() for v, p in bases.items()}
    for i in range(count):
        variant = sorted(bases)[i % len(bases)]
        mutator = names[(i // len(bases)) % len(names)]
        if mutator == "external-entry" and variant != "external":
            mutator = "bitflip"
        fn = MUTATORS[mutator]
        out = fn(rng, raw[variant], copy.deepcopy(protos[variant]))
        data = out if isinstance(out, bytes) else out.SerializeToString()
        path = folder / variant / f"case{i:04d}-{mutator}.onnx"
        path.write_bytes(data)
        cases.append(Case(i, variant, mutator, str(path)))
    return cases


# --- running one case in a child ------------------------------------------------------------

def _judge(command: str, res: Any) -> dict[str, Any]:
    """The outcome of one command: exit code, last line, and the rules it broke."""
    out = res.output or ""
    stderr = getattr(res, "stderr", out) or ""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not _PROGRESS.match(ln)]
    last = lines[-1] if lines else ""
    broken = []
    traceback = "Traceback" in out or (res.exception is not None and not isinstance(res.exception, SystemExit))
    if traceback:
        broken.append(f"traceback: {type(res.exception).__name__}: {str(res.exception)[:300]}")
    if res.exit_code not in (0, 1, 2):
        broken.append(f"exit code {res.exit_code}")
    elif res.exit_code in _VERDICT and not last.startswith(_VERDICT[res.exit_code]):
        broken.append(f"last line is not '{_VERDICT[res.exit_code].strip()} ...': {last[:200]!r}")
    elif res.exit_code == 2 and len(lines) != 1:
        broken.append(f"{len(lines)} error lines")
    return {"command": command, "exit_code": res.exit_code, "last_line": last[:300], "traceback": traceback,
            "broken": broken}


def commands_for(path: str, fast: bool) -> dict[str, list[str]]:
    """The command lines run on each mutated model (``fast``: validate ort against onnx-ref on one
    input set, for models without a recorded source)."""
    validate = ["validate", path] + (["--backends", "ort,onnx-ref", "--batch", "1"] if fast else [])
    return {"check": ["check", path], "validate": validate}


def _child(conn: Any, case: Case, fast: bool, mem_limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # native libraries writing to the terminal; CliRunner captures Python's streams
    os.dup2(devnull, 2)
    from click.testing import CliRunner

    from qm_export.cli import main

    results = []
    for name, args in commands_for(case.path, fast).items():
        res = CliRunner().invoke(main, args)
        results.append(_judge(name, res))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send({"results": results, "peak_rss": peak})
    conn.close()


@dataclass
class Outcome:
    """What happened to one case: per command exit code and verdict line, or the child's end
    (``crash``: killed by a signal or died without a result; ``hang``: past the time limit)."""

    case: Case
    results: list[dict[str, Any]] = field(default_factory=list)
    crash: str | None = None
    hang: bool = False
    seconds: float = 0.0
    peak_rss: int = 0

    @property
    def broken(self) -> list[str]:
        found = [f"{r['command']}: {b}" for r in self.results for b in r["broken"]]
        if self.crash:
            found.append(f"crash: {self.crash}")
        if self.hang:
            found.append("hang")
        return found

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.case), "results": self.results, "crash": self.crash, "hang": self.hang,
                "seconds": round(self.seconds, 3), "peak_rss": self.peak_rss, "broken": self.broken}


def warm_up(bases: dict[str, Path], *, fast: bool) -> dict[str, list[dict[str, Any]]]:
    """Run the commands on every unmutated base in this process (so each forked child finds
    the runtimes imported and warm); returns their outcomes (each base should pass)."""
    from click.testing import CliRunner

    from qm_export.cli import main

    return {variant: [_judge(name, CliRunner().invoke(main, args))
                      for name, args in commands_for(os.fspath(path), fast).items()]
            for variant, path in bases.items()}


def _vm_size() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_cases(cases: list[Case], *, fast: bool, timeout: float, jobs: int = 1,
              progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run every case in a forked child (``jobs`` at a time), each under ``timeout`` seconds
    and an address-space cap of this process's size plus :data:`MEMORY_HEADROOM`."""
    ctx = multiprocessing.get_context("fork")
    mem_limit = _vm_size() + MEMORY_HEADROOM
    pending = list(cases)
    running: list[tuple[Any, Any, Case, float]] = []
    done: list[Outcome] = []
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, case, fast, mem_limit), daemon=True)
            proc.start()
            child.close()
            running.append((proc, parent, case, time.monotonic()))
        for item in list(running):
            proc, conn, case, start = item
            elapsed = time.monotonic() - start
            message, ended = None, False
            if conn.poll():
                try:
                    message = conn.recv()
                except EOFError:  # the child closed its end without a result: it died
                    ended = True
            if message is None and not ended and proc.is_alive() and elapsed < timeout:
                continue
            outcome = Outcome(case, seconds=elapsed)
            if message is not None:
                outcome.results, outcome.peak_rss = message["results"], message["peak_rss"]
                proc.join(timeout=10)
            elif not ended and proc.is_alive():
                outcome.hang = True
                proc.kill()
                proc.join()
            else:
                proc.join(timeout=10)
                code = proc.exitcode
                outcome.crash = f"signal {-code}" if code is not None and code < 0 else f"exit {code} without a result"
            conn.close()
            running.remove(item)
            done.append(outcome)
            if progress is not None:
                progress(outcome)
        time.sleep(0.01)
    return sorted(done, key=lambda o: o.case.index)


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts for docs/security.md: cases, exit codes per command, crashes, tracebacks, hangs, peak memory."""
    by_command: dict[str, Counter] = {}
    for o in outcomes:
        for r in o.results:
            by_command.setdefault(r["command"], Counter())[str(r["exit_code"])] += 1
    return {
        "cases": len(outcomes),
        "by_mutator": dict(sorted(Counter(o.case.mutator for o in outcomes).items())),
        "exit_codes": {cmd: dict(sorted(c.items())) for cmd, c in by_command.items()},
        "crashes": sum(o.crash is not None for o in outcomes),
        "tracebacks": sum(any(r["traceback"] for r in o.results) for o in outcomes),
        "hangs": sum(o.hang for o in outcomes),
        "broken": sum(bool(o.broken) for o in outcomes),
        "peak_rss_mib": round(max((o.peak_rss for o in outcomes), default=0) / 2**20, 1),
        "slowest_s": round(max((o.seconds for o in outcomes), default=0.0), 2),
    }


def external_variant(model: Path, folder: Path) -> Path:
    """``model`` saved into ``folder`` with its initializers over 1 KiB in ``model.onnx.data`` (the
    threshold onnx and convert use: small constants stay inline, where check can fold them)."""
    proto = onnx.load(os.fspath(model))
    path = folder / "model.onnx"
    onnx.save_model(proto, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    return path


def prepare_bases(model: Path, folder: Path, *, strip_metadata: bool = False) -> dict[str, Path]:
    """The two base models in ``folder/inline`` and ``folder/external`` (``strip_metadata``:
    without the provenance, so validate compares runtimes only and loads no torch source)."""
    proto = onnx.load(os.fspath(model))
    if strip_metadata:
        proto.ClearField("metadata_props")
    bases = {}
    for variant in ("inline", "external"):
        (folder / variant).mkdir(parents=True, exist_ok=True)
    inline = folder / "inline" / "model.onnx"
    onnx.save_model(proto, os.fspath(inline))
    bases["inline"] = inline
    bases["external"] = external_variant(inline, folder / "external")
    return bases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="mutated models (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="cases at a time (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it is a hang")
    parser.add_argument("--fast", action="store_true", help="validate on ort with one input set only")
    parser.add_argument("--json", type=Path, help="write the summary and every case here")
    parser.add_argument("--model", type=Path, help="an exported model to mutate [default: vit-tiny merged, exported here]")
    args = parser.parse_args()
    if args.count < 1 or args.jobs < 1 or args.timeout <= 0:
        parser.error("--count, --jobs and --timeout must be positive")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: folder {str(args.json.parent)!r} does not exist")

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qm_export.export.convert import ConvertOptions, run_convert

    # One torch thread, before torch starts any: a child forked from a process whose OpenMP pool
    # is running waits forever on a lock that pool's threads held at the fork.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    err = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="qm-fuzz-") as tmp:
        folder = Path(tmp)
        model = args.model
        if model is None:
            err.print("exporting vit-tiny (merged) ...")
            model = folder / "vit-tiny.onnx"
            with open(os.devnull, "w") as sink:
                run_convert(ConvertOptions(source="vit-tiny", output=model, verify=False), console=Console(file=sink))
        bases = prepare_bases(model, folder / "bases")
        cases = make_cases(bases, folder / "bases", args.count, args.seed)
        for variant, results in warm_up(bases, fast=args.fast).items():
            err.print(f"base {variant}: " + ", ".join(f"{r['command']}={r['exit_code']}" for r in results))
        start = time.perf_counter()
        with Progress(TextColumn("fuzz"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[note]}"), console=err) as bar:
            task = bar.add_task("fuzz", total=len(cases), note="")

            def tick(o: Outcome) -> None:
                note = f"{o.case.index} {o.case.variant} {o.case.mutator} {o.seconds:.1f}s: " + (
                    ", ".join(o.broken) or " ".join(f"{r['command']}={r['exit_code']}" for r in o.results))
                bar.update(task, advance=1, note=note[:100])
                if not err.is_terminal:
                    err.print(note, soft_wrap=True)

            outcomes = run_cases(cases, fast=args.fast, timeout=args.timeout, jobs=args.jobs, progress=tick)
        summary = summarize(outcomes)
        summary.update(seed=args.seed, seconds=round(time.perf_counter() - start, 1), fast=args.fast,
                       command=" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    for o in outcomes:
        if o.broken:
            err.print(f"[red]case {o.case.index} ({o.case.variant}, {o.case.mutator}):[/red] {'; '.join(o.broken)}")
    err.print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "cases": [o.to_json() for o in outcomes]}, indent=2))
    return 1 if summary["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
