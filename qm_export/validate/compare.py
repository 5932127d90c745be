"""Run every backend on every input set and compare it with the reference (the core of
``validate`` and of ``convert``'s parity check).

The reference is the torch source (:class:`~qm_export.backends.torch_runner.TorchRunner`,
whose merge records judge near-ties) or, without a source, the first backend's outputs.
Selection is compared from the ``merge{i}_assign`` / ``merge{i}_seeds`` outputs with the
rules of :mod:`qm_export.export.parity`; values with the precision's tolerance, leaving out
rows whose selection diverged (they are counted). A backend that fails to run is recorded
with its one-line reason, not raised.

Polygraphy's ``Comparator`` compares outputs element-wise (and index outputs with a
tolerance); it cannot judge a selection flip against torch's saliency and similarity gaps,
nor drop the rows a flip made diverge, so the comparison is ours; its ``RunResults`` format is
what ``--save-outputs``/``--load-outputs`` read and write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backends import Runner
from ..export.onnx_export import is_debug_output
from ..export.parity import Flip, LayerSelection, ParityResult, compare_outputs, compare_selection

__all__ = ["Comparison", "ReferenceFailed", "compare_backends", "debug_pairs", "compare_selection_exact", "one_line"]


Feeds = dict[str, np.ndarray]


class ReferenceFailed(RuntimeError):
    """The reference could not run an input set: nothing can be judged (a failure, exit 1)."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line (runtimes' messages span many)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def debug_pairs(outputs: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(assign, seeds)`` of every merge layer, in order, from a run's debug outputs."""
    pairs = []
    i = 0
    while f"merge{i}_assign" in outputs and f"merge{i}_seeds" in outputs:
        pairs.append((outputs[f"merge{i}_assign"], outputs[f"merge{i}_seeds"]))
        i += 1
    return pairs


def _main(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in outputs.items() if not is_debug_output(k)}


def compare_selection_exact(
    ref: Sequence[tuple[np.ndarray, np.ndarray]], other: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[LayerSelection], list[Flip], set[int]]:
    """Selection of two runtimes without a torch reference: any difference is a bug (near-ties
    can only be judged on torch's float32 scores)."""
    layers, flips, diverged = [], [], set()
    for li, ((ra, rs), (oa, os_)) in enumerate(zip(ref, other)):
        ra, rs, oa, os_ = (np.asarray(a).astype(np.int64) for a in (ra, rs, oa, os_))
        summary = LayerSelection(layer=li, rows=ra.shape[0])
        if ra.shape != oa.shape or rs.shape != os_.shape:
            summary.bugs += 1
            flips.append(Flip(li, -1, "shape", "bug", [], None, f"shapes {ra.shape}/{rs.shape} vs {oa.shape}/{os_.shape}"))
            diverged.update(range(ra.shape[0]))
            layers.append(summary)
            continue
        for row in range(ra.shape[0]):
            seeds_differ = not np.array_equal(rs[row], os_[row])
            diff = np.nonzero(ra[row] != oa[row])[0]
            if not seeds_differ and diff.size == 0:
                continue
            if row in diverged:
                summary.consequence_flips += int(seeds_differ) + int(diff.size)
                continue
            diverged.add(row)
            summary.bugs += 1
            if seeds_differ:
                summary.seed_flip_rows += 1
            summary.assign_flips += int(diff.size)
            flips.append(Flip(li, row, "seed" if seeds_differ else "assign", "bug", diff.tolist()[:16], None,
                              "differs from the reference backend (no torch scores to judge a near-tie; pass --source)"))
        layers.append(summary)
    if len(ref) != len(other):
        flips.append(Flip(-1, -1, "shape", "bug", [], None, f"{len(ref)} merge layers vs {len(other)}"))
        layers.append(LayerSelection(layer=-1, rows=0, bugs=1))
    return layers, flips, diverged


@dataclass
class Comparison:
    """Every backend against the reference on every input set.

    ``results``: one :class:`ParityResult` per (backend, input set); ``failures``: backend ->
    why it stopped running; ``outputs``: backend -> its outputs per input set (for
    ``--save-outputs``); ``selection_checked``: backend -> whether its selection was compared.
    """

    reference: str
    results: list[ParityResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, list[Feeds]] = field(default_factory=dict)
    selection_checked: dict[str, bool] = field(default_factory=dict)


def compare_backends(
    reference: Runner | None,
    runners: Sequence[Runner],
    input_sets: Sequence[Feeds],
    *,
    near_tie: float,
    atol: float,
    rtol: float = 0.0,
    progress: Callable[[str], None] | None = None,
    keep_outputs: bool = False,
) -> Comparison:
    """Run ``reference`` (a torch runner with merge records, or None: the first of
    ``runners`` becomes the reference) and every runner on every input set, and compare.

    Raises:
        ReferenceFailed (a RuntimeError): the reference itself fails to run (nothing can be judged).
    """
    runners = list(runners)
    if reference is None:
        if not runners:
            raise ValueError("nothing to compare: no reference and no backend")
        reference, runners = runners[0], runners[1:]
    comp = Comparison(reference=reference.name)
    say = progress or (lambda _msg: None)
    for feeds in input_sets:
        label = {n: list(a.shape) for n, a in feeds.items()}
        shape = "x".join(map(str, next(iter(feeds.values())).shape)) if feeds else "-"
        say(f"{reference.name} on {shape}")
        try:
            ref_out = reference.run(feeds)
        except Exception as err:  # the reference must run: nothing can be judged otherwise
            raise ReferenceFailed(f"the reference ({reference.name}) failed on inputs {shape}: {one_line(err)}") from None
        if keep_outputs:
            comp.outputs.setdefault(reference.name, []).append(_main(ref_out))
        records = list(getattr(reference, "records", []) or [])
        ref_pairs = debug_pairs(ref_out)
        batch = int(next(iter(feeds.values())).shape[0]) if feeds else None
        for runner in runners:
            if runner.name in comp.failures:
                continue
            say(f"{runner.name} on {shape}")
            try:
                out = runner.run(feeds)
            except Exception as err:  # a runtime that rejects the model or the inputs: a finding
                comp.failures[runner.name] = one_line(err)
                continue
            if keep_outputs:
                comp.outputs.setdefault(runner.name, []).append(_main(out))
            pairs = debug_pairs(out)
            layers: list[LayerSelection] = []
            flips: list[Flip] = []
            diverged: set[int] = set()
            checked = bool(pairs) and bool(ref_pairs)
            if checked and records:
                try:
                    layers, flips, diverged = compare_selection(records, pairs, near_tie)
                except ValueError as err:  # a different number of merges: the model is not this source
                    layers = [LayerSelection(layer=-1, rows=batch or 0, bugs=1)]
                    flips = [Flip(-1, -1, "shape", "bug", [], None, one_line(err))]
                    diverged = set(range(batch or 0))
            elif checked:
                layers, flips, diverged = compare_selection_exact(ref_pairs, pairs)
            comp.selection_checked[runner.name] = checked
            values = compare_outputs(_main(ref_out), _main(out), atol=atol, rtol=rtol,
                                     exclude_rows=diverged, batch=batch)
            comp.results.append(ParityResult(runner.name, label, layers, values, flips))
    return comp
