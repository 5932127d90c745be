"""Test session settings.

Torch runs single-threaded in tests unless ``QM_TEST_THREADS`` says otherwise: the tests use
small tensors, and on a shared 2-core machine OpenMP threads spinning against other processes
made a 40-step training test 100x slower (25 s instead of 0.3 s). ONNX Runtime sessions that
leave the thread count to ORT get the same count (tests/test_validate.py and test_profile.py:
117 s -> 75 s on a busy 2-core machine). Slow modules are collected first; a model is traced
once per run (``trace_cache.py``), and under pytest-xdist the workers share the tiny exports
(``tiny_exports.py``) and the traces through one folder per run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
import trace_cache

THREADS = int(os.environ.get("QM_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)


def _ort_threads_default() -> None:
    """ONNX Runtime sessions that leave ``intra_op_num_threads`` at 0 (ORT's choice: one
    spinning pool thread per core) get ``THREADS`` too: two xdist workers each spinning two
    threads on two cores slowed each other down. A caller's explicit count is kept."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    real = ort.InferenceSession.__init__
    if getattr(real, "_qm_test_threads", False):
        return

    def init(self, path_or_bytes, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = ort.SessionOptions()
        if sess_options.intra_op_num_threads == 0:
            sess_options.intra_op_num_threads = THREADS
        real(self, path_or_bytes, sess_options, *args, **kwargs)

    init._qm_test_threads = True  # type: ignore[attr-defined]
    ort.InferenceSession.__init__ = init


_ort_threads_default()


#: The slowest modules (measured with --durations=0), run first: --dist loadscope hands out whole
#: modules in collection order, so a slow module collected last keeps one worker busy while
#: the other idles; started first, the many small modules fill in behind them. Longest first
#: (test_generation and test_tome_export took 48 s and 40 s in a full run on 2 cores).
SLOW_MODULES = ("test_generation.py", "test_tome_export.py", "test_convert.py", "test_embed_merge.py", "test_sweep.py",
                "test_serve_bench.py", "test_models_export.py", "test_convert_hf.py", "test_kernels.py",
                "test_serve_server.py", "test_fuzz_models.py", "test_trt_plugin_layer.py", "test_plugins.py",
                "test_cli_behaviour.py", "test_trt_check.py", "test_gguf.py", "test_profile_cli.py", "test_validate.py",
                "test_precision.py", "test_pipeline.py")


# A model traced once in this run is not traced again (``trace_cache.py``), fixtures included.
trace_cache.install()


@pytest.fixture(autouse=True)
def _fresh_trace(request) -> Iterator[None]:
    """Tests marked ``fresh_trace`` trace for real."""
    trace_cache.STATE["fresh"] = request.node.get_closest_marker("fresh_trace") is not None
    yield
    trace_cache.STATE["fresh"] = False


def pytest_collection_modifyitems(config, items) -> None:
    """The modules of :data:`SLOW_MODULES` first (in that order), the others as collected."""
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _xdist_controller(config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config) -> None:
    """Under xdist, name the run here so the controller knows the folder in which its workers
    share the tiny exports (``tiny_exports.py``): xdist hands this id to every worker."""
    if _xdist_controller(config) and not getattr(config.option, "testrunuid", None):
        import uuid

        config.option.testrunuid = uuid.uuid4().hex


def pytest_sessionfinish(session) -> None:
    """The xdist controller removes the tiny exports its workers shared."""
    if _xdist_controller(session.config) and getattr(session.config.option, "testrunuid", None):
        import shutil

        from tiny_exports import run_folder

        shutil.rmtree(run_folder(session.config.option.testrunuid), ignore_errors=True)
