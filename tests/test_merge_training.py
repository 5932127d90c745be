"""Training semantics (spec §4): Gumbel-top-k seeds, Gumbel-softmax masses, gradients."""

from __future__ import annotations

import math
from collections import Counter

import torch

from merge_helpers import attn_uniform, masked_host_attention, random_row_mask
from qm_export.merge import QuickMerge, QuickMergeConfig, quickmerge

# Rows {0}, {0,1}, {0,1,2,3}, {0,1,2,3}: H = [0, log2, log4, log4] -> s = [1, .5, 0, 0].
ROWS4 = [[0], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3]]
S4 = [1.0, 0.5, 0.0, 0.0]


def _probs(tau: float = 0.5) -> list[float]:
    e = [math.exp(v / tau) for v in S4]
    return [v / sum(e) for v in e]


def test_gumbel_top1_samples_softmax() -> None:
    # Gumbel-max: with K = 1 the seed is distributed as softmax(s / tau)
    # = [e^2, e, 1, 1] / (e^2 + e + 2) = [.610, .224, .083, .083].
    draws = 4000
    attn = attn_uniform(ROWS4, 4, batch=draws)
    x = torch.randn(draws, 4, 3)
    gen = torch.Generator().manual_seed(0)
    _, info = quickmerge(x, keep=1, attn=attn, training=True, generator=gen)
    freq = torch.bincount(info["seeds"][:, 0], minlength=4).double() / draws
    want = torch.tensor(_probs(), dtype=torch.float64)
    # 4 standard errors of a binomial frequency
    tol = 4 * torch.sqrt(want * (1 - want) / draws)
    assert ((freq - want).abs() <= tol).all(), (freq, want)


def test_gumbel_top2_samples_without_replacement() -> None:
    # Gumbel-top-k = sequential sampling without replacement (Plackett-Luce):
    # P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j).
    draws = 4000
    attn = attn_uniform(ROWS4, 4, batch=draws)
    gen = torch.Generator().manual_seed(1)
    _, info = quickmerge(torch.randn(draws, 4, 3), keep=2, attn=attn, training=True, generator=gen)
    counts = Counter(tuple(r) for r in info["seeds"].tolist())
    p = _probs()
    for i in range(4):
        for j in range(i + 1, 4):
            want = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
            got = counts[(i, j)] / draws
            assert abs(got - want) <= 4 * math.sqrt(want * (1 - want) / draws) + 1e-3, ((i, j), got, want)


def test_reproducible_with_generator_and_varies_across_seeds() -> None:
    gen0 = torch.Generator().manual_seed(0)
    mask = random_row_mask(gen0, 2, 12, 1)
    x = torch.randn(2, 12, 5, generator=gen0)
    attn = masked_host_attention(gen0, mask, 2, sharp=0.5)

    def run(seed: int) -> tuple[torch.Tensor, dict]:
        return quickmerge(x, keep=4, protect=1, mask=mask, attn=attn, training=True,
                          generator=torch.Generator().manual_seed(seed))

    a, info_a = run(7)
    b, info_b = run(7)
    assert torch.equal(a, b) and torch.equal(info_a["seeds"], info_b["seeds"])
    assert torch.equal(info_a["masses"], info_b["masses"])
    seen = {tuple(run(s)[1]["seeds"].flatten().tolist()) for s in range(12)}
    assert len(seen) > 1, "Gumbel noise must change the selection across generator seeds"
    # eval is deterministic and draws no noise
    _, e1 = quickmerge(x, keep=4, protect=1, mask=mask, attn=attn)
    _, e2 = quickmerge(x, keep=4, protect=1, mask=mask, attn=attn, generator=torch.Generator().manual_seed(3))
    assert torch.equal(e1["seeds"], e2["seeds"]) and torch.equal(e1["masses"], e2["masses"])


