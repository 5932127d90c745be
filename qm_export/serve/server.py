"""The ``tritonserver`` binary that the ``nvidia-pytriton`` wheel bundles, started directly.

The wheel (``pip install 'qm-export[serve]'``) ships Triton Inference Server 2.51 with the
Python backend, and one Python-backend stub per Python version. The stub for the running
Python must sit next to ``libtriton_python.so``, so the backend folder is copied into a private
temporary folder with that stub, and the server is started with ``--backend-directory``
pointing there. The server listens on free ports of 127.0.0.1 only (HTTP, gRPC and metrics)
unless it is given another ``host`` (``serve-bench --host``), logs to a file in that folder,
and is stopped by its process id (:meth:`TritonServer.stop`), never by name.

Models run by the Python stub import ``onnxruntime`` and ``numpy`` from this virtual
environment: its ``bin`` folder goes first on the server's ``PATH``, where the embedded
interpreter finds its prefix (what pytriton does too).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LOOPBACK", "ServerUnavailable", "TritonServer", "bundled_server", "check_host", "free_port",
           "unavailable_reason"]

#: Where a launched server listens unless the user names a host.
LOOPBACK = "127.0.0.1"

INSTALL_HINT = "pip install 'qm-export[serve]' (the nvidia-pytriton wheel ships the tritonserver binary)"


class ServerUnavailable(RuntimeError):
    """The bundled server is not installed, or it did not start (the message says why)."""


@dataclass(frozen=True)
class BundledServer:
    """Where the wheel put the server: the binary, its backends, the stubs and shared libraries."""

    binary: Path
    backends: Path
    stub: Path
    libs: Path


def bundled_server() -> BundledServer:
    """Find the bundled server without importing pytriton.

    Raises:
        ServerUnavailable: the wheel is absent, or has no stub for this Python.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable(f"the Triton server is not installed: {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = BundledServer(binary=dist / "bin" / "tritonserver", backends=dist / "backends",
                          stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                          libs=root.parent / "nvidia_pytriton.libs")
    for path in (found.binary, found.backends / "python" / "libtriton_python.so", found.stub):
        if not path.exists():
            raise ServerUnavailable(f"the nvidia-pytriton wheel lacks {path} (Python {version}); {INSTALL_HINT}")
    return found


def unavailable_reason() -> str | None:
    """Why the bundled server cannot be used here (None when it can): for skips and messages."""
    try:
        bundled_server()
    except ServerUnavailable as exc:
        return str(exc)
    return None


def check_host(host: str) -> str:
    """``host`` if it is an IPv4 address the server can listen on.

    Raises:
        ValueError: anything else (names ``--host`` and the value).
    """
    import ipaddress

    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"--host {host!r} is not an IPv4 address (e.g. 127.0.0.1, the default, or 0.0.0.0 for "
                         "every interface)") from None
    return host


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class TritonServer:
    """One ``tritonserver`` process on a model repository; a context manager (stops on exit).

    Args:
        repository: the model repository (``qm-export serve-repo``).
        ready_timeout: seconds to wait for readiness (:meth:`start`).
        exit_on_error: Triton's ``--exit-on-error``; False keeps the server up when a model fails
            to load (the others are served).
        host: the address the HTTP, gRPC and metrics endpoints listen on (127.0.0.1: this
            machine only).
    """

    repository: Path
    ready_timeout: float = 120.0
    exit_on_error: bool = False
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    host: str = LOOPBACK

    @property
    def _client_host(self) -> str:
        """Where this process reaches the server (loopback when it listens on every interface)."""
        return LOOPBACK if self.host == "0.0.0.0" else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "tritonserver.log" if self.workdir else None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log ('' when none)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _command(self, backends: Path, server: BundledServer) -> list[str]:
        return [str(server.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                f"--exit-on-error={'true' if self.exit_on_error else 'false'}", "--strict-readiness=false",
                "--exit-timeout-secs=5", "--allow-cpu-metrics=false", "--allow-gpu-metrics=false", "--log-verbose=0",
                *self.extra_args]

    def start(self) -> "TritonServer":
        """Start the server and wait until it answers ``/v2/health/ready``.

        Raises:
            ServerUnavailable: not installed, exited early, or not ready in ``ready_timeout`` s
                (the process is stopped; the message ends with the log's last line).
        """
        server = bundled_server()
        self.repository = Path(self.repository).resolve()  # the server runs in its own folder
        self.workdir = Path(tempfile.mkdtemp(prefix="qm-tritonserver-"))
        backends = self.workdir / "backends"
        shutil.copytree(server.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(server.stub, backends / "python" / "triton_python_backend_stub")
        self.http_port, self.grpc_port, self.metrics_port = (free_port(self.host) for _ in range(3))
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(server.libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        with open(self.log_path, "wb") as log:  # type: ignore[arg-type]
            self.process = subprocess.Popen(self._command(backends, server), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=self.workdir,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                last = (self.log_tail(1) or "no log").strip()
                raise ServerUnavailable(f"tritonserver exited with code {self.process.returncode} before it was "
                                        f"ready: {last}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise ServerUnavailable(f"tritonserver was not ready after {self.ready_timeout:g} s: "
                                f"{(self.log_tail(1) or 'no log').strip()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process id (SIGKILL if it has not exited after ``timeout`` s),
        then SIGKILL to what is left of its process group: Python stubs orphaned by a server
        that was killed. Removes the temporary folder."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the server's pid
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
