#!/usr/bin/env python3
"""Fetch TensorRT's pure-Python plugin layer (``tensorrt_bindings/plugin/*.py``) of each
TensorRT version qm-export claims, for ``tests/test_trt_plugin_layer.py``.

The layer ships in the ``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings`` wheels on PyPI
(about 1.3 MB each). Each wheel is downloaded with ``pip download --no-deps`` into a cache
outside the repository, and only its ``tensorrt_bindings/plugin/`` folder is extracted, to
``CACHE/<distribution>-<version>/tensorrt_bindings/plugin/`` (the compiled ``tensorrt.so`` is
not needed and not kept). Nothing is committed; a wheel already extracted is not fetched again.

    python scripts/fetch_trt_bindings.py [--cache DIR]   # default $QM_TRT_BINDINGS or
                                                          # ~/.cache/qm-export/trt-bindings

Exit status: 0 when every version is in the cache, 1 when a download failed (offline: the
tests that need it then skip, naming this script).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: (distribution, version): the TensorRT versions whose plugin layer CI tests.
VERSIONS = (
    ("tensorrt-cu12-bindings", "10.9.0.34"),
    ("tensorrt-cu12-bindings", "10.13.3.9"),
    ("tensorrt-cu12-bindings", "10.16.1.11"),
    ("tensorrt-cu13-bindings", "11.4.0.106"),
)
PLUGIN_DIR = "tensorrt_bindings/plugin/"


def default_cache() -> Path:
    """``$QM_TRT_BINDINGS``, else ``~/.cache/qm-export/trt-bindings``."""
    env = os.environ.get("QM_TRT_BINDINGS")
    return Path(env) if env else Path.home() / ".cache" / "qm-export" / "trt-bindings"


def layer_root(cache: Path, distribution: str, version: str) -> Path:
    """Where one version's plugin layer is extracted: it holds ``tensorrt_bindings/plugin/``."""
    return cache / f"{distribution}-{version}"


def fetch(cache: Path, distribution: str, version: str) -> str | None:
    """Download and extract one version; ``None`` when done, else why it failed (one line)."""
    root = layer_root(cache, distribution, version)
    if (root / PLUGIN_DIR / "__init__.py").is_file():
        return None
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
             f"{distribution}=={version}"],
            capture_output=True, text=True, check=False,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or ["no wheel downloaded"]
            return f"{distribution}=={version}: {lines[-1]}"
        staging = Path(tmp) / "layer"
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith(PLUGIN_DIR) and m.endswith(".py")]
            if not members:
                return f"{distribution}=={version}: the wheel has no {PLUGIN_DIR}"
            wheel.extractall(staging, members)
        os.replace(staging, root)  # whole or not at all
    return None


def main(argv: list[str]) -> int:
    cache = Path(argv[argv.index("--cache") + 1]) if "--cache" in argv else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    failed = [why for dist, ver in VERSIONS if (why := fetch(cache, dist, ver))]
    for why in failed:
        print(f"fetch_trt_bindings: {why}", file=sys.stderr)
    print(f"fetch_trt_bindings: {len(VERSIONS) - len(failed)}/{len(VERSIONS)} versions in {cache}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
