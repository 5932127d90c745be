"""Outputs and inputs in Polygraphy's JSON formats, so results travel both ways.

- **Outputs**: Polygraphy's ``RunResults`` (``polygraphy run --save-outputs``/``--load-outputs``):
  runner name -> one ``IterationResult`` per iteration -> output name -> array.
  :func:`save_run_results` writes one with Polygraphy's own ``RunResults.save``;
  :func:`load_run_results` reads one with ``RunResults.load`` (or, for the folder of
  per-iteration files that ``--save-outputs DIR`` writes, ``RunResults.load_streaming``).
- **Inputs**: ``--save-inputs``/``--load-inputs``: a JSON list of feed dicts (name -> array),
  written with ``polygraphy.json.save_json``; a file holding a single feed dict is also read,
  as Polygraphy does.

Arrays are stored as Polygraphy stores them: ``np.save`` bytes in base64, so every numpy
dtype without pickling (float32/16, int64, bool …) round-trips exactly. Arrays that Polygraphy
saved as torch tensors are returned as numpy (bfloat16 widened to float32, exactly).

Polygraphy is imported only inside these functions; it is not a base dependency of qm-export
(``pip install polygraphy``, or the ``trt``/``test`` extras). Polygraphy's logger prints to
stdout, so it is silenced around each call (our commands print JSON on stdout).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qm_export.errors import first_line
from qm_export.export.files import atomic_output, check_output_path

__all__ = [
    "PolygraphyUnavailable",
    "save_run_results",
    "load_run_results",
    "save_inputs",
    "load_inputs",
]

POLYGRAPHY_HINT = "pip install 'polygraphy>=0.49' (also in qm-export's trt extra)"


class PolygraphyUnavailable(ImportError):
    """Polygraphy is not installed; the message says how to install it."""


def _polygraphy() -> tuple[Any, Any, Any]:
    """``(RunResults, IterationResult, polygraphy.json)``, or :class:`PolygraphyUnavailable`."""
    try:
        import polygraphy  # noqa: F401  (fails first when the package is missing or blocked)
        import polygraphy.json as poly_json
        from polygraphy.comparator import IterationResult, RunResults
    except ImportError as err:
        raise PolygraphyUnavailable(
            f"reading and writing Polygraphy's RunResults/input JSON needs polygraphy ({err}): {POLYGRAPHY_HINT}"
        ) from err
    return RunResults, IterationResult, poly_json


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Polygraphy's logger off (it prints to stdout, even for the errors it then raises)."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        yield


def _as_numpy(value: Any, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        arr = value
    elif type(value).__module__.startswith("torch"):
        import torch

        t = value.detach().cpu()
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    else:
        arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"{where} is an object array, which cannot be saved without pickling")
    return arr


def _check_feed_dict(feed: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(feed, Mapping):
        raise TypeError(f"{where} must be a mapping of names to arrays, got {type(feed).__name__}")
    out = {}
    for name, value in feed.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: tensor names must be strings, got {name!r}")
        out[name] = _as_numpy(value, f"{where}[{name!r}]")
    return out


def _not_valid(path: Path, what: str, err: BaseException | str) -> ValueError:
    return ValueError(f"{str(path)!r} is not {what}: {err}".rstrip())


def save_run_results(
    path: str | os.PathLike[str],
    results: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    force: bool = False,
) -> Path:
    """Write ``{runner name: [{output name: array}, ...per iteration]}`` as a Polygraphy
    RunResults JSON file (atomically); returns the path written.

    Raises:
        qm_export.export.files.OutputPathError: the file exists (without ``force``), is a folder, or its folder is
            missing or not writable.
        TypeError: ``results`` is not of that shape.
        PolygraphyUnavailable: polygraphy is not installed.
    """
    RunResults, IterationResult, _ = _polygraphy()
    out = check_output_path(path, force=force)
    if not isinstance(results, Mapping):
        raise TypeError(f"results must map runner names to lists of output dicts, got {type(results).__name__}")
    run = RunResults()
    for runner, iterations in results.items():
        if not isinstance(runner, str):
            raise TypeError(f"runner names must be strings, got {runner!r}")
        if isinstance(iterations, Mapping) or not isinstance(iterations, Sequence):
            raise TypeError(f"results[{runner!r}] must be a list of output dicts (one per iteration)")
        run.append((runner, [
            IterationResult(_check_feed_dict(outs, f"results[{runner!r}][{i}]"), runner_name=runner)
            for i, outs in enumerate(iterations)
        ]))
    with _quiet(), atomic_output(out) as tmp:
        run.save(str(tmp))
    return out


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}#{i}" in taken:
        i += 1
    return f"{name}#{i}"


def load_run_results(path: str | os.PathLike[str]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Read a Polygraphy RunResults JSON file (or a folder of per-iteration RunResults files)
    into ``{runner name: [{output name: array}, ...]}``, runners and outputs in file order.

    A runner name that appears twice (Polygraphy allows it) is kept as ``name#2``, ``name#3``…

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a RunResults JSON (the message names the file).
        PolygraphyUnavailable: polygraphy is not installed.
    """
    RunResults, _, _ = _polygraphy()
    from polygraphy.exception import PolygraphyException

    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"{str(src)!r} does not exist")
    what = "a Polygraphy RunResults JSON (polygraphy run --save-outputs)"
    try:
        with _quiet():
            if src.is_dir():
                run = RunResults.concat(RunResults.load_streaming(str(src)))
                if not run.lst:
                    raise ValueError("the folder holds no RunResults files")
            else:
                run = RunResults.load(str(src))
    except (PolygraphyException, ValueError, KeyError, TypeError, AttributeError) as err:
        # ValueError covers JSON and UTF-8 decoding errors
        first = first_line(err)
        raise _not_valid(src, what, first) from None
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for runner, iterations in run.items():
        key = _unique(str(runner), out)
        try:
            out[key] = [
                {name: _as_numpy(arr, f"{runner}[{i}][{name!r}]") for name, arr in it.items()}
                for i, it in enumerate(iterations)
            ]
        except (AttributeError, TypeError) as err:
            raise _not_valid(src, what, f"runner {runner!r}: {err}") from None
    return out


