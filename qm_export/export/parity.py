"""Selection and value parity between the torch reference and another runtime (spec §3, "Parity").

Selection must agree exactly except at the spec's near-ties, judged on torch's own float32
numbers (recorded with :func:`qm_export.merge.recording.record_merges`):

- a seed flip is a near-tie when the saliency gap of the swapped tokens is at most ``δ``, or
  the row is degenerate (some scale's entropy range below ``1e-3``);
- in a row whose seeds agree, an assignment flip is a near-tie when the token's similarity to the
  two groups differs by at most ``δ``;
- ``δ`` follows the precision of the layers feeding the merge (:data:`NEAR_TIE_BY_PRECISION`:
  ``1e-4`` fp32, ``5e-3`` fp16, ``4e-2`` bf16): reduced-precision layers make the merge's inputs
  differ between runtimes by a few units of that precision; selection maths stays float32;
- once a row's selection differs in a layer, every later layer of that row sees different
  inputs: its flips are counted as consequences, not judged, and its outputs are left out of
  the value tolerance (and reported).

Any other flip is a bug. Values are compared per output with the tolerance of the precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..merge.recording import MergeRecord

__all__ = [
    "NEAR_TIE",
    "NEAR_TIE_BY_PRECISION",
    "near_tie_for",
    "DEGENERATE_RANGE",
    "Flip",
    "LayerSelection",
    "OutputComparison",
    "ParityResult",
    "not_compared_note",
    "compare_selection",
    "compare_outputs",
]

NEAR_TIE = 1e-4
#: The near-tie gap ``δ`` per precision of the layers feeding the merge (spec §3, "Parity").
NEAR_TIE_BY_PRECISION = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 4e-2}
DEGENERATE_RANGE = 1e-3


def not_compared_note(runs: Sequence[str]) -> str:
    """The sentence under a parity table naming the runs (``"ort at 2x16"``) whose values were
    not compared at all."""
    return (f"values not compared for {', '.join(runs)}: every row had a near-tie flip (or a degenerate "
            "entropy range), so the check passed on selection alone")


def near_tie_for(precision: str | None) -> float:
    """``δ`` of a precision (``"fp32"``, ``"fp16"``, ``"bf16"``; None: fp32).

    Raises:
        ValueError: an unknown precision.
    """
    key = precision or "fp32"
    if key not in NEAR_TIE_BY_PRECISION:
        raise ValueError(f"precision must be one of {list(NEAR_TIE_BY_PRECISION)}, got {precision!r}")
    return NEAR_TIE_BY_PRECISION[key]


@dataclass
class Flip:
    """One selection difference. ``kind`` is ``"seed"`` or ``"assign"``; ``status`` is
    ``"near-tie"``, ``"consequence"`` (the row already differed) or ``"bug"``."""

    layer: int
    row: int
    kind: str
    status: str
    tokens: list[int]
    gap: float | None
    detail: str = ""


@dataclass
class LayerSelection:
    """Selection agreement of one merge layer over a batch."""

    layer: int
    rows: int
    degenerate_rows: int = 0
    seed_flip_rows: int = 0
    seed_near_ties: int = 0
    assign_flips: int = 0
    assign_near_ties: int = 0
    consequence_flips: int = 0
    bugs: int = 0


@dataclass
class OutputComparison:
    """Value agreement of one output over the rows whose selection agreed.

    ``rows_compared``: the batch rows whose values were compared (None for an output that is
    not batch-major, compared whole); ``values_compared`` is False when every row was left out
    (a near-tie flip or a degenerate row in each): then ``ok`` rests on selection alone, and
    ``max_abs``/``max_rel``/``cosine`` are placeholders, not measurements.
    """

    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    atol: float
    rtol: float
    rows_excluded: int
    ok: bool
    detail: str = ""
    rows_compared: int | None = None
    values_compared: bool = True


@dataclass
class ParityResult:
    """Parity of one runtime against torch on one input set."""

    backend: str
    inputs: dict[str, list[int]]
    layers: list[LayerSelection] = field(default_factory=list)
    outputs: list[OutputComparison] = field(default_factory=list)
    flips: list[Flip] = field(default_factory=list)

    @property
    def bugs(self) -> int:
        return sum(layer.bugs for layer in self.layers)

    @property
    def ok(self) -> bool:
        return self.bugs == 0 and all(o.ok for o in self.outputs)

    @property
    def input_label(self) -> str:
        """The input shape as ``BxS`` (the first input's)."""
        return "x".join(map(str, next(iter(self.inputs.values()), [])))

    @property
    def values_compared(self) -> bool:
        """Whether any output's values were compared; False when every row was left out (a
        near-tie flip or a degenerate row in each), so ``ok`` rests on selection alone."""
        return any(o.values_compared for o in self.outputs)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["bugs"] = self.bugs
        data["values_compared"] = self.values_compared
        return data


def _judge_seeds(rec: MergeRecord, row: int, t_seeds: np.ndarray, o_seeds: np.ndarray,
                 near_tie: float) -> tuple[str, float | None, list[int]]:
    p = rec.config.protect
    sal = rec.saliency[row].float().cpu().numpy()
    n_local = sal.shape[0]
    t_set, o_set = set(t_seeds.tolist()), set(o_seeds.tolist())
    if any(not p <= s < p + n_local for s in o_set):
        return "bug", None, sorted(o_set - t_set)
    lost = sorted(t_set - o_set, key=lambda s: -sal[s - p])
    gained = sorted(o_set - t_set, key=lambda s: -sal[s - p])
    tokens = sorted(lost + gained)
    if len(lost) != len(gained) or len(o_seeds) != len(set(o_seeds.tolist())):
        return "bug", None, tokens
    gap = max(abs(float(sal[a - p]) - float(sal[b - p])) for a, b in zip(lost, gained))
    degenerate = float(rec.entropy_range[row]) < DEGENERATE_RANGE
    return ("near-tie" if gap <= near_tie or degenerate else "bug"), gap, tokens


def compare_selection(
    records: Sequence[MergeRecord], others: Sequence[tuple[np.ndarray, np.ndarray]], near_tie: float = NEAR_TIE
) -> tuple[list[LayerSelection], list[Flip], set[int]]:
    """Compare torch's recorded merges with another runtime's ``(assign, seeds)`` per layer.

    Args:
        records: torch's :class:`MergeRecord` per merge layer, in order.
        others: the other runtime's ``assign (B, N)`` and ``seeds (B, K)`` per merge layer.
        near_tie: ``δ``, the largest gap judged a near-tie (:func:`near_tie_for`).

    Returns:
        per-layer summaries, every flip, and the rows whose values may differ: those whose
        selection differed somewhere, and the degenerate ones (their min-max normalisation
        divides float rounding by an entropy range below ``1e-3``, so masses, hence merged
        values and every later layer, differ beyond any fixed tolerance without a flip).
    """
    if len(records) != len(others):
        raise ValueError(f"torch made {len(records)} merges but the other runtime reported {len(others)}")
    layers: list[LayerSelection] = []
    flips: list[Flip] = []
    diverged: set[int] = set()
    for li, (rec, (o_assign, o_seeds)) in enumerate(zip(records, others)):
        t_assign = rec.assign.cpu().numpy()
        t_seeds = rec.seeds.cpu().numpy()
        o_assign = np.asarray(o_assign).astype(np.int64)
        o_seeds = np.asarray(o_seeds).astype(np.int64)
        summary = LayerSelection(layer=li, rows=t_assign.shape[0])
        if o_assign.shape != t_assign.shape or o_seeds.shape != t_seeds.shape:
            summary.bugs += 1
            flips.append(Flip(li, -1, "shape", "bug", [], None,
                              f"torch assign/seeds {t_assign.shape}/{t_seeds.shape}, other {o_assign.shape}/{o_seeds.shape}"))
            layers.append(summary)
            diverged.update(range(t_assign.shape[0]))
            continue
        degenerate = rec.entropy_range.cpu().numpy() < DEGENERATE_RANGE
        summary.degenerate_rows = int(degenerate.sum())
        p = rec.config.protect
        for row in range(t_assign.shape[0]):
            seeds_differ = not np.array_equal(t_seeds[row], o_seeds[row])
            assign_diff = np.nonzero(t_assign[row] != o_assign[row])[0]
            if not seeds_differ and assign_diff.size == 0:
                continue
            if row in diverged:
                summary.consequence_flips += int(seeds_differ) + int(assign_diff.size)
                flips.append(Flip(li, row, "seed" if seeds_differ else "assign", "consequence",
                                  assign_diff.tolist()[:16], None, "row differed in an earlier layer"))
                continue
            diverged.add(row)
            if seeds_differ:
                status, gap, tokens = _judge_seeds(rec, row, t_seeds[row], o_seeds[row], near_tie)
                summary.seed_flip_rows += 1
                summary.seed_near_ties += status == "near-tie"
                summary.bugs += status == "bug"
                summary.consequence_flips += int(assign_diff.size)
                flips.append(Flip(li, row, "seed", status, tokens, gap,
                                  f"entropy range {float(rec.entropy_range[row]):.3g}"))
                continue
            # Refinement centroids weigh tokens by their masses, which are ill-conditioned in a
            # degenerate row: its refined assignment flips are near-ties like its seed flips.
            mass_bound = bool(degenerate[row]) and rec.config.refine_iters > 0
            for tok in assign_diff.tolist():
                summary.assign_flips += 1
                status, gap, detail = _judge_assign(rec, row, tok, int(t_assign[row, tok]), int(o_assign[row, tok]), p,
                                                    near_tie)
                if status == "bug" and mass_bound and "may not join" not in detail and "outside" not in detail:
                    status, detail = "near-tie", detail + " (degenerate row, refined by masses)"
                summary.assign_near_ties += status == "near-tie"
                summary.bugs += status == "bug"
                flips.append(Flip(li, row, "assign", status, [tok], gap, detail))
        diverged.update(int(r) for r in np.nonzero(degenerate)[0])
        layers.append(summary)
    return layers, flips, diverged


def _judge_assign(rec: MergeRecord, row: int, tok: int, jt: int, jo: int, p: int,
                  near_tie: float) -> tuple[str, float | None, str]:
    k = rec.similarity.shape[2]
    i, a, b = tok - p, jt - p, jo - p
    if i < 0:
        return "bug", None, f"protected token {tok} moved to {jo}"
    if not 0 <= b < k:
        return "bug", None, f"token {tok} joined {jo}, outside the merged groups"
    if not bool(rec.eligible[row, i, b]):
        return "bug", None, f"token {tok} joined group {jo}, which it may not join"
    sim = rec.similarity[row, i]
    gap = abs(float(sim[a]) - float(sim[b]))
    status = "near-tie" if gap <= near_tie else "bug"
    return status, gap, f"torch group {jt}, other {jo}"


def compare_outputs(
    torch_outputs: Mapping[str, np.ndarray],
    other_outputs: Mapping[str, np.ndarray],
    *,
    atol: float,
    rtol: float = 0.0,
    exclude_rows: set[int] = frozenset(),  # type: ignore[assignment]
    batch: int | None = None,
) -> list[OutputComparison]:
    """Compare outputs by name; float outputs within ``|d| <= atol + rtol |t|``, others exactly.

    Rows in ``exclude_rows`` (batch-major outputs only) are left out and counted; each result
    says how many rows were compared, and ``values_compared=False`` when none was left.
    """
    results = []
    for name, t in torch_outputs.items():
        t = np.asarray(t)
        if name not in other_outputs:
            results.append(OutputComparison(name, list(t.shape), float("inf"), float("inf"), 0.0, atol, rtol, 0, False, "missing"))
            continue
        o = np.asarray(other_outputs[name])
        if o.shape != t.shape:
            results.append(OutputComparison(name, list(t.shape), float("inf"), float("inf"), 0.0, atol, rtol, 0, False,
                                            f"shape {list(o.shape)} != torch {list(t.shape)}"))
            continue
        excluded = 0
        compared: int | None = None
        if batch is not None and t.ndim > 0 and t.shape[0] == batch:
            keep = np.array([r not in exclude_rows for r in range(batch)], dtype=bool)
            excluded = int((~keep).sum())
            compared = batch - excluded
            t, o = t[keep], o[keep]
        if t.size == 0:
            # nothing left to compare: every row excluded (or an empty output); say so, not "0 diff".
            none_left = compared == 0 and excluded > 0
            results.append(OutputComparison(name, list(np.asarray(torch_outputs[name]).shape), 0.0, 0.0, 1.0, atol, rtol,
                                            excluded, True, "not compared: every row left out" if none_left else "",
                                            compared, not none_left))
            continue
        if not np.issubdtype(t.dtype, np.floating):
            same = bool(np.array_equal(t, o))
            diff = float(np.abs(t.astype(np.float64) - o.astype(np.float64)).max())
            results.append(OutputComparison(name, list(np.asarray(torch_outputs[name]).shape), diff, diff if not same else 0.0,
                                            1.0 if same else 0.0, 0.0, 0.0, excluded, same, "", compared))
            continue
        t64, o64 = t.astype(np.float64), o.astype(np.float64)
        d = np.abs(t64 - o64)
        finite = bool(np.isfinite(o64).all() == np.isfinite(t64).all())
        d = np.where(np.isnan(d) & np.isnan(t64) & np.isnan(o64), 0.0, d)
        max_abs = float(np.nanmax(d)) if d.size else 0.0
        max_rel = float(np.nanmax(d / np.maximum(np.abs(t64), 1e-6)))
        denom = float(np.linalg.norm(t64) * np.linalg.norm(o64))
        cosine = float((t64 * o64).sum() / denom) if denom > 0 else float(np.array_equal(t64, o64))
        ok = finite and bool((d <= atol + rtol * np.abs(t64)).all())
        results.append(OutputComparison(name, list(np.asarray(torch_outputs[name]).shape), max_abs, max_rel, cosine,
                                        atol, rtol, excluded, ok, "", compared))
    return results
