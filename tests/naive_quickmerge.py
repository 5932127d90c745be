"""A deliberately naive QuickMerge++ (spec §2-§3) and ToMe, written from the texts alone.

Independent of ``qm_export.merge``: plain Python loops over rows, tokens and channels on
Python floats (double precision), transcribing the spec sentence by sentence. Tests compare
the torch reference with it; selections may only differ at the spec's near-ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch

Row = list[float]


def spec_keep(n_mergeable: int, keep: int | None, keep_ratio: float) -> int:
    """Spec §2 "K": ``keep`` wins; else the nearest a/b with b <= 1000, integer rounding."""
    if keep is not None:
        return keep
    frac = Fraction(keep_ratio).limit_denominator(1000)
    a, b = frac.numerator, frac.denominator
    return min(n_mergeable, max(1, (a * n_mergeable + b // 2) // b))


def _norm(v: Row) -> float:
    return math.sqrt(sum(c * c for c in v))


def _normalise(v: Row) -> Row:
    n = max(_norm(v), 1e-6)
    return [c / n for c in v]


def _dot(a: Row, b: Row) -> float:
    return sum(p * q for p, q in zip(a, b))


def _entropy(p: Row) -> float:
    return -sum(pj * math.log(max(pj, 1e-12)) for pj in p)


def _softmax(logits: Row) -> Row:
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    total = sum(e)
    return [v / total for v in e]


def _minmax(values: dict[int, float]) -> tuple[dict[int, float], float]:
    lo, hi = min(values.values()), max(values.values())
    return {i: (v - lo) / max(hi - lo, 1e-6) for i, v in values.items()}, hi - lo


@dataclass
class NaiveRow:
    """One row's result, in the spec's terms (indices in ``x``, i.e. including ``P``)."""

    merged: list[Row]
    assign: list[int]
    sizes: list[float]
    positions: list[int]
    mask: list[bool]
    seeds: list[int]
    saliency: list[float]  # over mergeable tokens, -1 at padding
    masses: list[float]
    entropy_ranges: list[float] = field(default_factory=list)
    similarity: dict[int, dict[int, float]] = field(default_factory=dict)  # token -> seed j -> c


def naive_row(
    x: list[Row],
    *,
    keep: int | None = None,
    keep_ratio: float = 0.5,
    protect: int = 0,
    mode: str = "global",
    high_entropy_salient: bool = False,
    tau: float = 0.5,
    eps: float = 1e-5,
    sim_temp: float = 0.1,
    refine_iters: int = 0,
    prior_weight: float = 0.0,
    attn: Sequence[list[list[Row]]] | None = None,
    scales: Sequence[list[Row]] | None = None,
    sizes: list[float] | None = None,
    positions: list[int] | None = None,
    metric: list[Row] | None = None,
    mask: list[bool] | None = None,
    prior: Callable[[list[Row], list[bool]], list[Row]] | None = None,
) -> NaiveRow:
    """QuickMerge++ of one row ``x`` (``N`` lists of ``D`` floats), spec §3 line by line.

    ``attn`` is a list (scales) of ``H x N x N`` nested lists; ``prior(Z, real)`` works on
    the row's mergeable tokens as lists.
    """
    n, p = len(x), protect
    nm = n - p
    mask = list(mask) if mask is not None else [True] * n
    sizes = list(sizes) if sizes is not None else [1.0] * n
    positions = list(positions) if positions is not None else list(range(n))
    metric = metric if metric is not None else x
    real = [mask[p + i] for i in range(nm)]
    reals = [i for i in range(nm) if real[i]]
    k = spec_keep(nm, keep, keep_ratio)

    # Saliency: entropy per scale, min-max over real mergeable tokens, mean over scales.
    per_scale: list[dict[int, float]] = []
    ranges: list[float] = []
    if attn is not None:
        for a in attn:
            heads = len(a)
            ent = {}
            for i in reals:
                row = [sum(a[h][p + i][j] for h in range(heads)) / heads for j in range(n)]
                ent[i] = _entropy(row)
            norm_ent, rng = _minmax(ent)
            per_scale.append(norm_ent)
            ranges.append(rng)
    else:
        for f in scales if scales is not None else [x]:
            fh = {i: _normalise(f[p + i]) for i in reals}
            ent = {}
            for i in reals:
                probs = _softmax([_dot(fh[i], fh[j]) / sim_temp for j in reals])
                ent[i] = _entropy(probs)
            norm_ent, rng = _minmax(ent)
            per_scale.append(norm_ent)
            ranges.append(rng)
    s = {i: sum(sc[i] for sc in per_scale) / len(per_scale) for i in reals}
    if not high_entropy_salient:
        s = {i: 1.0 - v for i, v in s.items()}
    if prior is not None and prior_weight > 0:
        z = [list(x[p + i]) if real[i] else [0.0] * len(x[0]) for i in range(nm)]
        pred = prior(z, real)
        u = {}
        for idx, i in enumerate(reals):
            if idx > 0:
                prev = reals[idx - 1]
                u[i] = sum((pv - zv) ** 2 for pv, zv in zip(pred[prev], z[i]))
        if reals:
            first = reals[0]
            u[first] = max((u[i] for i in reals[1:]), default=0.0)
        u_hat, _ = _minmax(u)
        s = {i: (1 - prior_weight) * s[i] + prior_weight * u_hat[i] for i in reals}
    sal = [s[i] if real[i] else -1.0 for i in range(nm)]

    # Masses.
    pi = dict(zip(reals, _softmax([s[i] / tau for i in reals])))
    m = [pi[i] * s[i] + eps if real[i] else 0.0 for i in range(nm)]

    # Seeds: stable descending rank, causal last-token rule, ascending by index.
    ranked = sorted(range(nm), key=lambda i: (-sal[i], i))
    chosen = ranked[:k]
    if mode == "causal":
        last = reals[-1]
        if last not in chosen:
            chosen[k - 1] = last
    seeds = sorted(chosen)

    # Assignment.
    g = {i: _normalise(metric[p + i]) for i in reals}

    def eligible(i: int) -> list[int]:
        if real[i]:
            return [j for j, sd in enumerate(seeds) if real[sd] and (mode != "causal" or sd >= i)]
        padded = [j for j, sd in enumerate(seeds) if not real[sd]]
        return padded if padded else list(range(k))

    def best(i: int, centres: list[Row]) -> int:
        gi = g.get(i, [0.0] * len(metric[0]))
        choice, top = None, -math.inf
        for j in eligible(i):
            c = _dot(gi, centres[j])
            if c > top:
                choice, top = j, c
        return choice

    seed_feat = [g.get(sd, [0.0] * len(metric[0])) for sd in seeds]
    assign = [best(i, seed_feat) for i in range(nm)]
    similarity = {i: {j: _dot(g.get(i, [0.0] * len(metric[0])), seed_feat[j]) for j in eligible(i)} for i in range(nm)}
    for j, sd in enumerate(seeds):
        assign[sd] = j
    for _ in range(refine_iters):
        centres = []
        for j in range(k):
            acc = [0.0] * len(metric[0])
            for i in reals:
                if assign[i] == j:
                    acc = [a + m[i] * gv for a, gv in zip(acc, g[i])]
            centres.append(_normalise(acc))
        assign = [best(i, centres) for i in range(nm)]
        for j, sd in enumerate(seeds):
            assign[sd] = j

    # Merge.
    d = len(x[0])
    merged, out_sizes = [], []
    for j in range(k):
        num, den, size = [0.0] * d, 0.0, 0.0
        for i in reals:
            if assign[i] == j:
                w = m[i] * sizes[p + i]
                num = [a + w * xv for a, xv in zip(num, x[p + i])]
                den += w
                size += sizes[p + i]
        merged.append([v / den for v in num] if den > 0 else [0.0] * d)
        out_sizes.append(size)
    return NaiveRow(
        merged=[list(r) for r in x[:p]] + merged,
        assign=list(range(p)) + [p + a for a in assign],
        sizes=list(sizes[:p]) + out_sizes,
        positions=list(positions[:p]) + [positions[p + sd] for sd in seeds],
        mask=list(mask[:p]) + [mask[p + sd] for sd in seeds],
        seeds=[p + sd for sd in seeds],
        saliency=sal,
        masses=m,
        entropy_ranges=ranges,
        similarity=similarity,
    )


def naive_batch(x: torch.Tensor, **kwargs) -> list[NaiveRow]:
    """Run :func:`naive_row` on every row of tensor inputs (converted to float64 lists)."""
    rows = []
    for b in range(x.shape[0]):
        row_kwargs = {}
        for name, value in kwargs.items():
            if name in ("attn", "scales") and isinstance(value, torch.Tensor):
                value = [value]
            if isinstance(value, torch.Tensor):
                row_kwargs[name] = value[b].double().tolist() if value.is_floating_point() else value[b].tolist()
            elif name in ("attn", "scales") and value is not None:
                row_kwargs[name] = [t[b].double().tolist() for t in value]
            else:
                row_kwargs[name] = value
        rows.append(naive_row(x[b].double().tolist(), **row_kwargs))
    return rows


def naive_tome(x: list[Row], r: int, metric: list[Row], sizes: list[float] | None, class_token: bool) -> tuple[list[Row], list[float]]:
    """ToMe's ``merge_wavg(bipartite_soft_matching(metric, r, class_token), x, sizes)`` on one row.

    A = even indices, B = odd; each A token's best B match by cosine similarity; the class
    token (index 0) never matches; the ``r`` A tokens with the highest best score are added to
    their partner; output: the unmerged A tokens (index order with a class token, otherwise
    best-score order, as ToMe's argsort leaves them), then all B tokens; ``sum(x*size)/sum(size)``.
    """
    n = len(x)
    sizes = list(sizes) if sizes is not None else [1.0] * n
    r = min(r, (n - int(class_token)) // 2)
    if r <= 0:
        return [list(v) for v in x], sizes
    a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
    feat = [[c / _norm(v) for c in v] for v in metric]
    best_score, partner = {}, {}
    for ai, a in enumerate(a_idx):
        if class_token and ai == 0:
            best_score[ai], partner[ai] = -math.inf, 0
            continue
        scores = [_dot(feat[a], feat[b]) for b in b_idx]
        top = max(scores)
        best_score[ai], partner[ai] = top, scores.index(top)
    ranked = sorted(best_score, key=lambda ai: -best_score[ai])
    merged_a, kept_a = ranked[:r], ranked[r:]
    if class_token:
        kept_a = sorted(kept_a)
    d = len(x[0])
    b_num = [[x[b][c] * sizes[b] for c in range(d)] for b in b_idx]
    b_size = [sizes[b] for b in b_idx]
    for ai in merged_a:
        a, bj = a_idx[ai], partner[ai]
        b_num[bj] = [v + x[a][c] * sizes[a] for c, v in enumerate(b_num[bj])]
        b_size[bj] += sizes[a]
    out = [list(x[a_idx[ai]]) for ai in kept_a] + [[v / sz for v in num] for num, sz in zip(b_num, b_size)]
    out_sizes = [sizes[a_idx[ai]] for ai in kept_a] + b_size
    return out, out_sizes
