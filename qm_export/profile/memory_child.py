"""The memory child: ``python -m qm_export.profile.memory_child MODEL INPUTS.npz SETTINGS WARMUP RUNS``.

Loads ONNX Runtime in a fresh process, creates one session with the profiler's settings
(``SETTINGS``: :class:`~.ort_session.OrtSettings` as JSON), runs it on the inputs and prints
its ``/proc/self/status`` readings as one JSON line (bytes; see :mod:`.memory`). Imports
neither torch nor the rest of qm_export's heavy parts, so *before* is small and stable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status() -> dict[str, int]:
    from .memory import parse_status

    return parse_status(Path("/proc/self/status").read_text())


def _clear_refs() -> bool:
    """Reset this process's ``VmHWM`` to its ``VmRSS`` (Linux >= 4.0); False when refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    import numpy as np

    from .ort_session import OrtProfileRunner, OrtSettings

    model, npz, settings_json, warmup, runs = argv
    with np.load(npz, allow_pickle=False) as data:
        feeds = {k: np.array(data[k]) for k in data.files}
    import onnxruntime  # noqa: F401  (its import is part of *before*, not of the session)

    before = _status()
    runner = OrtProfileRunner(model, OrtSettings.from_json(json.loads(settings_json)))
    session = _status()
    cleared = _clear_refs()  # 1st reset: the runs' mark starts at the loaded session
    reset = _status()
    for _ in range(int(warmup)):
        runner.run(feeds)
    warm = _status()
    cleared = _clear_refs() and cleared  # 2nd reset: the timed runs alone, after warm-up
    reset2 = _status()
    if cleared and (reset["VmHWM"] > reset["VmRSS"] + 2**20 or reset2["VmHWM"] > reset2["VmRSS"] + 2**20):
        cleared = False  # the write was accepted but did not reset the mark (old kernel)
    for _ in range(int(runs)):
        runner.run(feeds)
    end = _status()
    print(json.dumps({
        "rss_before": before["VmRSS"], "rss_session": session["VmRSS"], "hwm_session": session["VmHWM"],
        "rss_reset": reset["VmRSS"], "hwm_warmup": warm["VmHWM"], "rss_reset2": reset2["VmRSS"],
        "hwm_end": end["VmHWM"], "clear_refs": cleared, "warmup": int(warmup), "runs": int(runs),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
