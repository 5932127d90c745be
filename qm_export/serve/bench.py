"""Load tests against a running Triton server: throughput and latency under concurrency.

:func:`run_bench` drives ``concurrency`` client threads per model, each sending one request at
a time (closed loop, like ``perf_analyzer --concurrency-range``), every call with a timeout.
Models are measured side by side: every concurrency is split into ``rounds`` short windows and
the models take turns window by window (their order rotating), so a drift of the machine's
load falls on all of them alike.

Units: latency in milliseconds (client-side, request sent -> response decoded), throughput in
inferences per second (requests x batch / seconds of load), seconds of wall time.

When the server stops answering (killed, crashed), the window stops at once and
:class:`BenchAborted` carries the results measured so far (``complete: false``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BenchAborted", "BenchOptions", "BenchReport", "Request", "check_models", "direct_runner", "launched",
           "parse_url", "run_bench", "version_file"]

SCHEMA = "qm-export.serve-bench/1"
_URL = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
# Triton data type (metadata's "FP32") -> numpy dtype.
_DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
           "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class BenchAborted(RuntimeError):
    """The server stopped answering mid-run; ``report`` holds what was measured (incomplete)."""

    def __init__(self, message: str, report: "BenchReport") -> None:
        super().__init__(message)
        self.report = report


def parse_url(url: str) -> str:
    """``HOST:PORT`` as given, checked.

    Raises:
        ValueError: not ``HOST:PORT`` with a port in 1..65535 (names ``--url``).
    """
    m = _URL.match(url.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"--url {url!r} is not HOST:PORT (e.g. 127.0.0.1:8001, the gRPC port; 8000 with --protocol http)")
    return url.strip()


@dataclass(frozen=True)
class BenchOptions:
    """What to measure.

    Attributes:
        url: ``HOST:PORT`` of the server's gRPC (or HTTP) endpoint.
        models: model names in the repository (1 or more; the first is compared with the others).
        concurrencies: client threads in flight, e.g. (1, 8, 32).
        duration: seconds of load per model and concurrency (split over ``rounds``).
        rounds: windows per model and concurrency, models alternating window by window.
        batch: rows per request (the batch axis when the model batches).
        seq_len: the length of any other dynamic axis (e.g. tokens).
        protocol: ``"grpc"`` or ``"http"``.
        timeout: seconds any one client call may take.
        warmup: untimed requests per model before the first window.
    """

    url: str
    models: tuple[str, ...]
    concurrencies: tuple[int, ...] = (1, 8, 32)
    duration: float = 10.0
    rounds: int = 3
    batch: int = 1
    seq_len: int = 64
    protocol: str = "grpc"
    timeout: float = 30.0
    warmup: int = 5

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("--model: name at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"--model: a model is named twice ({', '.join(self.models)})")
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise ValueError("--concurrency: positive integers, e.g. 1,8,32")
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"--protocol must be grpc or http, not {self.protocol!r}")
        for flag, value in (("--duration", self.duration), ("--timeout", self.timeout)):
            if not value > 0:
                raise ValueError(f"{flag} must be > 0, not {value}")
        if self.rounds < 1 or self.batch < 1 or self.seq_len < 1:
            raise ValueError("--rounds, --batch and --seq-len must be >= 1")


@dataclass
class Cell:
    """One model at one concurrency: every latency measured (seconds) and the load time."""

    model: str
    concurrency: int
    batch: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    inferences: int = 0  # the server's counts over the windows (its statistics API)
    executions: int = 0

    def to_json(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1e3
        stats = ({k: round(float(np.percentile(lat, q)), 3) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))}
                 | {"mean": round(float(lat.mean()), 3), "min": round(float(lat.min()), 3),
                    "max": round(float(lat.max()), 3)}) if lat.size else None
        rps = len(lat) / self.seconds if self.seconds > 0 else None
        return {"model": self.model, "concurrency": self.concurrency, "batch": self.batch, "requests": int(lat.size),
                "seconds": round(self.seconds, 3), "requests_per_s": None if rps is None else round(rps, 3),
                "throughput": None if rps is None else round(rps * self.batch, 3), "latency_ms": stats,
                "server_batch": round(self.inferences / self.executions, 2) if self.executions else None}


@dataclass
class BenchReport:
    """What :func:`run_bench` measured; :meth:`to_json` is serve-bench's ``--json`` document."""

    options: BenchOptions
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    complete: bool = False
    error: str | None = None
    other_cpu_load: float | None = None
    direct: dict[str, Cell] = field(default_factory=dict)
    direct_threads: int | None = None
    server: dict[str, Any] = field(default_factory=dict)

    def results(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.cells.values()]

    def comparison(self) -> list[dict[str, Any]]:
        """Each further model against the first, per concurrency: throughput and p50 ratios."""
        out = []
        first = self.options.models[0]
        for other in self.options.models[1:]:
            for conc in self.options.concurrencies:
                a, b = self.cells.get((first, conc)), self.cells.get((other, conc))
                if a is None or b is None:
                    continue
                ja, jb = a.to_json(), b.to_json()
                if not ja["throughput"] or not jb["throughput"] or not ja["latency_ms"] or not jb["latency_ms"]:
                    continue
                out.append({"model": first, "versus": other, "concurrency": conc,
                            "throughput_ratio": round(ja["throughput"] / jb["throughput"], 3),
                            "p50_ratio": round(jb["latency_ms"]["p50"] / ja["latency_ms"]["p50"], 3)})
        return out

    def direct_json(self) -> dict[str, Any]:
        """Per model: ONNX Runtime in this process (p50/p95 ms, runs) and ``overhead_ratio`` =
        served p50 / direct p50 at concurrency 1, from windows that alternated with the served ones."""
        out = {}
        for model, cell in self.direct.items():
            d = cell.to_json()
            lat = d["latency_ms"] or {}
            served = self.cells.get((model, 1))
            p50 = ((served.to_json()["latency_ms"] or {}).get("p50")) if served else None
            out[model] = {"p50": lat.get("p50"), "p95": lat.get("p95"), "runs": d["requests"],
                          "threads": self.direct_threads,
                          "overhead_ratio": round(p50 / lat["p50"], 3) if p50 and lat.get("p50") else None}
        return out

    def to_json(self) -> dict[str, Any]:
        o = self.options
        doc: dict[str, Any] = {
            "schema": SCHEMA, "complete": self.complete, "passed": self.complete, "url": o.url,
            "protocol": o.protocol, "models": list(o.models),
            "settings": {"concurrency": list(o.concurrencies), "duration_s": o.duration, "rounds": o.rounds,
                         "batch": o.batch, "seq_len": o.seq_len, "timeout_s": o.timeout, "warmup": o.warmup},
            "other_cpu_load": self.other_cpu_load, "results": self.results(), "comparison": self.comparison()}
        if self.direct:
            doc["direct"] = self.direct_json()
        if self.server:
            doc["server"] = self.server
        if self.error:
            doc["error"] = self.error
        return doc


