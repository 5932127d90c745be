"""Triton kernels of the qm ops against the torch references (spec §6).

On CPU the kernels run under the Triton interpreter: this module sets ``TRITON_INTERPRET=1``
before triton is imported (triton fixes the mode at import, for the whole process).
``QM_KERNEL_TEST_DEVICE=cuda`` runs the same tests on a GPU (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # a bare GPU machine may lack hypothesis: the property test is then skipped
    given = None

DEVICE = os.environ.get("QM_KERNEL_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "triton was imported before TRITON_INTERPRET=1 could be set: run this module in its own "
            "process, or with TRITON_INTERPRET=1 in the environment",
            allow_module_level=True,
        )
    # Triton fixes interpreter mode at import. This stays set for the rest of the process; on
    # a CPU-only machine nothing else runs Triton kernels (AOT compiles run in a subprocess).
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the Triton kernels need triton (pip install 'qm-export[kernels]')")

from qm_export.kernels import (  # noqa: E402
    launch_token_group_index,
    launch_token_merge,
    launch_token_unmerge,
    merge_groups,
    token_group_index,
    token_merge,
    token_unmerge,
)
from qm_export.merge.ops_reference import (  # noqa: E402
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, N, K, D): one token, odd sizes, K = N, K = 1, several BLOCK-64 tiles, empty groups.
SHAPES = [(1, 1, 1, 1), (3, 7, 3, 3), (2, 197, 66, 64), (1, 197, 197, 3), (3, 130, 1, 1)]


@pytest.fixture(autouse=True, scope="module")
def _device():
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("QM_KERNEL_TEST_DEVICE=cuda but no CUDA device")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assign(b: int, n: int, k: int, seed: int, *, skip_last: bool = False) -> torch.Tensor:
    """Random groups in ``[0, k)``; the seeds ``0..k-1`` first so no group is empty unless asked."""
    g = _gen(seed)
    high = k - 1 if skip_last and k > 1 else k
    a = torch.randint(0, high, (b, n), generator=g)
    if not skip_last:
        a[:, : min(k, n)] = torch.arange(min(k, n))
    for r in range(b):
        a[r] = a[r, torch.randperm(n, generator=g)]
    return a.to(DEVICE)


def _tol(dtype: torch.dtype) -> dict:
    # One rounding of the float32 result to the output dtype, plus float32 summation-order noise.
    eps = torch.finfo(dtype).eps
    return {"rtol": eps, "atol": 1e-6 if dtype == torch.float32 else eps}


@pytest.mark.parametrize("b,n,k,d", SHAPES)
def test_group_index_equals_reference(b, n, k, d):
    a = _assign(b, n, k, seed=n + k, skip_last=True)
    order, offsets = token_group_index(a, k)
    ref_order, ref_offsets = token_group_index_reference(a, k)
    assert order.dtype == offsets.dtype == torch.int32
    assert torch.equal(order.cpu(), ref_order.cpu())
    assert torch.equal(offsets.cpu(), ref_offsets.cpu())


def _group_index_property(b, n, k, seed):
    k = min(k, n)
    a = torch.randint(0, k, (b, n), generator=_gen(seed)).to(DEVICE)
    order, offsets = token_group_index(a, k)
    ref_order, ref_offsets = token_group_index_reference(a, k)
    assert torch.equal(order.cpu(), ref_order.cpu()) and torch.equal(offsets.cpu(), ref_offsets.cpu())


if given is not None:
    test_group_index_property = settings(max_examples=25, deadline=None)(
        given(b=st.integers(1, 3), n=st.integers(1, 140), k=st.integers(1, 140), seed=st.integers(0, 2**16))(
            _group_index_property
        )
    )


def test_group_index_int32_and_int64_assign_agree():
    a = _assign(2, 9, 4, seed=3)
    o64, f64 = token_group_index(a, 4)
    o32, f32 = token_group_index(a.to(torch.int32), 4)
    assert torch.equal(o64, o32) and torch.equal(f64, f32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,n,k,d", SHAPES)
def test_merge_equals_reference(b, n, k, d, dtype):
    g = _gen(7 * n + d)
    a = _assign(b, n, k, seed=n)
    x = torch.randn(b, n, d, generator=g).to(dtype).to(DEVICE)
    w = (torch.rand(b, n, generator=g) + 0.1).to(DEVICE)
    order, offsets = token_group_index_reference(a, k)
    out = token_merge(x, w, order, offsets)
    ref = token_merge_reference(x, w, order, offsets)
    assert out.dtype == dtype and out.shape == (b, k, d)
    torch.testing.assert_close(out.float().cpu(), ref.float().cpu(), **_tol(dtype))


# The awkward sizes, one dtype each (the interpreter takes seconds per case):
# N = 577 / 1025 with ViT-L / ViT-H widths, D = 1100 spans two BLOCK_D slices (the second
# partly masked) and ROWS = 4 in the unmerge gather.
LARGE = [
    ((1, 577, 193, 768), torch.float16),
    ((1, 1025, 342, 1024), torch.bfloat16),
    ((2, 37, 13, 1100), torch.float32),
]


@pytest.mark.parametrize("shape,dtype", LARGE, ids=lambda v: str(v))
def test_merge_and_unmerge_at_wide_and_long_shapes(shape, dtype):
    b, n, k, d = shape
    g = _gen(n + d)
    a = _assign(b, n, k, seed=d, skip_last=True)
    x = torch.randn(b, n, d, generator=g).to(dtype).to(DEVICE)
    w = (torch.rand(b, n, generator=g) + 0.05).to(DEVICE)
    order, offsets = token_group_index(a, k)
    ref_order, ref_offsets = token_group_index_reference(a, k)
    assert torch.equal(order.cpu(), ref_order.cpu()) and torch.equal(offsets.cpu(), ref_offsets.cpu())
    merged = torch.full((b, k, d), float("nan"), dtype=dtype, device=DEVICE)
    launch_token_merge(x, w, order, offsets, merged)
    torch.testing.assert_close(
        merged.float().cpu(), token_merge_reference(x, w, order, offsets).float().cpu(), **_tol(dtype)
    )
    assert torch.equal(merged[:, k - 1].float().cpu(), torch.zeros(b, d))  # the empty group
    restored = torch.full((b, n, d), float("nan"), dtype=dtype, device=DEVICE)
    launch_token_unmerge(merged, a.to(torch.int32), restored)
    assert torch.equal(restored.cpu(), token_unmerge_reference(merged, a).cpu())


def test_group_index_over_many_tiles_per_row():
    from qm_export.kernels.config import group_index_config

    b, n, k = 1, 4096, 1366
    assert n // group_index_config(b, n, k).constexprs["BLOCK"] >= 32
    a = _assign(b, n, k, seed=4096, skip_last=True)
    order, offsets = token_group_index(a, k)
    ref_order, ref_offsets = token_group_index_reference(a, k)
    assert torch.equal(order.cpu(), ref_order.cpu()) and torch.equal(offsets.cpu(), ref_offsets.cpu())


def test_merge_of_one_group_holding_every_token():
    # K = 1 over N = 2048: one program walks 2048 members, UNROLL at a time.
    b, n, d = 1, 2048, 3
    g = _gen(2048)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    w = torch.rand(b, n, generator=g) + 0.1
    a = torch.zeros(b, n, dtype=torch.int64, device=DEVICE)
    merged = merge_groups(x.float().to(DEVICE), a, w.to(DEVICE), 1)
    exact = (x * w[..., None].double()).sum(1) / w.double().sum(1, keepdim=True)
    torch.testing.assert_close(merged[:, 0].double().cpu(), exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_merge_empty_and_weightless_groups_give_zeros_and_nan_never_leaks(dtype):
    b, n, k, d = 2, 23, 6, 5
    g = _gen(11)
    a = torch.randint(0, 4, (b, n), generator=g)  # groups 4 and 5 empty
    a[:, :3] = 3  # group 3 gets tokens 0..2 ...
    w = torch.rand(b, n, generator=g) + 0.1
    w[a == 3] = 0.0  # ... all of weight 0: a weightless group
    w[:, 5] = 0.0  # and a zero-weight row inside some other group
    x = torch.randn(b, n, d, generator=g)
    x[w == 0] = float("nan")  # rows of weight 0 are never read
    a, w, x = a.to(DEVICE), w.to(DEVICE), x.to(dtype).to(DEVICE)
    order, offsets = token_group_index(a, k)
    out = token_merge(x, w, order, offsets)
    assert not torch.isnan(out).any()
    assert torch.equal(out[:, 3:].float().cpu(), torch.zeros(b, 3, d))
    ref = token_merge_reference(x, w, order, offsets)
    torch.testing.assert_close(out.float().cpu(), ref.float().cpu(), **_tol(dtype))


def test_merge_one_token_groups_return_the_token():
    b, n, d = 2, 9, 7
    x = torch.randn(b, n, d, generator=_gen(5)).to(DEVICE)
    w = (torch.rand(b, n, generator=_gen(6)) * 3 + 0.5).to(DEVICE)
    a = torch.arange(n).flip(0).expand(b, n).contiguous().to(DEVICE)  # K = N, each group one token
    merged = merge_groups(x, a, w, n)
    torch.testing.assert_close(merged, x.flip(1), rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,m,n,d", [(1, 1, 1, 1), (3, 4, 7, 3), (2, 66, 197, 64), (1, 197, 197, 1)])
def test_unmerge_equals_reference_exactly(b, m, n, d, dtype):
    g = _gen(m + n + d)
    y = torch.randn(b, m, d, generator=g).to(dtype).to(DEVICE)
    a = torch.randint(0, m, (b, n), generator=g).to(DEVICE)
    out = token_unmerge(y, a)
    assert out.dtype == dtype
    assert torch.equal(out.cpu(), token_unmerge_reference(y, a).cpu())


def test_every_output_element_is_written():
    b, n, k, d = 2, 70, 9, 33
    g = _gen(21)
    a = _assign(b, n, k, seed=21, skip_last=True)  # group k-1 empty: its row must still be written
    x = torch.randn(b, n, d, generator=g).to(DEVICE)
    w = torch.rand(b, n, generator=g).to(DEVICE)
    a32 = a.to(torch.int32)
    order = torch.full((b, n), -7, dtype=torch.int32, device=DEVICE)
    offsets = torch.full((b, k + 1), -7, dtype=torch.int32, device=DEVICE)
    launch_token_group_index(a32, torch.empty(b, k, device=DEVICE), order, offsets)
    ref_order, ref_offsets = token_group_index_reference(a, k)
    assert torch.equal(order.cpu(), ref_order.cpu()) and torch.equal(offsets.cpu(), ref_offsets.cpu())
    merged = torch.full((b, k, d), float("nan"), device=DEVICE)
    launch_token_merge(x, w, order, offsets, merged)
    torch.testing.assert_close(merged, token_merge_reference(x, w, order, offsets), rtol=1e-6, atol=1e-6)
    un = torch.full((b, n, d), float("nan"), device=DEVICE)
    launch_token_unmerge(merged, a32, un)
    assert torch.equal(un, token_unmerge_reference(merged, a32))


def test_merge_is_bitwise_deterministic():
    b, n, k, d = 2, 150, 12, 48
    g = _gen(9)
    a = _assign(b, n, k, seed=9)
    x = torch.randn(b, n, d, generator=g).to(torch.float16).to(DEVICE)
    w = torch.rand(b, n, generator=g).to(DEVICE)
    first = (*token_group_index(a, k), merge_groups(x, a, w, k))
    second = (*token_group_index(a, k), merge_groups(x, a, w, k))
    for u, v in zip(first, second):
        assert torch.equal(u.contiguous().view(torch.uint8), v.contiguous().view(torch.uint8))


def test_out_of_range_indices_never_fault_and_read_as_zero():
    y = torch.randn(1, 3, 4, device=DEVICE)
    a = torch.tensor([[0, 5, -1, 2]], dtype=torch.int32, device=DEVICE)
    out = torch.full((1, 4, 4), float("nan"), device=DEVICE)
    launch_token_unmerge(y, a, out)
    assert torch.equal(out[0, 1].cpu(), torch.zeros(4)) and torch.equal(out[0, 2].cpu(), torch.zeros(4))
    assert torch.equal(out[0, 0], y[0, 0]) and torch.equal(out[0, 3], y[0, 2])


def _z(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


def _t(rows, dtype=torch.int32):
    return torch.tensor(rows, dtype=dtype, device=DEVICE)


I32 = torch.int32


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: token_group_index(_z(2, 3), 2), TypeError, ["assign", "float32"]),
        (lambda: token_group_index(_z(2, 3, 1, dtype=I32), 2), ValueError, ["assign", "rank 2"]),
        (lambda: token_group_index(_z(2, 3, dtype=I32), 0), ValueError, ["k", ">= 1"]),
        (lambda: token_group_index(_z(2, 3, dtype=I32), 2.0), TypeError, ["k", "float"]),
        (lambda: token_group_index(_z(2, 3, dtype=I32) + 2, 2), ValueError, ["assign", "[0, 2)"]),
        (
            lambda: token_merge(
                _z(1, 3, 2), _z(1, 3, dtype=torch.float16), _z(1, 3, dtype=I32), _z(1, 2, dtype=I32)
            ),
            TypeError,
            ["weight", "float16"],
        ),
        (
            lambda: token_merge(_z(1, 3, 2), _z(1, 4), _z(1, 3, dtype=I32), _z(1, 2, dtype=I32)),
            ValueError,
            ["weight", "(1, 3)"],
        ),
        (
            lambda: token_merge(
                _z(1, 4, 3).transpose(1, 2), _z(1, 3), _z(1, 3, dtype=I32), _z(1, 2, dtype=I32)
            ),
            ValueError,
            ["x", "contiguous"],
        ),
        (
            lambda: token_merge(_z(1, 3, 2), _z(1, 3), _z(1, 3, dtype=I32), _t([[0, 2]])),
            ValueError,
            ["offsets", "N=3"],
        ),
        (lambda: token_unmerge(_z(1, 2, 2, dtype=I32), _z(1, 3, dtype=I32)), TypeError, ["y", "int32"]),
        (lambda: token_unmerge(_z(1, 2, 2), _t([[0, 2]], torch.int64)), ValueError, ["assign", "[0, 2)"]),
        (lambda: token_unmerge(_z(2, 2, 2), _z(1, 3, dtype=I32)), ValueError, ["assign", "batch 2"]),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cpu_tensors_need_the_interpreter():
    code = (
        "import torch, triton\n"
        "from qm_export.kernels import token_unmerge\n"
        "token_unmerge(torch.zeros(1, 2, 2), torch.zeros(1, 3, dtype=torch.int32))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "TRITON_INTERPRET=1" in proc.stderr
