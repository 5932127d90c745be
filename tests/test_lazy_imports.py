"""``import qm_export`` and ``qm-export --help`` need neither triton nor tensorrt (common brief).

Each check runs in a fresh interpreter: once with the two packages made unimportable (as if not
installed: ``sys.modules[name] = None``, with a spy on ``import`` statements), once in the
normal environment (triton may be installed: it must still not be imported).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKER = textwrap.dedent(
    """
    import atexit, builtins, sys
    _BLOCK = ("triton", "tensorrt")
    for _name in _BLOCK:
        sys.modules[_name] = None  # import raises ModuleNotFoundError, find_spec returns None
    _attempts = []
    _real_import = builtins.__import__

    def _spy(name, globals=None, locals=None, fromlist=(), level=0):
        if name.split(".")[0] in _BLOCK:
            _attempts.append((name, (globals or {}).get("__name__", "?")))
        return _real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = _spy

    def _report():
        ours = [a for a in _attempts if a[1].startswith("qm_export")]
        loaded = [n for n in _BLOCK if sys.modules.get(n) is not None]
        sys.stderr.write(f"QM_IMPORT_REPORT attempts={ours} loaded={loaded}\\n")

    atexit.register(_report)
    """
)

MODULES = "import qm_export, qm_export.merge, qm_export.models, qm_export.export, qm_export.cli"


def _run(code: str, blocked: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if blocked:
        (tmp_path / "sitecustomize.py").write_text(BLOCKER)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("blocked", [True, False], ids=["blocked", "installed-env"])
def test_import_and_help_without_triton_or_tensorrt(blocked: bool, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        {MODULES}
        from qm_export.cli import main
        try:
            main(["--help"], prog_name="qm-export")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        bad = [n for n in ("triton", "tensorrt") if sys.modules.get(n) is not None]
        assert not bad, f"imported: {{bad}}"
        """
    )
    result = _run(code, blocked, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: qm-export" in result.stdout
    if blocked:
        assert "QM_IMPORT_REPORT attempts=[] loaded=[]" in result.stderr, result.stderr


def test_console_script_help_blocked(tmp_path: Path) -> None:
    script = shutil.which("qm-export", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the qm-export console script is not installed next to this interpreter (pip install -e .)")
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: qm-export" in result.stdout
    assert "QM_IMPORT_REPORT attempts=[] loaded=[]" in result.stderr, result.stderr


def test_blocker_really_blocks(tmp_path: Path) -> None:
    # The check above could pass vacuously if the blocker did nothing: prove it bites.
    result = _run("import triton", True, tmp_path)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