def save_inputs(path: str | os.PathLike[str], feeds_list: Sequence[Mapping[str, np.ndarray]], force: bool = False) -> Path:
    """Write feed dicts in the format of ``polygraphy run --save-inputs`` / ``--load-inputs``
    (a JSON list, one feed dict per iteration), atomically; returns the path written.

    Raises:
        OutputPathError: as :func:`save_run_results`.
        TypeError: not a list of name -> array mappings.
        PolygraphyUnavailable: polygraphy is not installed.
    """
    _, _, poly_json = _polygraphy()
    out = check_output_path(path, force=force)
    if isinstance(feeds_list, Mapping) or not isinstance(feeds_list, Sequence):
        raise TypeError("feeds_list must be a list of feed dicts (one per iteration); wrap a single dict in a list")
    feeds = [_check_feed_dict(feed, f"feeds_list[{i}]") for i, feed in enumerate(feeds_list)]
    with _quiet(), atomic_output(out) as tmp:
        poly_json.save_json(feeds, str(tmp), description="input data")
    return out


def load_inputs(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    """Read ``--save-inputs`` data: a JSON list of feed dicts, a single feed dict, or a
    folder of per-iteration files, as ``polygraphy run --load-inputs`` reads them.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not Polygraphy input data (the message names the file).
        PolygraphyUnavailable: polygraphy is not installed.
    """
    _polygraphy()
    from polygraphy.comparator.data_loader import StreamingDataLoader
    from polygraphy.exception import PolygraphyException

    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"{str(src)!r} does not exist")
    what = "Polygraphy input data (polygraphy run --save-inputs: a JSON list of feed dicts)"
    try:
        with _quiet():
            items = list(StreamingDataLoader(str(src)))
    except (PolygraphyException, ValueError, KeyError, TypeError) as err:
        first = first_line(err)
        raise _not_valid(src, what, first) from None
    out = []
    for i, feed in enumerate(items):
        if not isinstance(feed, Mapping) or not all(
            isinstance(v, np.ndarray) or type(v).__module__.startswith("torch") for v in feed.values()
        ):
            raise _not_valid(src, what, f"item {i} is not a mapping of names to arrays")
        out.append({str(k): _as_numpy(v, f"item {i}[{k!r}]") for k, v in feed.items()})
    return out
