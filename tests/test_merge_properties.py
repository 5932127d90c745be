"""Properties of QuickMerge++ that hold for every input (spec §2-§3), checked with hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merge_helpers import masked_host_attention, random_row_mask
from qm_export.merge import quickmerge, unmerge

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def merge_cases(draw: st.DrawFn, max_n: int = 12, pad: bool = True) -> dict:
    """Random inputs + options: ``{"inputs": {...}, "opts": {...}}`` built from one torch seed."""
    seed = draw(st.integers(0, 2**31 - 1))
    batch = draw(st.integers(1, 3))
    n = draw(st.integers(2, max_n))
    dim = draw(st.integers(1, 5))
    protect = draw(st.integers(0, min(2, n - 1)))
    n_merge = n - protect
    gen = torch.Generator().manual_seed(seed)
    mask = random_row_mask(gen, batch, n, protect) if pad and draw(st.booleans()) else torch.ones(batch, n, dtype=torch.bool)
    inputs: dict = {"x": torch.randn(batch, n, dim, generator=gen), "mask": mask}
    source = draw(st.sampled_from(["self", "attn", "scales"]))
    if source == "attn":
        inputs["attn"] = [masked_host_attention(gen, mask, draw(st.integers(1, 3)))
                          for _ in range(draw(st.integers(1, 2)))]
    elif source == "scales":
        inputs["scales"] = [torch.randn(batch, n, 3, generator=gen) for _ in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        inputs["metric"] = torch.randn(batch, n, 4, generator=gen)
    if draw(st.booleans()):
        inputs["sizes"] = torch.randint(1, 6, (batch, n), generator=gen).float()
    inputs["positions"] = torch.cumsum(torch.randint(1, 3, (batch, n), generator=gen), 1)
    opts = {
        "keep": draw(st.integers(1, n_merge)),
        "protect": protect,
        "mode": draw(st.sampled_from(["global", "causal"])),
        "high_entropy_salient": draw(st.booleans()),
        "refine_iters": draw(st.sampled_from([0, 0, 1, 2])),
    }
    return {"inputs": inputs, "opts": opts}


def _groups(info: dict, b: int, protect: int) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, j in enumerate(info["assign"][b].tolist()[protect:]):
        groups.setdefault(j - protect, []).append(i)
    return groups


@SETTINGS
@given(case=merge_cases())
def test_structure_and_bookkeeping(case: dict) -> None:
    """Shapes and dtypes; seeds ascending, own groups; sizes conserved; eligibility; causal."""
    inputs, opts = case["inputs"], case["opts"]
    merged, info = quickmerge(**inputs, **opts)
    x, mask = inputs["x"], inputs["mask"]
    batch, n, dim = x.shape
    p, k = opts["protect"], opts["keep"]
    sizes = inputs.get("sizes", torch.ones(batch, n))
    assert merged.shape == (batch, p + k, dim) and merged.dtype == x.dtype
    assert info["assign"].shape == (batch, n) and info["assign"].dtype == torch.int64
    assert info["seeds"].shape == (batch, k) and info["seeds"].dtype == torch.int64
    for name in ("sizes", "positions", "mask"):
        assert info[name].shape == (batch, p + k)
    assert torch.isfinite(merged).all()
    for b in range(batch):
        real = mask[b, p:].tolist()
        seeds = [s - p for s in info["seeds"][b].tolist()]
        assert seeds == sorted(set(seeds)), "seeds ascending and distinct (merged tokens keep index order)"
        assert info["assign"][b, :p].tolist() == list(range(p))
        groups = _groups(info, b, p)
        for j, seed in enumerate(seeds):
            assert seed in groups[j], "every seed is in its own group"
        n_real = sum(real)
        # Real tokens rank above padding: the seeds are min(K, #real) real tokens, then padding.
        assert sum(real[s] for s in seeds) == min(k, n_real)
        for j, members in groups.items():
            seed = seeds[j]
            for i in members:
                if real[i]:
                    assert real[seed], "a real token joins a real seed"
                    if opts["mode"] == "causal":
                        assert seed >= i, "causal: no token joins a seed before it"
                elif any(not real[s] for s in seeds):
                    assert not real[seed], "a padded token joins a padded seed when there is one"
        if opts["mode"] == "causal":
            last = max(i for i in range(len(real)) if real[i])
            assert last in seeds, "causal: the last real token is a seed"
        # sizes: each group's size is the sum of its real members'; totals conserved.
        real_sizes = sizes[b].masked_fill(~mask[b], 0.0)
        assert info["sizes"][b].sum().item() == pytest.approx(real_sizes.sum().item())
        for j, members in groups.items():
            want = sum(float(sizes[b, p + i]) for i in members if real[i])
            assert info["sizes"][b, p + j].item() == pytest.approx(want)
            assert info["mask"][b, p + j].item() == real[seeds[j]]
            assert info["positions"][b, p + j].item() == inputs["positions"][b, p + seeds[j]].item()
            if not any(real[i] for i in members):
                assert torch.equal(merged[b, p + j], torch.zeros(dim)), "padding-only group is zero"
            elif opts["mode"] == "causal":
                # merged token sits at the largest position of its real members (spec §3)
                top = max(int(inputs["positions"][b, p + i]) for i in members if real[i])
                assert info["positions"][b, p + j].item() == top
        assert torch.equal(merged[b, :p], x[b, :p])
        # weighted mean: inside the convex hull of the group's real members, channel by channel
        for j, members in groups.items():
            rows = [i for i in members if real[i]]
            if rows:
                vals = x[b, [p + i for i in rows]]
                assert (merged[b, p + j] >= vals.min(0).values - 1e-5).all()
                assert (merged[b, p + j] <= vals.max(0).values + 1e-5).all()


@SETTINGS
@given(case=merge_cases())
def test_keep_all_is_identity(case: dict) -> None:
    inputs, opts = case["inputs"], case["opts"]
    n_merge = inputs["x"].shape[1] - opts["protect"]
    merged, info = quickmerge(**inputs, **{**opts, "keep": n_merge})
    mask = inputs["mask"]
    assert info["assign"].tolist() == [list(range(inputs["x"].shape[1]))] * inputs["x"].shape[0]
    torch.testing.assert_close(merged[mask], inputs["x"][mask], atol=1e-6, rtol=1e-5)
    assert (merged[~mask] == 0).all()
    torch.testing.assert_close(unmerge(merged, info["assign"])[mask], inputs["x"][mask], atol=1e-6, rtol=1e-5)
    sizes = inputs.get("sizes", torch.ones(mask.shape))
    torch.testing.assert_close(info["sizes"], sizes.masked_fill(~mask, 0.0))


def _slice_inputs(inputs: dict, b: int) -> dict:
    out = {}
    for name, value in inputs.items():
        out[name] = [v[b : b + 1] for v in value] if isinstance(value, list) else value[b : b + 1]
    return out


@SETTINGS
@given(case=merge_cases())
def test_rows_independent_of_batch(case: dict) -> None:
    inputs, opts = case["inputs"], case["opts"]
    merged, info = quickmerge(**inputs, **opts)
    for b in range(inputs["x"].shape[0]):
        alone, info_b = quickmerge(**_slice_inputs(inputs, b), **opts)
        for name in ("seeds", "assign", "mask", "positions"):
            assert torch.equal(info_b[name][0], info[name][b]), name
        torch.testing.assert_close(alone[0], merged[b], atol=1e-5, rtol=1e-5)  # through the saliency, below
        torch.testing.assert_close(info_b["sizes"][0], info["sizes"][b])
        # float32 sums in a batched matmul round differently from a one-row one (~1e-7 on the
        # entropies), and min-max normalisation divides that by the row's range: 1.25e-6 seen
        torch.testing.assert_close(info_b["saliency"][0], info["saliency"][b], atol=1e-5, rtol=0)


def _poison(inputs: dict, gen: torch.Generator, how: str) -> dict:
    """Garbage at every padded position of every input (spec §2 "Padding is never read")."""
    mask = inputs["mask"]
    pad = ~mask
    bad = {"nan": float("nan"), "inf": float("inf"), "big": 1e30}[how]
    out = dict(inputs)
    x = inputs["x"].clone()
    x[pad] = bad
    out["x"] = x
    if "metric" in inputs:
        out["metric"] = inputs["metric"].masked_fill(pad.unsqueeze(-1), bad)
    if "scales" in inputs:
        out["scales"] = [s.masked_fill(pad.unsqueeze(-1), bad) for s in inputs["scales"]]
    if "attn" in inputs:
        out["attn"] = [a.masked_fill(pad[:, None, :, None], bad) for a in inputs["attn"]]  # padded query rows
    sizes = inputs.get("sizes", torch.ones(mask.shape))
    out["sizes"] = sizes.masked_fill(pad, bad if how != "big" else -5.0)
    garbage_pos = torch.randint(-1000, 1000, mask.shape, generator=gen)
    out["positions"] = torch.where(mask, inputs["positions"], garbage_pos)
    return out


@SETTINGS
@given(case=merge_cases(), how=st.sampled_from(["nan", "inf", "big"]), seed=st.integers(0, 1000))
def test_padding_is_never_read(case: dict, how: str, seed: int) -> None:
    inputs, opts = case["inputs"], case["opts"]
    mask = inputs["mask"]
    clean = dict(inputs)
    clean["x"] = inputs["x"].masked_fill(~mask.unsqueeze(-1), 0.0)
    merged, info = quickmerge(**clean, **opts)
    poisoned = _poison(clean, torch.Generator().manual_seed(seed), how)
    merged_p, info_p = quickmerge(**poisoned, **opts)
    assert torch.isfinite(merged_p).all()
    assert torch.equal(merged_p, merged)
    for name in ("seeds", "assign", "mask", "sizes", "saliency", "masses"):
        assert torch.equal(info_p[name], info[name]), name
    # positions of padded seeds are copied values that carry no meaning; real ones must agree
    assert torch.equal(info_p["positions"][info["mask"]], info["positions"][info["mask"]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@SETTINGS
@given(case=merge_cases(pad=True))
def test_low_precision_selects_like_fp32(dtype: torch.dtype, case: dict) -> None:
    inputs, opts = case["inputs"], case["opts"]
    low = {}
    for name, value in inputs.items():
        if name in ("x", "metric", "sizes"):
            low[name] = value.to(dtype)
        elif name in ("attn", "scales"):
            low[name] = [v.to(dtype) for v in value]
        else:
            low[name] = value
    up = {n: ([v.float() for v in t] if isinstance(t, list) else (t.float() if t.is_floating_point() else t))
          for n, t in low.items()}
    merged_low, info_low = quickmerge(**low, **opts)
    merged_up, info_up = quickmerge(**up, **opts)
    assert merged_low.dtype == dtype
    for name in ("seeds", "assign", "mask", "positions"):
        assert torch.equal(info_low[name], info_up[name]), name
    assert info_low["saliency"].dtype == torch.float32 and info_low["masses"].dtype == torch.float32
    torch.testing.assert_close(info_low["saliency"], info_up["saliency"], atol=1e-6, rtol=0)
    # merge accumulates in float32 and casts: the fp32 result rounded to the input dtype
    torch.testing.assert_close(merged_low, merged_up.to(dtype), atol=0, rtol=0)


def test_low_precision_attention_is_averaged_in_float32() -> None:
    # 300 heads of bf16 probabilities: summing them in bf16 would lose the small ones.
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(1, 6, dtype=torch.bool)
    attn = masked_host_attention(gen, mask, heads=300).to(torch.bfloat16)
    x = torch.randn(1, 6, 4, generator=gen)
    _, low = quickmerge(x, keep=3, attn=attn)
    _, up = quickmerge(x, keep=3, attn=attn.float())
    torch.testing.assert_close(low["saliency"], up["saliency"], atol=1e-6, rtol=0)
    assert math.isclose(float(low["entropy_range"]), float(up["entropy_range"]), rel_tol=1e-6)
