"""Bad input (spec §7): ``ValueError`` for values, ``TypeError`` for types, naming the argument."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from qm_export.merge import QuickMerge, QuickMergeConfig, bipartite_merge, quickmerge, unmerge

B, N, D = 2, 6, 4
NAN = float("nan")


def _x() -> torch.Tensor:
    return torch.randn(B, N, D)


def _attn() -> torch.Tensor:
    return torch.softmax(torch.randn(B, 2, N, N), -1)


def _with(name: str, index: tuple, value: float, base: Callable[[], torch.Tensor]) -> torch.Tensor:
    t = base()
    t[index] = value
    return t


def _mask_with(*pads: tuple[int, int]) -> torch.Tensor:
    m = torch.ones(B, N, dtype=torch.bool)
    for b, i in pads:
        m[b, i] = False
    return m


# (id, keyword options, exception, words the message must contain)
CONFIG_ERRORS = [
    ("keep_ratio 0", {"keep_ratio": 0.0}, ValueError, ["keep_ratio", "0.0"]),
    ("keep_ratio > 1", {"keep_ratio": 1.5}, ValueError, ["keep_ratio", "1.5"]),
    ("keep_ratio < 0", {"keep_ratio": -0.2}, ValueError, ["keep_ratio", "-0.2"]),
    ("keep_ratio nan", {"keep_ratio": NAN}, ValueError, ["keep_ratio", "nan"]),
    ("keep_ratio str", {"keep_ratio": "half"}, TypeError, ["keep_ratio", "half"]),
    ("keep float", {"keep": 2.0}, TypeError, ["keep", "2.0"]),
    ("keep bool", {"keep": True}, TypeError, ["keep", "True"]),
    ("keep 0", {"keep": 0}, ValueError, ["keep", "0"]),
    ("keep negative", {"keep": -3}, ValueError, ["keep", "-3"]),
    ("protect negative", {"protect": -1}, ValueError, ["protect", "-1"]),
    ("protect float", {"protect": 1.0}, TypeError, ["protect", "1.0"]),
    ("mode", {"mode": "bidirectional"}, ValueError, ["mode", "bidirectional"]),
    ("tau 0", {"tau": 0.0}, ValueError, ["tau", "0.0"]),
    ("tau negative", {"tau": -1.0}, ValueError, ["tau", "-1.0"]),
    ("eps 0", {"eps": 0.0}, ValueError, ["eps", "0.0"]),
    ("sim_temp 0", {"sim_temp": 0.0}, ValueError, ["sim_temp", "0.0"]),
    ("sim_temp negative", {"sim_temp": -0.1}, ValueError, ["sim_temp", "-0.1"]),
    ("refine_iters float", {"refine_iters": 1.0}, TypeError, ["refine_iters", "1.0"]),
    ("refine_iters negative", {"refine_iters": -1}, ValueError, ["refine_iters", "-1"]),
    ("prior_weight < 0", {"prior_weight": -0.1}, ValueError, ["prior_weight", "-0.1"]),
    ("prior_weight > 1", {"prior_weight": 1.5}, ValueError, ["prior_weight", "1.5"]),
    ("high_entropy_salient str", {"high_entropy_salient": "yes"}, TypeError, ["high_entropy_salient", "yes"]),
]


@pytest.mark.parametrize(("opts", "exc", "words"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
@pytest.mark.parametrize("entry", ["config", "quickmerge", "module"])
def test_bad_options(entry: str, opts: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as err:
        if entry == "config":
            QuickMergeConfig(**opts)
        elif entry == "quickmerge":
            quickmerge(_x(), **opts)
        else:
            QuickMerge(**opts)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


# Runtime inputs: (id, callable, exception, words)
INPUT_ERRORS = [
    ("keep > N'", lambda: quickmerge(_x(), keep=N + 1), ValueError, ["keep", str(N + 1)]),
    ("keep > N' with protect", lambda: quickmerge(_x(), keep=N, protect=1), ValueError, ["keep", str(N)]),
    ("protect == N", lambda: quickmerge(_x(), protect=N), ValueError, ["protect", str(N)]),
    ("protect > N", lambda: quickmerge(_x(), protect=N + 3), ValueError, ["protect", str(N + 3)]),
    ("N = 0", lambda: quickmerge(torch.randn(B, 0, D)), ValueError, ["x", "(2, 0, 4)"]),
    ("D = 0", lambda: quickmerge(torch.randn(B, N, 0)), ValueError, ["x", "(2, 6, 0)"]),
    ("x rank 2", lambda: quickmerge(torch.randn(N, D)), ValueError, ["x", "(6, 4)"]),
    ("x rank 4", lambda: quickmerge(torch.randn(1, B, N, D)), ValueError, ["x"]),
    ("x integer", lambda: quickmerge(torch.ones(B, N, D, dtype=torch.int64)), TypeError, ["x", "int64"]),
    ("x not a tensor", lambda: quickmerge([[1.0, 2.0]]), TypeError, ["x", "list"]),
    ("x NaN at real token", lambda: quickmerge(_with("x", (1, 2, 0), NAN, _x)), ValueError, ["x", "NaN", "batch 1", "index 2"]),
    ("x Inf at real token", lambda: quickmerge(_with("x", (0, 4, 3), float("inf"), _x)), ValueError, ["x", "Inf"]),
    ("x NaN at protected token", lambda: quickmerge(_with("x", (0, 0, 0), NAN, _x), protect=1), ValueError, ["x"]),
    ("mask shape", lambda: quickmerge(_x(), mask=torch.ones(B, N + 1, dtype=torch.bool)), ValueError, ["mask", "(2, 7)"]),
    ("mask rank", lambda: quickmerge(_x(), mask=torch.ones(B, N, 1, dtype=torch.bool)), ValueError, ["mask"]),
    ("mask int", lambda: quickmerge(_x(), mask=torch.ones(B, N, dtype=torch.int64)), TypeError, ["mask", "int64"]),
    ("mask float", lambda: quickmerge(_x(), mask=torch.ones(B, N)), TypeError, ["mask", "float32"]),
    ("protected padding", lambda: quickmerge(_x(), protect=2, mask=_mask_with((1, 1))), ValueError, ["protect", "padding"]),
    ("row without real mergeable token",
     lambda: quickmerge(_x(), protect=1, mask=_mask_with(*[(1, i) for i in range(1, N)])), ValueError, ["mask", "1"]),
    ("all padding", lambda: quickmerge(_x(), mask=torch.zeros(B, N, dtype=torch.bool)), ValueError, ["mask"]),
    ("sizes shape", lambda: quickmerge(_x(), sizes=torch.ones(B, N - 1)), ValueError, ["sizes", "(2, 5)"]),
    ("sizes int", lambda: quickmerge(_x(), sizes=torch.ones(B, N, dtype=torch.int32)), TypeError, ["sizes", "int32"]),
    ("sizes 0 at real", lambda: quickmerge(_x(), sizes=_with("s", (0, 3), 0.0, lambda: torch.ones(B, N))), ValueError, ["sizes", "0.0"]),
    ("sizes < 0 at real", lambda: quickmerge(_x(), sizes=_with("s", (1, 0), -2.0, lambda: torch.ones(B, N))), ValueError, ["sizes", "-2.0"]),
    ("sizes NaN at real", lambda: quickmerge(_x(), sizes=_with("s", (1, 1), NAN, lambda: torch.ones(B, N))), ValueError, ["sizes", "nan"]),
    ("sizes Inf at real", lambda: quickmerge(_x(), sizes=_with("s", (1, 1), float("inf"), lambda: torch.ones(B, N))), ValueError, ["sizes", "Inf"]),
    ("positions float", lambda: quickmerge(_x(), positions=torch.zeros(B, N)), TypeError, ["positions", "float32"]),
    ("positions bool", lambda: quickmerge(_x(), positions=torch.zeros(B, N, dtype=torch.bool)), TypeError, ["positions", "bool"]),
    ("positions shape", lambda: quickmerge(_x(), positions=torch.zeros(B, N + 2, dtype=torch.int64)), ValueError, ["positions"]),
    ("causal decreasing positions",
     lambda: quickmerge(_x(), mode="causal", positions=torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 5, 3, 6, 7]])),
     ValueError, ["positions", "decrease", "batch 1", "index 3"]),
    ("metric shape", lambda: quickmerge(_x(), metric=torch.randn(B + 1, N, 3)), ValueError, ["metric", "(3, 6, 3)"]),
    ("metric rank", lambda: quickmerge(_x(), metric=torch.randn(B, N)), ValueError, ["metric"]),
    ("metric Dm 0", lambda: quickmerge(_x(), metric=torch.randn(B, N, 0)), ValueError, ["metric"]),
    ("metric int", lambda: quickmerge(_x(), metric=torch.ones(B, N, 3, dtype=torch.int32)), TypeError, ["metric", "int32"]),
    ("metric NaN at real", lambda: quickmerge(_x(), metric=_with("m", (0, 5, 1), NAN, lambda: torch.randn(B, N, 3))), ValueError, ["metric", "NaN"]),
    ("attn shape", lambda: quickmerge(_x(), attn=torch.rand(B, 2, N, N - 1)), ValueError, ["attn", "(2, 2, 6, 5)"]),
    ("attn rank", lambda: quickmerge(_x(), attn=torch.rand(B, N, N)), ValueError, ["attn"]),
    ("attn batch", lambda: quickmerge(_x(), attn=torch.rand(B + 1, 2, N, N)), ValueError, ["attn"]),
    ("attn zero heads", lambda: quickmerge(_x(), attn=torch.rand(B, 0, N, N)), ValueError, ["attn"]),
    ("attn int", lambda: quickmerge(_x(), attn=torch.ones(B, 2, N, N, dtype=torch.int64)), TypeError, ["attn", "int64"]),
    ("attn empty list", lambda: quickmerge(_x(), attn=[]), ValueError, ["attn"]),
    ("attn list item", lambda: quickmerge(_x(), attn=[_attn(), "no"]), TypeError, ["attn[1]"]),
    ("attn NaN in real query row", lambda: quickmerge(_x(), attn=_with("a", (1, 1, 4, 0), NAN, _attn)), ValueError, ["attn", "NaN", "batch 1", "index 4"]),
    ("attn NaN in protected query row", lambda: quickmerge(_x(), protect=1, attn=_with("a", (0, 1, 0, 3), NAN, _attn)),
     ValueError, ["attn[0]", "NaN", "batch 0", "index 0"]),
    ("attn Inf in one head of a second scale",
     lambda: quickmerge(_x(), attn=[_attn(), _with("a", (1, 0, 5, 5), float("inf"), _attn)]), ValueError, ["attn[1]", "batch 1", "index 5"]),
    ("attn second scale shape", lambda: quickmerge(_x(), attn=[_attn(), torch.rand(B, 2, N + 1, N + 1)]), ValueError, ["attn[1]"]),
    ("scales shape", lambda: quickmerge(_x(), scales=[torch.randn(B, N + 1, 3)]), ValueError, ["scales[0]"]),
    ("scales rank", lambda: quickmerge(_x(), scales=[torch.randn(B, N)]), ValueError, ["scales[0]"]),
    ("scales empty", lambda: quickmerge(_x(), scales=[]), ValueError, ["scales"]),
    ("scales int", lambda: quickmerge(_x(), scales=[torch.ones(B, N, 3, dtype=torch.int64)]), TypeError, ["scales[0]", "int64"]),
    ("scales NaN at real", lambda: quickmerge(_x(), scales=[torch.randn(B, N, 3), _with("s", (0, 1, 0), NAN, lambda: torch.randn(B, N, 3))]),
     ValueError, ["scales[1]", "NaN"]),
    ("config type", lambda: quickmerge(_x(), {"keep": 2}), TypeError, ["config", "dict"]),
    ("config type with overrides", lambda: quickmerge(_x(), {"keep": 2}, tau=1.0), TypeError, ["config", "dict"]),
    ("module config type", lambda: QuickMerge({"keep": 2}), TypeError, ["config", "dict"]),
    ("module config type with overrides", lambda: QuickMerge({"keep": 2}, tau=1.0), TypeError, ["config", "dict"]),
    ("unknown option", lambda: quickmerge(_x(), keep_fraction=0.5), TypeError, ["keep_fraction"]),
    ("generator type", lambda: quickmerge(_x(), training=True, generator=3), TypeError, ["generator", "int"]),
    ("unmerge index >= M", lambda: unmerge(torch.randn(1, 3, 2), torch.tensor([[0, 3]])), ValueError, ["assign", "3"]),
    ("unmerge index < 0", lambda: unmerge(torch.randn(1, 3, 2), torch.tensor([[0, -1]])), ValueError, ["assign", "-1"]),
    ("unmerge float assign", lambda: unmerge(torch.randn(1, 3, 2), torch.tensor([[0.0, 1.0]])), TypeError, ["assign"]),
    ("unmerge assign shape", lambda: unmerge(torch.randn(2, 3, 2), torch.tensor([[0, 1]])), ValueError, ["assign"]),
    ("unmerge y rank", lambda: unmerge(torch.randn(3), torch.tensor([[0, 1]])), ValueError, ["y"]),
    ("unmerge y type", lambda: unmerge([[1.0]], torch.tensor([[0]])), TypeError, ["y"]),
    ("tome r float", lambda: bipartite_merge(_x(), 1.5, _x()), TypeError, ["r", "1.5"]),
    ("tome x int", lambda: bipartite_merge(torch.ones(B, N, D, dtype=torch.int64), 1, _x()), TypeError, ["x"]),
    ("tome x rank", lambda: bipartite_merge(torch.randn(N, D), 1, torch.randn(N, D)), ValueError, ["x"]),
    ("tome metric shape", lambda: bipartite_merge(_x(), 1, torch.randn(B, N + 1, 3)), ValueError, ["metric"]),
    ("tome sizes shape", lambda: bipartite_merge(_x(), 1, _x(), sizes=torch.ones(B, N + 1)), ValueError, ["sizes"]),
]


@pytest.mark.parametrize(("call", "exc", "words"), [c[1:] for c in INPUT_ERRORS], ids=[c[0] for c in INPUT_ERRORS])
def test_bad_inputs(call: Callable[[], object], exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as err:
        call()
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_nan_at_padding_is_accepted() -> None:
    # The same values that are rejected at real tokens are fine at padded ones (spec §2).
    mask = _mask_with((0, 2), (1, 5))
    x = _x()
    x[0, 2] = NAN
    x[1, 5] = float("inf")
    sizes = torch.ones(B, N)
    sizes[0, 2] = 0.0
    sizes[1, 5] = NAN
    attn = _attn()
    attn[0, :, 2] = NAN
    positions = torch.tensor([[0, 1, -9, 3, 4, 5], [0, 1, 2, 3, 4, -1]])
    merged, _ = quickmerge(x, mask=mask, sizes=sizes, attn=attn, positions=positions, mode="causal", keep=3)
    assert torch.isfinite(merged).all()


def test_huge_finite_values_are_accepted() -> None:
    # Finite float32 values whose row sums overflow are legal: only NaN/Inf are rejected.
    x = _x()
    x[0, 1] = 3e38
    attn = _attn()
    attn[1, :, 2, :] = 3e38
    merged, _ = quickmerge(x, attn=attn, keep=3)
    assert merged.shape == (B, 3, D)
    attn[1, 0, 2, 5] = float("inf")  # ... but one Inf among them still is
    with pytest.raises(ValueError, match=r"attn\[0\].*batch 1, index 2"):
        quickmerge(x, attn=attn, keep=3)


def test_float64_beyond_float32_range_is_rejected() -> None:
    # Selection runs in float32 (spec §2): 1e300 is Inf there. It must be a clear ValueError,
    # not a silently wrong result or an index error deep in the merge.
    metric = torch.randn(B, N, 3, dtype=torch.float64)
    metric[0, 3, 1] = 1e300
    with pytest.raises(ValueError, match=r"metric.*batch 0, index 3"):
        quickmerge(_x(), metric=metric, keep=3)
    metric[0, 3, 1] = NAN
    with pytest.raises(ValueError, match=r"metric.*batch 0, index 3"):
        quickmerge(_x(), metric=metric, keep=3)
