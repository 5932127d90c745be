"""``convert`` of a causal LM into a generation folder (see :mod:`.folder` for the layout).

Steps, all inside a hidden staging folder beside OUT (``.OUT.unverified-XXXX/``):

1. the prefill graph through ``convert``'s own export and parity (selection per merge layer,
   values at every declared shape);
2. the decode graph (traced on a cache the model produced; every layer's cache length its own
   dynamic axis);
3. the manifest, and the tokenizer when the source has one;
4. generation parity: torch's greedy tokens and ONNX Runtime's (teacher-forced on them) for
   :data:`GENERATION_STEPS` steps (see :mod:`.parity`).

Only then is the staging folder renamed onto OUT. A failed check or Ctrl-C removes it (or
keeps it as ``OUT.failed/`` with ``--keep-failed``). ``--force`` replaces an existing
generation folder (or an empty folder), never another folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..export.convert import ConvertOptions, ConvertReport, load_for_convert, run_convert
from ..export.files import OutputPathError, user_mode
from .export import as_prefill, decode_view
from .folder import MANIFEST, is_generation_folder, manifest_json, read_generation_folder

__all__ = ["GENERATION_STEPS", "check_output_folder", "run_generation_convert", "wants_folder"]

#: Greedy steps ``convert`` checks (fewer when the example prompt leaves less context).
GENERATION_STEPS = 32


def wants_folder(output: str | os.PathLike[str]) -> bool:
    """``-o OUT`` without ``.onnx``: a generation folder (causal LMs)."""
    return Path(output).suffix != ".onnx"


def check_output_folder(path: str | os.PathLike[str], *, force: bool, option: str = "-o/--output") -> Path:
    """Validate a generation folder's path before any work: its parent exists and is writable;
    it does not exist, or (``force``) it is a generation folder or an empty folder.

    Raises:
        OutputPathError: naming the option and the path.
    """
    out = Path(path).expanduser()
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{option}: output folder {str(parent)!r} does not exist (it is not created for you)")
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputPathError(f"{option}: output path {str(out)!r} exists; pass --force to overwrite it")
        if out.is_symlink() or not out.is_dir() or not (is_generation_folder(out) or not any(out.iterdir())):
            raise OutputPathError(f"{option}: {str(out)!r} exists and is not a generation folder (no {MANIFEST}); "
                                  "--force replaces only a generation folder or an empty folder")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{option}: output folder {str(parent)!r} is not writable")
    return out.resolve()


def _commit(stage: Path, out: Path, force: bool) -> None:
    """Rename the staging folder onto ``out`` (an existing generation folder is moved aside
    first, then removed)."""
    for f in [*stage.rglob("*"), stage]:
        os.chmod(f, user_mode(directory=f.is_dir()))
    old = None
    if out.exists():
        if not force:
            raise OutputPathError(f"output path {str(out)!r} was created while converting; pass --force to overwrite it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_generation(loaded: Any, stage: Path, steps: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Generation parity of the staged folder against torch on ONNX Runtime (the bf16 graphs
    through their float32 upcast twins): :func:`~.validate.validate_generation`'s ``ort`` entry."""
    from .validate import validate_generation

    ids, mask = (t.numpy() for t in loaded.example_inputs[:2])
    steps = min(steps, loaded.generation.spec.max_positions - int(mask.sum(1).max()))
    tol = loaded.tolerance
    summary = validate_generation(read_generation_folder(stage), loaded, (ids, mask), steps=steps,
                                  atol=float(tol.max_abs), rtol=float(tol.max_rel or 0.0), backends=("ort",),
                                  progress=say)
    return summary["backends"]["ort"]


def run_generation_convert(options: ConvertOptions, console: Any = None,
                           progress: Callable[[str], None] | None = None) -> ConvertReport:
    """Write a causal LM's generation folder at ``options.output`` (see the module docstring).

    Raises:
        OutputPathError: see :func:`check_output_folder`.
        ValueError: the source is not a causal LM (it has no generation contract).
        Whatever :func:`~qm_export.export.convert.run_convert` raises.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    say = progress or (lambda _msg: None)
    out = check_output_folder(options.output, force=options.force)
    keep = out.with_name(out.name + ".failed") if options.keep_failed else None
    if keep is not None and keep.exists() and not options.force:
        raise OutputPathError(f"--keep-failed: {str(keep)!r} exists; pass --force to overwrite it")
    say(f"loading {options.source}")
    loaded = load_for_convert(options)
    if loaded.generation is None:
        raise ValueError(f"-o/--output {str(options.output)!r} has no .onnx suffix, which asks for a generation folder "
                         f"(prefill + decode graphs); {options.source} is a {loaded.family} model, not a causal LM: "
                         "write OUT.onnx")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.unverified-", dir=out.parent))
    report: ConvertReport | None = None
    try:
        inner = dataclasses.replace(options, output=stage / "prefill.onnx", force=False, keep_failed=False)
        report = run_convert(inner, console, say, loaded=as_prefill(loaded))
        if report.passed:
            say("exporting the decode graph")
            from ..export.onnx_export import export_onnx

            meta = {"qm_export.source": options.source, "qm_export.family": loaded.family,
                    "qm_export.precision": loaded.precision, "qm_export.graph": "decode"}
            decode = export_onnx(decode_view(loaded.generation), stage / "decode.onnx", opset=report.export["opset"],
                                 metadata=meta, progress=say)
            decode.cleanup()
            tokenizer = getattr(loaded, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(os.fspath(stage / "tokenizer"))
            info = {"source": options.source, "family": loaded.family, "precision": loaded.precision,
                    "merged": bool(loaded.merge_layers), "schedule": report.schedule, "method": report.method,
                    "merge_layers": report.merge_layers, "opset": report.export["opset"]}
            manifest = manifest_json(loaded.generation.spec, tokenizer=tokenizer is not None, **info)
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            report.layout = {"folder": str(out), "manifest": MANIFEST, "prefill": "prefill.onnx",
                             "decode": "decode.onnx", "tokenizer": manifest["tokenizer"],
                             "decode_file_bytes": decode.file_bytes}
            if options.verify:
                report.generation = _check_generation(loaded, stage, GENERATION_STEPS, say)
                from .render import generation_table

                console.print(generation_table(report.generation))
        if report.passed:
            say(f"moving {out.name} into place")
            _commit(stage, out, options.force)
            report.output = str(out)
        else:
            report.output = None
            report.kept_failed = _settle(stage, keep, console)
    except BaseException:
        if stage.exists():
            kept = _settle(stage, keep, console)
            if report is not None:
                report.kept_failed = kept
        raise
    return report


def _settle(stage: Path, keep: Path | None, console: Any) -> str | None:
    """A staging folder that must not take its final name: kept as ``keep`` (said where) or removed."""
    if keep is None:
        shutil.rmtree(stage, ignore_errors=True)
        return None
    if keep.exists():
        shutil.rmtree(keep)
    os.replace(stage, keep)
    console.print(f"[yellow]kept the unverified folder as {keep}[/] (--keep-failed)", soft_wrap=True)
    return str(keep)