# ------------------------------------------------------------------------------------------
# Clients


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
    except ImportError as err:
        raise ImportError(f"serve-bench needs tritonclient ({err}); pip install 'qm-export[serve]'") from None
    return mod


def _client(mod: Any, url: str, timeout: float, concurrency: int = 1) -> Any:
    if mod.__name__.endswith("http"):
        return mod.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout,
                                         concurrency=concurrency)
    return mod.InferenceServerClient(url)


def _call(mod: Any, client: Any, method: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """A client call with its timeout (gRPC takes it per call; HTTP has it in the client)."""
    if mod.__name__.endswith("grpc"):
        kwargs["client_timeout"] = timeout
    return getattr(client, method)(*args, **kwargs)


@dataclass(frozen=True)
class Request:
    """One model's request: the client's ``InferInput``s and the arrays they carry (by name)."""

    inputs: list[Any]
    arrays: dict[str, np.ndarray]


def _inputs_for(mod: Any, client: Any, model: str, options: BenchOptions) -> Request:
    """Random inputs shaped from the model's metadata (``--batch``, ``--seq-len`` for other
    dynamic axes; ``*mask*`` inputs all ones, other integers in 0..99)."""
    kw = {"as_json": True} if mod.__name__.endswith("grpc") else {}
    meta = _call(mod, client, "get_model_metadata", model, timeout=options.timeout, **kw)
    config = _call(mod, client, "get_model_config", model, timeout=options.timeout, **kw)
    config = config.get("config", config)
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch and options.batch > max_batch:
        raise ValueError(f"--batch {options.batch} is over model {model!r}'s max_batch_size {max_batch}")
    rng = np.random.default_rng(0)
    inputs, arrays = [], {}
    for spec in meta["inputs"]:
        dims = [int(d) for d in spec["shape"]]
        shape = [options.batch if i == 0 and max_batch else (options.seq_len if d < 0 else d)
                 for i, d in enumerate(dims)]
        dtype = _DTYPES.get(spec["datatype"])
        if dtype is None:
            raise ValueError(f"--model {model!r}: input {spec['name']!r} has type {spec['datatype']}, "
                             "which serve-bench cannot generate")
        if np.issubdtype(dtype, np.floating):
            data = rng.standard_normal(shape).astype(dtype)
        elif "mask" in spec["name"]:
            data = np.ones(shape, dtype)
        else:
            data = rng.integers(0, 100, size=shape).astype(dtype)
        inp = mod.InferInput(spec["name"], shape, spec["datatype"])
        inp.set_data_from_numpy(data)
        inputs.append(inp)
        arrays[spec["name"]] = data
    return Request(inputs, arrays)


def check_models(options: BenchOptions) -> dict[str, Request]:
    """Connect, check every model is ready, and build its inputs.

    Raises:
        ConnectionError: no server answers at ``options.url``.
        ValueError: a model is not in the repository or not ready (names ``--model`` and lists
            the ready ones).
    """
    mod = _client_module(options.protocol)
    client = _client(mod, options.url, options.timeout)
    try:
        live = _call(mod, client, "is_server_live", timeout=options.timeout)
    except Exception as exc:
        raise ConnectionError(f"no Triton server answers at {options.url} ({options.protocol}): "
                              f"{_one_line(exc)}") from None
    if not live:
        raise ConnectionError(f"the Triton server at {options.url} is not live")
    kw = {"as_json": True} if mod.__name__.endswith("grpc") else {}
    index = _call(mod, client, "get_model_repository_index", timeout=options.timeout, **kw)
    index = index.get("models", []) if isinstance(index, dict) else index
    ready = sorted({m["name"] for m in index if m.get("state") == "READY"})
    out = {}
    for model in options.models:
        if model not in ready:
            state = next((m for m in index if m["name"] == model), None)
            why = (f"is {state.get('state', 'not ready')}" + (f": {state['reason']}" if state.get("reason") else "")
                   if state else "is not in the repository")
            raise ValueError(f"--model {model!r} {why} (ready: {', '.join(ready) or 'none'})")
        out[model] = _inputs_for(mod, client, model, options)
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# ------------------------------------------------------------------------------------------
# Load


def _window(mod: Any, options: BenchOptions, model: str, inputs: list[Any], concurrency: int, seconds: float,
            clients: list[Any], stop: threading.Event, alive: Callable[[], bool]) -> tuple[list[float], float, str | None]:
    """``concurrency`` threads in a closed loop for ``seconds``; (latencies s, wall s, first error)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> None:
        client = clients[k]
        out = latencies[k]
        while not stop.is_set() and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                _call(mod, client, "infer", model, inputs, timeout=options.timeout)
            except Exception as exc:
                errors.append(_one_line(exc))
                stop.set()
                return
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.2)
        if not alive():
            errors.append("the server process exited")
            stop.set()
    wall = time.perf_counter() - start
    return [x for per in latencies for x in per], wall, (errors[0] if errors else None)


def run_bench(options: BenchOptions, *, inputs: dict[str, Request] | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              alive: Callable[[], bool] | None = None, server_pid: int | None = None,
              direct: dict[str, Callable[[], Any]] | None = None) -> BenchReport:
    """Measure every model at every concurrency; see the module docstring.

    Args:
        inputs: per model, from :func:`check_models` (called here when None).
        progress: ``progress(description, done, total)`` after every window.
        alive: False once the server is known to be gone (e.g. its process exited).
        server_pid: the launched server's process (group) id: its CPU time is not counted in
            ``other_cpu_load``.
        direct: per model, one direct call of the same model in this process (e.g. an ONNX
            Runtime session's run): at concurrency 1, each served window of the model is followed
            by a window of these calls, one at a time (:meth:`BenchReport.direct_json`).

    Raises:
        BenchAborted: the server stopped answering (the report so far, ``complete`` False).
    """
    mod = _client_module(options.protocol)
    inputs = inputs if inputs is not None else check_models(options)
    alive = alive or (lambda: True)
    report = BenchReport(options)
    direct = direct or {}
    total = (len(options.concurrencies) * len(options.models) + (len(direct) if 1 in options.concurrencies else 0)) \
        * options.rounds
    done = 0
    stop = threading.Event()
    with _other_load(server_pid) as load:
        try:
            warm = _client(mod, options.url, options.timeout)
            for model in options.models:
                for _ in range(options.warmup):
                    _call(mod, warm, "infer", model, inputs[model].inputs, timeout=options.timeout)
            for conc in options.concurrencies:
                clients = [_client(mod, options.url, options.timeout) for _ in range(conc)]
                for r in range(options.rounds):
                    order = list(options.models[r % len(options.models):]) + list(options.models[:r % len(options.models)])
                    for model in order:
                        cell = report.cells.setdefault((model, conc), Cell(model, conc, options.batch))
                        before = _counts(mod, warm, model, options.timeout)
                        lat, wall, error = _window(mod, options, model, inputs[model].inputs, conc,
                                                   options.duration / options.rounds, clients, stop, alive)
                        cell.latencies += lat
                        cell.seconds += wall
                        after = None if error else _counts(mod, warm, model, options.timeout)
                        if before and after:
                            cell.inferences += after[0] - before[0]
                            cell.executions += after[1] - before[1]
                        done += 1
                        if progress:
                            progress(f"{model} @ concurrency {conc}", done, total)
                        if error:
                            raise _Stopped(error)
                        if conc == 1 and model in direct:
                            _direct_window(report.direct.setdefault(model, Cell(model, 1, options.batch)),
                                           direct[model], options.duration / options.rounds)
                            done += 1
                            if progress:
                                progress(f"{model} directly", done, total)
                with contextlib.suppress(Exception):
                    for c in clients:
                        c.close()
            report.complete = True
        except _Stopped as stopped:
            report.error = f"the server at {options.url} stopped answering: {stopped}"
        except Exception as exc:  # warm-up failed
            report.error = f"the server at {options.url} stopped answering: {_one_line(exc)}"
    report.other_cpu_load = load["value"]
    if not report.complete:
        raise BenchAborted(report.error or "incomplete", report)
    return report


class _Stopped(Exception):
    pass


def _counts(mod: Any, client: Any, model: str, timeout: float) -> tuple[int, int] | None:
    """The server's (inference_count, execution_count) of ``model``: rows run and model
    executions, so their ratio is the batch size the dynamic batcher formed. None if unreadable."""
    kw = {"as_json": True} if mod.__name__.endswith("grpc") else {}
    try:
        stats = _call(mod, client, "get_inference_statistics", model, timeout=timeout, **kw)
        entry = stats["model_stats"][0]
        return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))
    except Exception:  # statistics are extra: the load numbers stand without them
        return None


def _group_jiffies(pgid: int | None) -> int:
    """utime + stime of every live process in process group ``pgid`` (the server and its stubs)."""
    if pgid is None:
        return 0
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total


@contextlib.contextmanager
def _other_load(server_pid: int | None) -> Iterator[dict[str, float | None]]:
    """Share of all CPUs used by processes other than this one and the launched server (0..1;
    None off Linux); with a server given by --url, its work counts as other load."""
    from ..profile.timing import _busy_jiffies, _own_jiffies

    out: dict[str, float | None] = {"value": None}
    a, own_a, srv_a = _busy_jiffies(), _own_jiffies(), _group_jiffies(server_pid)
    try:
        yield out
    finally:
        b, own_b, srv_b = _busy_jiffies(), _own_jiffies(), _group_jiffies(server_pid)
        if a is not None and b is not None and own_a is not None and own_b is not None and b[1] > a[1]:
            other = (b[0] - a[0]) - (own_b - own_a) - max(0, srv_b - srv_a)
            out["value"] = round(min(1.0, max(0.0, other / (b[1] - a[1]))), 3)


# ------------------------------------------------------------------------------------------
# Direct ONNX Runtime, for the server's overhead


def _direct_window(cell: Cell, call: Callable[[], Any], seconds: float) -> None:
    """``call()`` one at a time for ``seconds`` (at least 3 calls), latencies into ``cell``."""
    start = time.perf_counter()
    deadline = start + seconds
    n = 0
    while time.perf_counter() < deadline or n < 3:
        t0 = time.perf_counter()
        call()
        cell.latencies.append(time.perf_counter() - t0)
        n += 1
    cell.seconds += time.perf_counter() - start


def direct_runner(model_file: Path, feeds: dict[str, np.ndarray], *, threads: int) -> Callable[[], Any]:
    """One ONNX Runtime call of ``model_file`` on ``feeds`` (the arrays the server gets,
    :attr:`Request.arrays`), CPU, ``threads`` intra-op threads, after 3 warm-up calls."""
    import onnxruntime as ort

    from ..export.external_data import check_external_data

    check_external_data(model_file, what=f"--direct: {str(model_file)!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    return lambda: sess.run(None, feeds)


@contextlib.contextmanager
def launched(repo: Path, ready_timeout: float = 180.0, host: str = "127.0.0.1") -> Iterator[Any]:
    """The bundled server on ``repo`` for the block (:class:`~.server.TritonServer`), listening
    on ``host`` (loopback unless the user asks otherwise). Every ONNX file of the repository
    is checked first: none may name external data outside its version folder.

    Raises:
        ValueError: ``repo`` is not a folder, ``host`` is not an IPv4 address, or a model's
            external data may not be read (:func:`~.repo.check_repository`).
    """
    from .repo import check_repository
    from .server import TritonServer, check_host

    if not Path(repo).is_dir():
        raise ValueError(f"--launch {str(repo)!r} is not a folder (a model repository from qm-export serve-repo)")
    check_repository(Path(repo))
    srv = TritonServer(Path(repo), ready_timeout=ready_timeout, host=check_host(host))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def version_file(repo: Path, model: str) -> Path | None:
    """The ONNX file a Python-backend or onnxruntime model of ``repo`` serves (None if not one)."""
    import json

    folder = Path(repo) / model
    config = (folder / "config.pbtxt").read_text() if (folder / "config.pbtxt").is_file() else ""
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
        if folder.is_dir() else []
    if not versions:
        return None
    m = re.search(r'key: "onnx_file"\s*value: \{ string_value: ("(?:[^"\\]|\\.)*") \}', config)
    name = json.loads(m.group(1)) if m else "model.onnx"
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        return None  # not a plain file name in the version folder: nothing outside it is opened
    path = versions[-1] / name
    return path if path.is_file() else None
