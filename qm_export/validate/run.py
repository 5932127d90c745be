"""``validate`` as a library function: MODEL + options -> :class:`ValidateReport`.

1. MODEL is checked (:func:`open_model_file`); the torch reference is rebuilt from the
   model's provenance or ``--source`` (:func:`load_reference`); without either, the first
   backend that runs is the reference and selection must agree exactly.
2. Input sets: ``--inputs`` (``.npz``, or Polygraphy's ``--save-inputs`` JSON), one
   ``--batch``/``--seq-len``, the source's seeded inputs at every declared shape, or inputs
   made from the graph.
3. A model saved without its merge debug outputs is run as its *debug twin*
   (:mod:`qm_export.export.debug_twin`), whose extra outputs are the recorded ``assign`` and
   ``seeds``; on ONNX Runtime the twin's outputs must equal the model's bit for bit.
4. Every backend runs every input set (:func:`compare_backends`); outputs loaded from a
   Polygraphy ``RunResults`` file (``--load-outputs``) join as further backends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import BACKENDS, BackendUnavailable, Runner, open_runner
from ..backends.ort_cuda import PlacementError
from ..export.debug_twin import TwinError, has_debug_outputs, make_debug_twin
from ..export.files import check_output_path
from ..export.parity import near_tie_for
from .compare import compare_backends, one_line
from .inputs import Feeds, check_feeds, load_npz_inputs, random_feeds, source_input_sets
from .model_file import ModelFile, load_reference, open_model_file
from .report import BackendStatus, ValidateReport

__all__ = ["ValidateOptions", "validate_model", "DEFAULT_BACKENDS", "REFERENCE_PARAM_LIMIT", "DEFAULT_TOLERANCES"]

#: What ``validate`` runs when ``--backends`` is not given: every runtime that is present.
DEFAULT_BACKENDS = ("ort", "onnx-ref", "ort-cuda", "trt")
#: ``onnx-ref`` (pure numpy, slow) runs by default only on models up to this many weights.
REFERENCE_PARAM_LIMIT = 2_000_000
#: Value tolerance per precision when neither the source nor the model's metadata gives one.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 0.0), "fp16": (2e-2, 0.0), "bf16": (1e-1, 0.0)}


@dataclass
class ValidateOptions:
    """Everything ``qm-export validate`` takes (see its ``--help``)."""

    model: Path
    source: str | None = None
    backends: Sequence[str] | None = None
    inputs: Path | None = None
    batch: int | None = None
    seq_len: int | None = None
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    threads: int | None = None
    save_outputs: Path | None = None
    save_inputs: Path | None = None
    load_outputs: Path | None = None
    force: bool = False
    #: a generation folder: greedy steps checked (default :data:`GENERATION_STEPS`, fewer when
    #: the prompt leaves less context).
    new_tokens: int | None = None


class ReplayRunner:
    """Outputs loaded from a file (``--load-outputs``), replayed one input set per call."""

    def __init__(self, name: str, iterations: list[dict[str, np.ndarray]]) -> None:
        self.name = name
        self.iterations = iterations
        self.input_names: list[str] = []
        self.output_names = list(iterations[0]) if iterations else []
        self._next = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.iterations[self._next]
        self._next += 1
        return out


def _precision(mf: ModelFile, loaded: Any) -> str:
    if loaded is not None:
        return str(loaded.precision)
    if mf.provenance is not None:
        return mf.provenance.precision
    if mf.model is not None:
        from ..trt.precision import onnx_precision

        try:
            return onnx_precision(mf.model) or "fp32"
        except ValueError:
            return "fp32"
    return "fp32"


def _tolerance(options: ValidateOptions, mf: ModelFile, loaded: Any, precision: str) -> tuple[float, float]:
    atol, rtol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    if loaded is not None:
        tol = loaded.tolerance
        atol, rtol = float(tol.max_abs), float(tol.max_rel or 0.0)
    else:
        import json

        try:
            tols = json.loads(mf.metadata.get("qm_export.tolerances", "{}"))
            if precision in tols:
                atol, rtol = float(tols[precision]["max_abs"]), float(tols[precision].get("max_rel") or 0.0)
        except (ValueError, TypeError, KeyError):
            pass
    return (options.atol if options.atol is not None else atol, options.rtol if options.rtol is not None else rtol)


def _input_sets(options: ValidateOptions, mf: ModelFile, loaded: Any) -> list[Feeds]:
    if options.inputs is not None:
        if options.batch is not None or options.seq_len is not None:
            raise ValueError("--inputs gives the inputs; do not also pass --batch/--seq-len")
        if Path(options.inputs).suffix == ".json":
            from ..backends.run_results import load_inputs

            sets = load_inputs(options.inputs)
            for feeds in sets:
                check_feeds(feeds, mf.inputs, f"--inputs {str(options.inputs)!r}")
            return sets
        return load_npz_inputs(options.inputs, mf.inputs)
    if loaded is not None:
        return source_input_sets(loaded, seed=options.seed, batch=options.batch, seq_len=options.seq_len)
    if options.batch is not None or options.seq_len is not None:
        return [random_feeds(mf.inputs, batch=options.batch or 1, seq_len=options.seq_len, seed=options.seed)]
    return [random_feeds(mf.inputs, batch=b, seq_len=None, seed=options.seed + i) for i, b in enumerate((2, 1))]


def _param_count(mf: ModelFile) -> int:
    if mf.model is None:
        return 0
    return sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in mf.model.graph.initializer)


def _has_external_data(model: Any) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _save(model: Any, mf: ModelFile, stack: ExitStack, name: str) -> Path:
    """``model`` as a temporary file ``stack`` removes. A model with external data sits beside
    MODEL (its data is found relative to it); inline weights go to an external data file in a
    temporary folder (protobuf-serializing hundreds of MB is slow: 4.6 s for ViT-B)."""
    import onnx

    if _has_external_data(model):
        fd, tmp = tempfile.mkstemp(prefix=f".qm-export-{name}-", suffix=".onnx", dir=mf.path.parent)
        os.close(fd)
        path = Path(tmp)
        stack.callback(path.unlink, missing_ok=True)
        onnx.save(model, os.fspath(path))
        return path
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"qm-{name}-")))
    path = folder / f"{name}.onnx"
    onnx.save(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}.onnx.data", size_threshold=1024)
    return path


@dataclass
class _Variants:
    """The files the backends run: ``native`` (the model, or its debug twin) for runtimes with
    every type the model uses, ``cpu`` (its float32 upcast when the model is bfloat16) for ORT
    CPU and onnx.reference, and ``plain_cpu``, the model itself as the CPU runtimes run it (for
    the twin-vs-model check). ``twin``: whether a debug twin was made; ``notes`` for the report."""

    native: Path
    cpu: Path
    plain_cpu: Path
    twin: bool
    notes: list[str]


def _variants(mf: ModelFile, stack: ExitStack) -> _Variants:
    from ..export.upcast import has_bf16, upcast_bf16

    notes: list[str] = []
    native = plain = mf.path
    twin_model = None
    if mf.model is not None and not has_debug_outputs(mf.model):
        try:
            twin_model = make_debug_twin(mf.model)  # mf.model holds inline weights (external data skipped)
        except TwinError as err:
            notes.append(f"selection is not checked: {err}")
    if twin_model is not None:
        notes.append("the model has no merge debug outputs: its debug twin (the same graph with each merge's "
                     "assign/seeds exposed) is run, and must match the model bit for bit on ort")
    cpu = plain_cpu = None
    if mf.model is not None and has_bf16(mf.model):
        if _has_external_data(mf.model):
            notes.append("bfloat16 with external data: the float32 upcast needs the weights in memory; "
                         "ort and onnx-ref run the model as is")
        else:  # upcast before saving anything: onnx.save moves a model's weights out (in place)
            cpu = _save(upcast_bf16(twin_model if twin_model is not None else mf.model), mf, stack, "upcast")
            plain_cpu = _save(upcast_bf16(mf.model), mf, stack, "upcast-plain") if twin_model is not None else cpu
            notes.append("bfloat16 model: ONNX Runtime's CPU provider has no bfloat16 kernels, so ort and onnx-ref run "
                         "its float32 upcast twin (the same graph and bf16 weights, float32 arithmetic), judged with "
                         "bf16's near-tie gap and tolerance; bf16 rounding itself shows on a bf16 runtime (trt)")
    if twin_model is not None:
        native = _save(twin_model, mf, stack, "twin")
    return _Variants(native, cpu or native, plain_cpu or plain, twin_model is not None, notes)


_ORT_BACKENDS = ("ort", "ort-cuda")


def _ort_crashes(names: list[str], files: _Variants) -> dict[Path, str]:
    """File -> why ONNX Runtime crashed creating a session on it, for each file an ONNX Runtime
    backend (or the twin check) will open, tried first in a forked child
    (:mod:`qm_export.export.crash_guard`); files that load, or fail cleanly, are absent."""
    from ..export.crash_guard import ort_session_in_child

    paths = [files.cpu if n == "ort" else files.native for n in names if n in _ORT_BACKENDS]
    if files.twin and "ort" in names:
        paths.append(files.plain_cpu)
    found = {}
    for path in dict.fromkeys(paths):
        why = ort_session_in_child(path)
        if why is not None:
            found[path] = why
    return found


def _merge_layers(mf: ModelFile, loaded: Any) -> list[int]:
    if loaded is not None:
        return [int(x) for x in loaded.merge_layers]
    import json

    try:
        return [int(x) for x in json.loads(mf.metadata.get("qm_export.merge_layers", "[]"))]
    except (ValueError, TypeError):
        return []


def _check_source_inputs(loaded: Any, mf: ModelFile, source: str | None) -> None:
    want = sorted(s.name for s in mf.inputs)
    got = sorted(loaded.input_names)
    if mf.model is not None and want != got:
        where = f"--source {source!r}" if source else "the model's recorded source"
        raise ValueError(f"{where} takes inputs {got}, but the model takes {want}: it is not this model's source")


#: Greedy steps ``validate`` checks on a generation folder by default.
GENERATION_STEPS = 32


def _generation(folder: Any, loaded: Any, input_sets: list[Feeds], options: ValidateOptions, report: ValidateReport,
                names: list[str], say: Callable[[str], None]) -> dict[str, Any] | None:
    """Generation parity over the folder's two graphs from the first input set's prompt."""
    from ..generation.loop import check_prompt
    from ..generation.validate import validate_generation

    if loaded is None or getattr(loaded, "generation", None) is None:
        report.notes.append("generation is not checked: there is no torch source to generate the reference with")
        return None
    feeds = input_sets[0]
    prompt = (feeds["input_ids"], feeds["attention_mask"])
    real = int(np.asarray(prompt[1]).sum(1).max())
    room = folder.spec.max_positions - real
    steps = options.new_tokens if options.new_tokens is not None else min(GENERATION_STEPS, room)
    check_prompt(folder.spec, *prompt, steps)  # --new-tokens beyond the context: a clear error
    return validate_generation(folder, loaded, prompt, steps=steps, atol=report.atol, rtol=report.rtol,
                               backends=names, threads=options.threads, progress=say)


def validate_model(options: ValidateOptions, progress: Callable[[str], None] | None = None) -> ValidateReport:
    """Run ``validate``; see the module docstring.

    Raises:
        FileNotFoundError / ValueError / OutputPathError / ProvenanceError: bad MODEL,
        options, inputs or output paths (before anything runs).
    """
    say = progress or (lambda _msg: None)
    for path in (options.save_outputs, options.save_inputs):
        if path is not None:
            check_output_path(path, force=options.force, suffix=".json")
    from ..generation.folder import is_generation_folder, read_generation_folder

    folder = read_generation_folder(options.model) if is_generation_folder(options.model) else None
    if options.new_tokens is not None and folder is None:
        raise ValueError(f"--new-tokens checks generation; {str(options.model)!r} is not a generation folder "
                         "(convert a causal LM with -o FOLDER)")
    mf = open_model_file(folder.prefill if folder is not None else options.model)
    explicit = options.backends is not None
    names = list(options.backends) if explicit else [b for b in DEFAULT_BACKENDS if mf.kind == "onnx" or b == "trt"]
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"--backends: unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if mf.kind == "engine":
        wrong = [n for n in names if n not in ("trt", "torch")]
        if wrong:
            raise ValueError(f"--backends: {', '.join(wrong)} run ONNX files; {mf.path.name} is a TensorRT engine (use trt)")
    names = [n for n in names if n != "torch"]  # torch is the reference, not a backend under test

    loaded = None
    reference_note = ""
    if options.source is not None or mf.provenance is not None:
        say("loading the torch reference")
        loaded, reference_note = load_reference(mf, options.source, debug_outputs=True)
        if folder is not None and getattr(loaded, "generation", None) is not None:
            from ..generation.export import as_prefill

            loaded = as_prefill(loaded)  # the folder's prefill graph: next-token logits and the cache
        _check_source_inputs(loaded, mf, options.source)
    precision = _precision(mf, loaded)
    report = ValidateReport(
        model=str(options.model), reference="torch" if loaded is not None else "",
        reference_note=reference_note, precision=precision, near_tie=near_tie_for(precision),
        atol=0.0, rtol=0.0,
    )
    report.atol, report.rtol = _tolerance(options, mf, loaded, precision)
    report.merge_layers = _merge_layers(mf, loaded)
    input_sets = _input_sets(options, mf, loaded)
    report.input_sets = [{n: list(a.shape) for n, a in feeds.items()} for feeds in input_sets]

    replay: list[Runner] = []
    if options.load_outputs is not None:
        from ..backends.run_results import load_run_results

        for runner_name, iterations in load_run_results(options.load_outputs).items():
            if len(iterations) != len(input_sets):
                raise ValueError(f"--load-outputs: runner {runner_name!r} has {len(iterations)} iteration(s) but there are "
                                 f"{len(input_sets)} input set(s); pass the inputs they were made from with --inputs")
            replay.append(ReplayRunner(f"loaded:{runner_name}", iterations))

    with ExitStack() as stack:
        files = _variants(mf, stack) if mf.kind == "onnx" else _Variants(mf.path, mf.path, mf.path, False, [])
        report.notes.extend(files.notes)
        runners: list[Runner] = []
        params = _param_count(mf)
        crashed = _ort_crashes(names, files) if mf.kind == "onnx" else {}
        for name in names:
            if name == "onnx-ref" and not explicit and params > REFERENCE_PARAM_LIMIT:
                report.backends[name] = BackendStatus("skipped", f"onnx.reference is slow: the model has {params / 1e6:.1f}M "
                                                                  "weights (ask for it with --backends onnx-ref)")
                continue
            say(f"loading {name}")
            path = files.cpu if name in ("ort", "onnx-ref") else files.native
            if name in _ORT_BACKENDS and path in crashed:
                report.backends[name] = BackendStatus("failed", f"cannot load the model: {crashed[path]} in a child "
                                                                "process (so it was not run in this one)")
                continue
            try:
                runners.append(open_runner(name, path, threads=options.threads))
                report.backends[name] = BackendStatus("ran")
            except BackendUnavailable as err:
                report.backends[name] = BackendStatus("skipped", err.why)
            except PlacementError as err:  # ort-cuda put merge compute on the CPU: not what is deployed
                report.backends[name] = BackendStatus("failed", f"merge ops fell back to the CPU: {one_line(err, 600)}")
            except Exception as err:  # a runtime that rejects the model: a finding
                report.backends[name] = BackendStatus("failed", f"cannot load the model: {one_line(err)}")
        for r in replay:
            runners.append(r)
            report.backends[r.name] = BackendStatus("ran", f"outputs loaded from {options.load_outputs}")
        reference = None
        if loaded is not None:
            from ..backends.torch_runner import TorchRunner

            reference = TorchRunner(loaded)
            report.backends = {"torch": BackendStatus("ran", "reference"), **report.backends}
        elif runners:
            report.reference = runners[0].name
            report.reference_note = "no source (the model records none; pass --source to compare with torch)"
            report.backends[runners[0].name].why = "reference (no torch source)"
        if reference is None and not runners:
            return report
        comp = compare_backends(reference, runners, input_sets, near_tie=report.near_tie, atol=report.atol,
                                rtol=report.rtol, progress=say, keep_outputs=True)
        report.results = comp.results
        for name, why in comp.failures.items():
            report.backends[name] = BackendStatus("failed", f"run failed: {why}")
        for name, checked in comp.selection_checked.items():
            report.backends[name].selection_checked = checked
            if not checked and name == "trt" and mf.kind == "engine":
                report.notes.append("trt: the engine has no merge debug outputs, so selection is not checked "
                                    "(build it from an ONNX converted with --debug-outputs to check it)")
        if files.twin and "ort" in comp.outputs and not comp.failures.get("ort") and files.plain_cpu not in crashed:
            say("ort: the model itself vs its debug twin")
            plain = open_runner("ort", files.plain_cpu, threads=options.threads).run(input_sets[0])
            first = comp.outputs["ort"][0]
            report.twin_matches_model = all(k in first and np.array_equal(v, first[k], equal_nan=True)
                                            for k, v in plain.items())
    if folder is not None:
        report.generation = _generation(folder, loaded, input_sets, options, report, names, say)
    if options.save_outputs is not None:
        from ..backends.run_results import save_run_results

        save_run_results(options.save_outputs, {f"qm-export:{n}": outs for n, outs in comp.outputs.items()},
                         force=options.force)
    if options.save_inputs is not None:
        from ..backends.run_results import save_inputs

        save_inputs(options.save_inputs, input_sets, force=options.force)
    return report
