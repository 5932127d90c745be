"""Native code that may crash on a malformed model runs first in a forked child.

ONNX's shape inference and ONNX Runtime's session creation are C++; a malformed model that
makes one of them crash (a segfault, an abort) would take the command down with it: no
verdict line, no ``--json`` document. :func:`first_in_child` runs the same work in a child
forked from this process first; when the child dies by a signal, or runs past a time limit,
the caller gets a sentence and reports it as a finding (``check``) or a failure
(``validate``) instead of running the work itself. A child that ends normally (whatever the
work raised) means the work is safe to run here, where its errors are handled as usual.

Where ``os.fork`` does not exist the work is not pre-flighted (None).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

__all__ = ["GUARD_TIMEOUT", "first_in_child", "ort_session_in_child"]

#: Seconds a pre-flight may take before it counts as a hang.
GUARD_TIMEOUT = 120.0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def first_in_child(work: Callable[[], object], what: str, timeout: float = GUARD_TIMEOUT) -> str | None:
    """Run ``work()`` in a forked child; None when it ended normally, else why not
    (``"<what> crashed (SIGSEGV)"``, ``"<what> did not finish in 120 s"``)."""
    if not hasattr(os, "fork"):
        return None
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        try:
            import faulthandler

            faulthandler.disable()  # a crash here is expected and reported by the parent, not dumped
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            work()
        except BaseException:  # noqa: BLE001 - an error is the caller's to report; only a crash matters here
            pass
        os._exit(0)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return f"{what} did not finish in {timeout:g} s"
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    if os.WIFSIGNALED(status):
        return f"{what} crashed ({_signal_name(os.WTERMSIG(status))})"
    return None


def ort_session_in_child(path: str | os.PathLike[str], what: str = "ONNX Runtime") -> str | None:
    """:func:`first_in_child` of creating an ONNX Runtime CPU session on ``path`` (None also
    when ONNX Runtime is not installed)."""

    def work() -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])

    return first_in_child(work, what)
