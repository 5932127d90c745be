"""``bipartite_merge`` is ToMe: token for token ``merge_wavg(bipartite_soft_matching(metric, r, class_token), x, sizes)``.

Checked against ``naive_tome`` (a loop transcription of ToMe's algorithm) on random inputs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from naive_quickmerge import naive_tome
from qm_export.merge import bipartite_merge


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    n=st.integers(2, 17),
    dim=st.integers(1, 6),
    r=st.integers(-1, 10),
    class_token=st.booleans(),
    size_kind=st.sampled_from(["none", "2d", "3d"]),
    own_metric=st.booleans(),
)
def test_matches_naive_tome(seed: int, batch: int, n: int, dim: int, r: int, class_token: bool, size_kind: str, own_metric: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dim, generator=gen)
    metric = torch.randn(batch, n, 4, generator=gen) if own_metric else x
    sizes2 = torch.randint(1, 5, (batch, n), generator=gen).float()
    sizes = {"none": None, "2d": sizes2, "3d": sizes2.unsqueeze(-1)}[size_kind]
    out, out_sizes = bipartite_merge(x, r, metric, sizes=sizes, class_token=class_token)
    r_eff = max(0, min(r, (n - int(class_token)) // 2))
    assert out.shape == (batch, n - r_eff, dim)
    want_size_shape = {"none": (batch, n - r_eff, 1), "2d": (batch, n - r_eff), "3d": (batch, n - r_eff, 1)}[size_kind]
    assert tuple(out_sizes.shape) == want_size_shape
    for b in range(batch):
        row_sizes = None if sizes is None else sizes2[b].tolist()
        want, want_sizes = naive_tome(x[b].double().tolist(), r, metric[b].double().tolist(), row_sizes, class_token)
        torch.testing.assert_close(out[b].double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=1e-5)
        assert out_sizes[b].flatten().tolist() == pytest.approx(want_sizes)


def test_hand_example() -> None:
    # 5 tokens, class token 0. A = {0, 2, 4}, B = {1, 3}. metric angles (deg):
    #   0: 0, 1: 10, 2: 100, 3: 90, 4: 15. A-scores: 0 -> -inf; 2 -> best 3 (cos 10);
    #   4 -> best 1 (cos 5). r = 1: token 4 (highest, .996) merges into 1.
    # Output: unmerged A [0, 2] then B [1+4, 3]; sizes [1, 1, 2, 1].
    import math

    ang = [0, 10, 100, 90, 15]
    metric = torch.tensor([[[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in ang]])
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0]]])
    out, sizes = bipartite_merge(x, 1, metric)
    assert out[0, :, 0].tolist() == [0.0, 2.0, 2.5, 3.0]
    assert sizes[0, :, 0].tolist() == [1.0, 1.0, 2.0, 1.0]
    # with sizes: token 1 stands for 3, token 4 for 1 -> (3*1 + 1*4) / 4 = 1.75
    out, sizes = bipartite_merge(x, 1, metric, sizes=torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0]]))
    assert out[0, :, 0].tolist() == [0.0, 2.0, 1.75, 3.0]
    assert sizes.tolist() == [[1.0, 1.0, 4.0, 1.0]]


def test_r_capped_and_noop() -> None:
    x = torch.randn(2, 9, 3)
    out, _ = bipartite_merge(x, 100, x)
    assert out.shape == (2, 5, 3)  # (9 - 1) // 2 = 4 removed
    out, _ = bipartite_merge(x, 100, x, class_token=False)
    assert out.shape == (2, 5, 3)  # 9 // 2 = 4 removed
    out, sizes = bipartite_merge(x, 0, x)
    assert torch.equal(out, x) and torch.equal(sizes, torch.ones(2, 9, 1))