def test_training_seeds_and_masses_share_the_noise() -> None:
    # Seeds are the top-K of s/tau + g and masses use pi = softmax(s/tau + g) with the same g,
    # so for tokens with s > 0, log((m - eps) / s) = s/tau + g + const ranks the seeds first.
    gen = torch.Generator().manual_seed(5)
    mask = torch.ones(3, 10, dtype=torch.bool)
    attn = masked_host_attention(gen, mask, 2, sharp=1.0)
    eps = 1e-12
    for seed in range(5):
        _, info = quickmerge(torch.randn(3, 10, 4, generator=gen), keep=4, attn=attn, eps=eps, training=True,
                             generator=torch.Generator().manual_seed(seed))
        s, m = info["saliency"].double(), info["masses"].double()
        for b in range(3):
            seeds = set(info["seeds"][b].tolist())
            key = {i: math.log((m[b, i] - eps) / s[b, i]) for i in range(10) if s[b, i] > 1e-3}
            in_key = [key[i] for i in key if i in seeds]
            out_key = [key[i] for i in key if i not in seeds]
            if in_key and out_key:
                assert min(in_key) >= max(out_key) - 1e-4
            pi = (m[b] - eps).clamp_min(0) / s[b].clamp_min(1e-30)
            assert pi.max() <= 1 + 1e-5


def test_training_causal_last_seed_with_padding() -> None:
    gen = torch.Generator().manual_seed(2)
    for seed in range(20):
        mask = random_row_mask(gen, 3, 9, 0)
        x = torch.randn(3, 9, 3, generator=gen)
        x[~mask] = float("nan")
        _, info = quickmerge(x, keep=2, mask=mask, mode="causal", training=True,
                             generator=torch.Generator().manual_seed(seed))
        for b in range(3):
            last = max(i for i in range(9) if mask[b, i])
            assert last in info["seeds"][b].tolist()
            real_count = int(mask[b].sum())
            assert sum(bool(mask[b, s]) for s in info["seeds"][b].tolist()) == min(2, real_count)
            for i, j in enumerate(info["assign"][b].tolist()):
                if mask[b, i]:
                    assert info["seeds"][b, j] >= i


def test_gradients_reach_tokens_and_masses() -> None:
    # With attn and metric given, x feeds only the merge: d(sum merged)/dx_i = w_i / W_group,
    # summed over channels -> every channel of x_i gets w_i / W (spec §3 "Merge").
    gen = torch.Generator().manual_seed(4)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    attn = masked_host_attention(gen, mask, 2).requires_grad_(True)
    x = torch.randn(2, 8, 3, generator=gen, requires_grad=True)
    metric = torch.randn(2, 8, 4, generator=gen)
    sizes = torch.randint(1, 4, (2, 8), generator=gen).float()
    for training in (True, False):
        x.grad = attn.grad = None
        merged, info = quickmerge(x, keep=3, attn=attn, metric=metric, sizes=sizes, mask=mask,
                                  training=training, generator=torch.Generator().manual_seed(0))
        info["masses"].retain_grad()
        merged.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        w = (info["masses"] * sizes).detach()
        for b in range(2):
            groups = info["assign"][b].tolist()
            for i in range(8):
                if mask[b, i]:
                    total = sum(float(w[b, t]) for t in range(8) if groups[t] == groups[i] and mask[b, t])
                    torch.testing.assert_close(x.grad[b, i], torch.full((3,), float(w[b, i]) / total), rtol=1e-4, atol=1e-7)
                else:
                    assert (x.grad[b, i] == 0).all()
        assert info["masses"].grad is not None and info["masses"].grad.abs().sum() > 0
        assert attn.grad is not None and torch.isfinite(attn.grad).all() and attn.grad.abs().sum() > 0


def test_module_train_eval() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 10, 4, generator=gen)
    layer = QuickMerge(QuickMergeConfig(keep=3, protect=1), sim_temp=0.5)
    assert layer.config.sim_temp == 0.5 and layer.config.keep == 3
    layer.eval()
    y, info = layer(x)
    y_ref, info_ref = quickmerge(x, keep=3, protect=1, sim_temp=0.5)
    assert torch.equal(y, y_ref) and torch.equal(info["seeds"], info_ref["seeds"])
    layer.train()
    seen = {tuple(layer(x, generator=torch.Generator().manual_seed(s))[1]["seeds"].flatten().tolist()) for s in range(12)}
    assert len(seen) > 1
    y1, _ = layer(x, generator=torch.Generator().manual_seed(3))
    y2, _ = layer(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
