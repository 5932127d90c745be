"""Tiny models exported once per test run and shared by the test modules that only read them
(each export costs 5-15 s on the 2-core machines): vit-tiny merged (``merged``), the same
unmerged (``baseline``), encoder-tiny merged (``text``); each exported on first use. Under
pytest-xdist the workers of one run share them too: the folder is named after the run
(``PYTEST_XDIST_TESTRUNUID``), the first worker to need a model exports it under a file lock
and the others wait for it and read it, and the controller removes the folder at the end
(``conftest.py``). No parity check here: convert's tests do that. Tests must not modify these
files (write variants to their own ``tmp_path``)."""

from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

_MODELS = {
    "merged": ("vit-tiny", False, "vit-tiny.onnx"),
    "baseline": ("vit-tiny", True, "vit-tiny-nomerge.onnx"),
    "text": ("encoder-tiny", False, "encoder-tiny.onnx"),
}


def run_folder(run_id: str) -> Path:
    """The folder the xdist workers of run ``run_id`` share."""
    return Path(tempfile.gettempdir()) / f"qm-tiny-exports-{run_id}"


@functools.lru_cache(maxsize=None)
def shared_folder() -> Path:
    """The folder this run's tests share (the xdist workers' common one, else this process's)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id:  # an xdist worker: the folder of this run, removed by the controller
        folder = run_folder(run_id)
        folder.mkdir(exist_ok=True)
        return folder
    folder = Path(tempfile.mkdtemp(prefix="qm-tiny-exports-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.lru_cache(maxsize=None)
def tiny_export(key: str) -> Path:
    """The model ``key`` (``merged``, ``baseline`` or ``text``), exported on first use (by
    whichever xdist worker of the run needs it first)."""
    from filelock import FileLock
    from rich.console import Console

    from qm_export.export.convert import ConvertOptions, run_convert

    source, no_merge, name = _MODELS[key]
    out = shared_folder() / name
    with FileLock(str(out) + ".lock"):
        if not out.exists():  # run_convert moves the file into place only once it is complete
            run_convert(ConvertOptions(source=source, output=out, no_merge=no_merge, verify=False),
                        console=Console(file=io.StringIO()))
    return out


class _Lazy(Mapping):
    def __getitem__(self, key: str) -> Path:
        return tiny_export(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_MODELS)

    def __len__(self) -> int:
        return len(_MODELS)


def tiny_exports() -> Mapping[str, Path]:
    """``{"merged", "baseline", "text"}`` -> path, each exported when first read."""
    return _Lazy()


def export_both_impls(loaded, folder: Path) -> dict:
    """One trace of ``loaded`` (opset 20) saved as ``plugin.onnx`` and ``inline.onnx`` in
    ``folder``: ``{merge_impl: ExportedModel}`` (call ``cleanup()`` on each when done)."""
    from qm_export.export.onnx_export import export_onnx, trace_to_ir

    traced = trace_to_ir(loaded, 20)
    return {impl: export_onnx(loaded, folder / f"{impl}.onnx", merge_impl=impl, traced=traced)
            for impl in ("plugin", "inline")}
