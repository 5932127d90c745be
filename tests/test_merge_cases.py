"""Hand-worked QuickMerge++ cases (spec §2-§3): every expected number is derived in the comments.

Saliency is driven through host attention built so that each query row is uniform over a
chosen key set: a row uniform over ``k`` keys has entropy ``log k``, so the normalised
entropies and hence the seeds are known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from merge_helpers import attn_uniform, masses_by_hand
from qm_export.merge import QuickMergeConfig, quickmerge, resolve_keep, unmerge

LOG2, LOG3, LOG4 = math.log(2), math.log(3), math.log(4)


# --- K rule (spec §2) ------------------------------------------------------------------------

K_TABLE = [
    # (N', keep, keep_ratio, K, derivation)
    (7, None, 1 / 3, 2, "1/3: (1*7 + 1) // 3 = 2"),
    (3, None, 0.5, 2, "1/2: (3 + 1) // 2 = 2 (1.5 rounds up)"),
    (1, None, 0.5, 1, "1/2: (1 + 1) // 2 = 1"),
    (6, None, 0.25, 2, "1/4: (6 + 2) // 4 = 2"),
    (6, None, 0.75, 5, "3/4: (18 + 2) // 4 = 5"),
    (5, None, 0.7, 4, "7/10: (35 + 5) // 10 = 4"),
    (3, None, 0.999, 3, "999/1000: (2997 + 500) // 1000 = 3"),
    (7, None, 1.0, 7, "1/1: K = N'"),
    (3, None, 0.4999999, 2, "limit_denominator -> 1/2, so 2 (plain rounding of 1.4999997 gives 1)"),
    (1000, None, 0.0015, 1, "nearest a/b with b <= 1000 is 1/667: (1000 + 333) // 667 = 1, not round(1.5) = 2"),
    (10, None, 0.3333, 3, "-> 1/3: (10 + 1) // 3 = 3"),
    (15, None, 0.1, 2, "1/10: (15 + 5) // 10 = 2"),
    (5, None, 0.1, 1, "1/10: (5 + 5) // 10 = 1"),
    (7, None, 0.001, 1, "1/1000: (7 + 500) // 1000 = 0 -> max(1, 0) = 1"),
    (7, None, 1e-9, 1, "-> 0/1: K = max(1, 0) = 1"),
    (196, None, 0.5, 98, "ViT-B/16 without the class token: 196 / 2"),
    (7, 3, 0.1, 3, "keep wins over keep_ratio"),
    (7, 7, 0.5, 7, "keep = N'"),
]


@pytest.mark.parametrize(("n_merge", "keep", "ratio", "expected", "why"), K_TABLE, ids=[r[4] for r in K_TABLE])
def test_k_rule(n_merge: int, keep: int | None, ratio: float, expected: int, why: str) -> None:
    cfg = QuickMergeConfig(keep=keep, keep_ratio=ratio)
    assert resolve_keep(n_merge, cfg) == expected


@pytest.mark.parametrize("protect", [0, 2])
@pytest.mark.parametrize(("n_merge", "ratio", "expected"), [(7, 1 / 3, 2), (3, 0.5, 2), (7, 0.001, 1), (9, 0.7, 6)])
def test_k_rule_through_quickmerge(protect: int, n_merge: int, ratio: float, expected: int) -> None:
    # 0.7 = 7/10 with N' = 9: (63 + 5) // 10 = 6.
    x = torch.randn(2, protect + n_merge, 4)
    merged, info = quickmerge(x, keep_ratio=ratio, protect=protect)
    assert merged.shape == (2, protect + expected, 4)
    assert info["keep"] == expected
    assert info["seeds"].shape == (2, expected)


# --- Saliency and seeds (spec §3 "Saliency", "Seeds") ----------------------------------------

# Six tokens; head-averaged rows uniform over these key sets:
#   H = [log2, 0, log4, 0, log2, log3]; min 0, max log4 = 2 log2
#   s_hat = H / log4 = [0.5, 0, 1, 0, 0.5, log3/log4]
SIX_ROWS = [[0, 1], [1], [0, 1, 2, 3], [3], [2, 4], [0, 2, 5]]
SIX_SHAT = [0.5, 0.0, 1.0, 0.0, 0.5, LOG3 / LOG4]


def test_saliency_low_entropy_default() -> None:
    attn = attn_uniform(SIX_ROWS, 6)
    _, info = quickmerge(torch.randn(1, 6, 3), keep=3, attn=attn)
    s = [1 - v for v in SIX_SHAT]  # [0.5, 1, 0, 1, 0.5, 0.2075]
    torch.testing.assert_close(info["saliency"][0], torch.tensor(s), atol=1e-6, rtol=0)
    # ranked: 1 (1.0), 3 (1.0), then 0 and 4 tie at 0.5 -> the lower index 0 wins.
    assert info["seeds"].tolist() == [[0, 1, 3]]
    torch.testing.assert_close(info["masses"][0], torch.tensor(masses_by_hand(s)), atol=1e-6, rtol=0)
    torch.testing.assert_close(info["entropy_range"], torch.tensor([LOG4]), atol=1e-6, rtol=0)


def test_saliency_high_entropy_salient() -> None:
    attn = attn_uniform(SIX_ROWS, 6)
    _, info = quickmerge(torch.randn(1, 6, 3), keep=3, attn=attn, high_entropy_salient=True)
    torch.testing.assert_close(info["saliency"][0], torch.tensor(SIX_SHAT), atol=1e-6, rtol=0)
    # ranked: 2 (1.0), 5 (0.79), then 0 and 4 tie at 0.5 -> 0.
    assert info["seeds"].tolist() == [[0, 2, 5]]
    _, info2 = quickmerge(torch.randn(1, 6, 3), keep=2, attn=attn, high_entropy_salient=True)
    assert info2["seeds"].tolist() == [[2, 5]]


def test_causal_forces_last_seed() -> None:
    # Low-entropy ranking is 1, 3, 0, 4, 5, 2; K = 3 would pick {1, 3, 0}; causal: the last
    # token 5 replaces the 3rd ranked (0).
    attn = attn_uniform(SIX_ROWS, 6)
    _, info = quickmerge(torch.randn(1, 6, 3), keep=3, attn=attn, mode="causal")
    assert info["seeds"].tolist() == [[1, 3, 5]]
    # With high-entropy saliency token 5 is ranked 2nd, already a seed: nothing changes.
    _, info = quickmerge(torch.randn(1, 6, 3), keep=3, attn=attn, mode="causal", high_entropy_salient=True)
    assert info["seeds"].tolist() == [[0, 2, 5]]


def test_equal_saliency_ties_to_lower_index() -> None:
    # Every row one-hot: all entropies 0, range 0 -> s_hat = 0 / 1e-6 = 0, s = 1 everywhere.
    attn = attn_uniform([[i] for i in range(7)], 7)
    _, info = quickmerge(torch.randn(2, 7, 3), keep=3, attn=attn.expand(2, -1, -1, -1))
    assert info["seeds"].tolist() == [[0, 1, 2]] * 2
    _, info = quickmerge(torch.randn(2, 7, 3), keep=3, attn=attn.expand(2, -1, -1, -1), mode="causal")
    assert info["seeds"].tolist() == [[0, 1, 6]] * 2


def test_multi_scale_mean() -> None:
    # scale 1: H = [0, log2, log3] -> s_hat1 = [0, log2/log3, 1]
    # scale 2: H = [log3, 0, log2] -> s_hat2 = [1, 0, log2/log3]
    # mean = [0.5, 0.3155, 0.8155]; s = 1 - mean = [0.5, 0.6845, 0.1845] -> seed 1.
    # (scale 1 alone would pick 0.)
    a1 = attn_uniform([[0], [0, 1], [0, 1, 2]], 3)
    a2 = attn_uniform([[0, 1, 2], [1], [0, 1]], 3)
    r = LOG2 / LOG3
    _, info = quickmerge(torch.randn(1, 3, 2), keep=1, attn=[a1, a2])
    torch.testing.assert_close(info["saliency"][0], torch.tensor([0.5, 1 - r / 2, 0.5 - r / 2]), atol=1e-6, rtol=0)
    assert info["seeds"].tolist() == [[1]]
    _, info1 = quickmerge(torch.randn(1, 3, 2), keep=1, attn=a1)
    assert info1["seeds"].tolist() == [[0]]
    # The entropy range reported is the smaller of the scales' (log3 both here).
    torch.testing.assert_close(info["entropy_range"], torch.tensor([LOG3]), atol=1e-6, rtol=0)


def test_attn_wins_over_scales() -> None:
    a1 = attn_uniform([[0], [0, 1], [0, 1, 2]], 3)
    x = torch.randn(1, 3, 2)
    _, with_scales = quickmerge(x, keep=1, attn=a1, scales=[torch.randn(1, 3, 5)])
    _, without = quickmerge(x, keep=1, attn=a1)
    torch.testing.assert_close(with_scales["saliency"], without["saliency"], atol=0, rtol=0)


def test_self_similarity_saliency() -> None:
    # Features e1, e1, e2 with sim_temp 0.1: logits 10 * cos.
    # rows 0, 1: softmax([10, 10, 0]) = [a, a, b]; row 2: softmax([0, 0, 10]) = [c, c, d].
    e10 = math.exp(10)
    a, b = e10 / (2 * e10 + 1), 1 / (2 * e10 + 1)
    c, d = 1 / (e10 + 2), e10 / (e10 + 2)
    h01 = -(2 * a * math.log(a) + b * math.log(b))
    h2 = -(2 * c * math.log(c) + d * math.log(d))
    assert h01 > h2
    f = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])  # norms differ: F is normalised
    _, info = quickmerge(f, keep=1)
    torch.testing.assert_close(info["saliency"][0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(info["entropy_range"], torch.tensor([h01 - h2]), atol=1e-5, rtol=0)
    assert info["seeds"].tolist() == [[2]]
    _, info = quickmerge(f, keep=1, high_entropy_salient=True)
    assert info["seeds"].tolist() == [[0]]  # tokens 0 and 1 tie at 1 -> lower index
    # sim_temp 1: logits are plain cosines; the same rows, new closed forms.
    e1 = math.e
    a, b = e1 / (2 * e1 + 1), 1 / (2 * e1 + 1)
    c, d = 1 / (e1 + 2), e1 / (e1 + 2)
    rng = -(2 * a * math.log(a) + b * math.log(b)) + (2 * c * math.log(c) + d * math.log(d))
    _, info = quickmerge(f, keep=1, sim_temp=1.0)
    torch.testing.assert_close(info["entropy_range"], torch.tensor([rng]), atol=1e-6, rtol=0)


def test_scales_drive_self_similarity() -> None:
    # The same features given as a scale (x is unrelated) give the same saliency.
    f = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    _, direct = quickmerge(f, keep=1)
    _, via = quickmerge(torch.randn(1, 3, 4), keep=1, scales=[f])
    torch.testing.assert_close(via["saliency"], direct["saliency"], atol=1e-7, rtol=0)
    assert via["seeds"].tolist() == [[2]]


# --- Assignment (spec §3 "Assignment") ----------------------------------------------------------

# Five tokens. Rows: 1 and 3 one-hot (H 0), 4 uniform over 2 (log2), 0 and 2 over 4 (log4).
# s = [0, 1, 0, 1, 0.5] -> K = 3 seeds {1, 3, 4} in both modes.
FIVE_ROWS = [[0, 1, 2, 3], [1], [0, 1, 2, 3], [3], [3, 4]]
FIVE_METRIC = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def test_assignment_global_and_causal() -> None:
    attn = attn_uniform(FIVE_ROWS, 5)
    x = torch.randn(1, 5, 2)
    _, info = quickmerge(x, keep=3, attn=attn, metric=FIVE_METRIC)
    assert info["seeds"].tolist() == [[1, 3, 4]]
    # token 0 (e3) -> seed 4 (j=2); token 2 (~e1) -> seed 1 (j=0).
    assert info["assign"].tolist() == [[2, 0, 0, 1, 2]]
    _, info = quickmerge(x, keep=3, attn=attn, metric=FIVE_METRIC, mode="causal")
    assert info["seeds"].tolist() == [[1, 3, 4]]
    # causal: token 2 may only join seeds 3 or 4; cos with e2 is 0.0995 > 0 -> seed 3 (j=1).
    assert info["assign"].tolist() == [[2, 0, 1, 1, 2]]


def test_assignment_ties_to_lower_seed() -> None:
    attn = attn_uniform(FIVE_ROWS, 5)
    # token 2 equally close to seeds 1 and 3 (cos 1/sqrt2 both) -> j = 0;
    # token 0 has a zero metric: all similarities 0 -> lowest eligible j = 0 (global),
    # and in causal mode also j = 0 (seed 1 >= 0).
    metric = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    _, info = quickmerge(torch.randn(1, 5, 2), keep=3, attn=attn, metric=metric)
    assert info["assign"].tolist() == [[0, 0, 0, 1, 2]]
    # causal: token 2's eligible seeds are 3 and 4 (cos 0.707 and 0) -> seed 3 (j=1).
    _, info = quickmerge(torch.randn(1, 5, 2), keep=3, attn=attn, metric=metric, mode="causal")
    assert info["assign"].tolist() == [[0, 0, 1, 1, 2]]


def test_seed_joins_own_group_whatever_the_similarity() -> None:
    # Seeds 1 and 3 have identical metrics; each still stays in its own group.
    attn = attn_uniform(FIVE_ROWS, 5)
    metric = torch.ones(1, 5, 3)
    _, info = quickmerge(torch.randn(1, 5, 2), keep=3, attn=attn, metric=metric)
    assert info["assign"].tolist() == [[0, 0, 0, 1, 2]]


# --- Protected tokens, sizes, positions, weights (spec §3 "Merge", "Outputs") ----------------


def test_protected_tokens_sizes_weights_positions() -> None:
    # N = 5, P = 1. Mergeable queries 1..4 over all 5 keys:
    #   H = [0, log4, log2, 0] -> s_hat = [0, 1, .5, 0] -> s = [1, 0, .5, 1] -> K = 2 seeds local {0, 3}.
    rows = [[0, 1, 2, 3, 4], [0], [0, 1, 2, 3], [2, 3], [4]]
    attn = attn_uniform(rows, 5)
    metric = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [0.9, 0.1], [0.1, 1.0], [0.0, 1.0]]])
    x = torch.arange(15, dtype=torch.float32).view(1, 5, 3)
    sizes = torch.tensor([[1.0, 2.0, 3.0, 1.0, 4.0]])
    positions = torch.tensor([[10, 11, 12, 13, 14]])
    merged, info = quickmerge(x, keep=2, protect=1, attn=attn, metric=metric, sizes=sizes, positions=positions)
    assert info["seeds"].tolist() == [[1, 4]]
    assert info["assign"].tolist() == [[0, 1, 1, 2, 2]]
    s = [1.0, 0.0, 0.5, 1.0]
    m = masses_by_hand(s)
    torch.testing.assert_close(info["saliency"][0], torch.tensor(s), atol=1e-6, rtol=0)
    # w = m * sizes: group 1 = x1 (w = 2 m0), x2 (w = 3 m1); group 2 = x3 (1 m2), x4 (4 m3).
    w = [2 * m[0], 3 * m[1], 1 * m[2], 4 * m[3]]
    xs = x[0].double()
    g1 = (w[0] * xs[1] + w[1] * xs[2]) / (w[0] + w[1])
    g2 = (w[2] * xs[3] + w[3] * xs[4]) / (w[2] + w[3])
    expected = torch.stack([xs[0], g1, g2]).float()
    torch.testing.assert_close(merged[0], expected, atol=1e-5, rtol=1e-6)
    assert torch.equal(merged[0, 0], x[0, 0])  # the class token passes through untouched
    assert info["sizes"].tolist() == [[1.0, 5.0, 5.0]]
    assert info["positions"].tolist() == [[10, 11, 14]]
    assert info["mask"].tolist() == [[True, True, True]]
    assert info["assign"].dtype == torch.int64 and info["seeds"].dtype == torch.int64
    # The protected query row of attn is never read.
    attn2 = attn.clone()
    attn2[:, :, 0] = 0.2
    _, info2 = quickmerge(x, keep=2, protect=1, attn=attn2, metric=metric, sizes=sizes, positions=positions)
    assert torch.equal(info2["saliency"], info["saliency"])


# --- Padding (spec §2 "Padding is never read", §3) ------------------------------------------

PAD_MASK = torch.tensor([[True, False, True, False, True, True]])
# Real rows over real keys {0, 2, 4, 5}: H = [0, -, log2, -, log4, 0]
#   -> s = [1, -1, 0.5, -1, 0, 1] (padding -1).
PAD_ROWS = [[0], [0], [0, 2], [0], [0, 2, 4, 5], [5]]
PAD_METRIC = torch.tensor([[[1.0, 0.0], [float("nan")] * 2, [1.0, 0.2], [float("nan")] * 2, [0.1, 1.0], [0.0, 1.0]]])


def _pad_inputs() -> dict[str, torch.Tensor]:
    attn = attn_uniform(PAD_ROWS, 6)
    attn[:, :, 1] = float("nan")  # padded query rows may be anything
    attn[:, :, 3] = 7.0
    x = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    x[0, 1] = float("nan")
    x[0, 3] = float("inf")
    sizes = torch.tensor([[1.0, float("nan"), 2.0, -3.0, 1.0, 3.0]])
    positions = torch.tensor([[0, 99, 2, -5, 4, 5]])
    return {"x": x, "attn": attn, "metric": PAD_METRIC, "sizes": sizes, "positions": positions, "mask": PAD_MASK}


def test_padding_k_below_real_count() -> None:
    inp = _pad_inputs()
    merged, info = quickmerge(**inp, keep=2)
    assert info["saliency"].tolist() == [[1.0, -1.0, 0.5, -1.0, 0.0, 1.0]]
    assert info["masses"][0, 1] == 0 and info["masses"][0, 3] == 0
    assert info["seeds"].tolist() == [[0, 5]]
    # No padded seed: padded tokens 1 and 3 join the lowest seed j = 0. Token 2 (1, .2) -> seed 0;
    # token 4 (.1, 1) -> seed 5.
    assert info["assign"].tolist() == [[0, 0, 0, 0, 1, 1]]
    m = dict(zip([0, 2, 4, 5], masses_by_hand([1.0, 0.5, 0.0, 1.0])))
    x = inp["x"][0].double()
    w0, w2, w4, w5 = 1 * m[0], 2 * m[2], 1 * m[4], 3 * m[5]
    g0 = (w0 * x[0] + w2 * x[2]) / (w0 + w2)
    g1 = (w4 * x[4] + w5 * x[5]) / (w4 + w5)
    torch.testing.assert_close(merged[0], torch.stack([g0, g1]).float(), atol=1e-5, rtol=1e-6)
    assert info["sizes"].tolist() == [[3.0, 4.0]]  # padded sizes (NaN, -3) never counted
    assert info["mask"].tolist() == [[True, True]]
    assert info["positions"].tolist() == [[0, 5]]


def test_padding_k_above_real_count_selects_padded_seeds() -> None:
    inp = _pad_inputs()
    merged, info = quickmerge(**inp, keep=5)
    # 4 real tokens rank first; the 5th seed is the first padded index, 1.
    assert info["seeds"].tolist() == [[0, 1, 2, 4, 5]]
    # Padded token 3 joins the padded seed 1 (j = 1); real seeds are singletons.
    assert info["assign"].tolist() == [[0, 1, 2, 1, 3, 4]]
    assert info["mask"].tolist() == [[True, False, True, True, True]]
    assert info["sizes"].tolist() == [[1.0, 0.0, 2.0, 1.0, 3.0]]
    assert torch.equal(merged[0, 1], torch.zeros(2))  # padding-only group: the zero vector
    torch.testing.assert_close(merged[0, [0, 2, 3, 4]], inp["x"][0, [0, 2, 4, 5]], atol=1e-6, rtol=1e-6)
    assert torch.isfinite(merged).all()


def test_padded_tokens_join_lowest_padded_seed() -> None:
    # Mask [T, F, F, F, T]; K = 4: seeds = reals {0, 4} + padded {1, 2}; padded token 3 joins
    # padded seed 1 (the lowest padded seed, j = 1), never a real seed.
    mask = torch.tensor([[True, False, False, False, True]])
    x = torch.randn(1, 5, 3)
    _, info = quickmerge(x, keep=4, mask=mask)
    assert info["seeds"].tolist() == [[0, 1, 2, 4]]
    assert info["assign"].tolist() == [[0, 1, 2, 1, 3]]
    assert info["mask"].tolist() == [[True, False, False, True]]


# --- Refinement (spec §3 "Refinement") ----------------------------------------------------------


def test_refinement_moves_a_token() -> None:
    # Tokens A, B, t, u, v with 2-D metrics at angles 0, 90, 44, -80, 60 degrees.
    # Rows: A {0}, B {1}: H 0; t, u: H log2; v: H log4 -> s = [1, 1, .5, .5, 0], seeds {A, B}.
    # m = softmax(2 s) s + eps = [.34831, .34831, .06408, .06408, 1e-5].
    # Seeds only: t: cos 44 = .719 (A) > cos 46 = .695 (B) -> A; u -> A; v -> B.
    # Round 1: mu_A = norm(.34831 e(0) + .06408 e(44) + .06408 e(-80)) = e(-2.62 deg),
    #          mu_B = norm(.34831 e(90) + 1e-5 e(60)) = e(89.999 deg)
    #   t: cos 46.62 = .6868 (A) < cos 46.0 = .6947 (B) -> t moves to B.
    # Round 2: mu_A = e(-10.4), mu_B = e(83.3): t stays with B (cos 54.4 < cos 39.3).
    rows = [[0], [1], [0, 1], [2, 3], [0, 1, 2, 3]]
    attn = attn_uniform(rows, 5)
    angles = [0.0, 90.0, 44.0, -80.0, 60.0]
    metric = torch.tensor([[[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles]])
    x = torch.randn(1, 5, 4)
    _, info0 = quickmerge(x, keep=2, attn=attn, metric=metric)
    assert info0["assign"].tolist() == [[0, 1, 0, 0, 1]]
    merged1, info1 = quickmerge(x, keep=2, attn=attn, metric=metric, refine_iters=1)
    assert info1["assign"].tolist() == [[0, 1, 1, 0, 1]]
    _, info2 = quickmerge(x, keep=2, attn=attn, metric=metric, refine_iters=2)
    assert info2["assign"].tolist() == [[0, 1, 1, 0, 1]]
    m = masses_by_hand([1, 1, 0.5, 0.5, 0])
    xs = x[0].double()
    ga = (m[0] * xs[0] + m[3] * xs[3]) / (m[0] + m[3])
    gb = (m[1] * xs[1] + m[2] * xs[2] + m[4] * xs[4]) / (m[1] + m[2] + m[4])
    torch.testing.assert_close(merged1[0], torch.stack([ga, gb]).float(), atol=1e-5, rtol=1e-5)
    assert info1["sizes"].tolist() == [[2.0, 3.0]]


def test_refinement_respects_causal_eligibility() -> None:
    # Same rows, causal mode: the last token v is forced in and replaces the 2nd ranked (B), so
    # seeds = {A(0), v(4)}. B, t and u sit after A, so only v is eligible for them, whatever
    # the similarities or centroids say.
    rows = [[0], [1], [0, 1], [2, 3], [0, 1, 2, 3]]
    attn = attn_uniform(rows, 5)
    angles = [0.0, 90.0, 44.0, -80.0, 60.0]
    metric = torch.tensor([[[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles]])
    for iters in (0, 1, 3):
        _, info = quickmerge(torch.randn(1, 5, 4), keep=2, attn=attn, metric=metric, mode="causal", refine_iters=iters)
        assert info["seeds"].tolist() == [[0, 4]]
        assert info["assign"].tolist() == [[0, 1, 1, 1, 1]]


# --- Unmerge (spec §3 "Unmerge") ---------------------------------------------------------------


def test_unmerge_gathers() -> None:
    y = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    assign = torch.tensor([[0, 2, 2, 1]])
    assert unmerge(y, assign).tolist() == [[[1.0, 2.0], [5.0, 6.0], [5.0, 6.0], [3.0, 4.0]]]
    assert unmerge(y[..., 0], assign).tolist() == [[1.0, 5.0, 5.0, 3.0]]
    assert unmerge(y, assign.int()).tolist() == unmerge(y, assign).tolist()


def test_unmerge_of_merge_gives_group_tokens() -> None:
    attn = attn_uniform(FIVE_ROWS, 5)
    x = torch.randn(1, 5, 2)
    merged, info = quickmerge(x, keep=3, attn=attn, metric=FIVE_METRIC)
    back = unmerge(merged, info["assign"])
    # assign [2, 0, 0, 1, 2]: positions 0 and 4 get group 2, 1 and 2 group 0, 3 group 1.
    for i, j in enumerate([2, 0, 0, 1, 2]):
        assert torch.equal(back[0, i], merged[0, j])


def test_refinement_centroid_floor_on_the_sum() -> None:
    # Causal, tokens [t, S2, M, S1]; rows log4, 0, log2, log2 -> s = [0, 1, .5, .5].
    # Ranked S2, M, S1 (M before S1 on the tie); causal forces S1 (last) in place of M:
    # seeds {S2 = e3, S1 = e1}. M may only join S1 (index 3 >= 2); t joins S2 (cos .5 vs 0).
    # m_M = m_S1 = .0983 and g_M = (-1, -5e-6, 0) in float32, so
    #   sum_{S1 group} m g = (0, -4.9e-7, 0): below the floor -> mu_1 = (0, -.49, 0) (spec §3),
    #   whereas the mean (0, -2.5e-6, 0) normalises to (0, -1, 0).
    # t = (0, -cos 30, sin 30): spec: t.mu_1 = .424 < t.mu_0 ~ .5 -> t stays with S2;
    # a normalised mean gives t.mu_1 = .866 -> t moves to S1.
    th = 5e-6
    metric = torch.tensor([[[0.0, -math.cos(math.radians(30)), 0.5], [0.0, 0.0, 1.0],
                            [-math.cos(th), -math.sin(th), 0.0], [1.0, 0.0, 0.0]]])
    attn = attn_uniform([[0, 1, 2, 3], [1], [0, 1], [2, 3]], 4)
    _, info0 = quickmerge(torch.randn(1, 4, 3), keep=2, mode="causal", attn=attn, metric=metric)
    assert info0["seeds"].tolist() == [[1, 3]] and info0["assign"].tolist() == [[0, 0, 1, 1]]
    _, info1 = quickmerge(torch.randn(1, 4, 3), keep=2, mode="causal", attn=attn, metric=metric, refine_iters=1)
    assert info1["assign"].tolist() == [[0, 0, 1, 1]]
