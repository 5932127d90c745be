"""The autoregressive prior and its guidance of saliency (spec §3 "prior guidance", §5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from merge_helpers import attn_uniform
from qm_export.merge import AutoregressivePrior, QuickMerge, QuickMergeConfig, quickmerge, symmetric_next_embedding_loss

# Rows {0}, {0,1}, {0,1,2,3}, {0,1,2,3}: entropy saliency (low-entropy salient) s = [1, .5, 0, 0].
ROWS4 = [[0], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3]]


class RecordingPrior:
    """A prior whose predictions the test controls (spec §5: any ``prior(Z, mask)`` callable)."""

    def __init__(self, predict) -> None:
        self.predict = predict
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls.append((z.clone(), mask.clone()))
        return self.predict(z)


def test_zero_prior_guidance_by_hand() -> None:
    # prior(Z) = 0 -> u_i = ||Z_i||^2 for tokens with a previous real token:
    #   x = [(3,0), (1,0), (0,2), (0,0)] -> u = [?, 1, 4, 0]; the first token gets max(1, 4, 0) = 4.
    #   u_hat = [1, .25, 1, 0].
    x = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])
    attn = attn_uniform(ROWS4, 4)
    prior = RecordingPrior(torch.zeros_like)
    cases = [
        # beta, expected s, seeds for K = 2
        (1.0, [1.0, 0.25, 1.0, 0.0], [0, 2]),
        (0.5, [1.0, 0.375, 0.5, 0.0], [0, 2]),  # .5 [1,.5,0,0] + .5 [1,.25,1,0]
        (0.2, [1.0, 0.45, 0.2, 0.0], [0, 1]),   # .8 [1,.5,0,0] + .2 [1,.25,1,0]
    ]
    for beta, s, seeds in cases:
        _, info = quickmerge(x, keep=2, attn=attn, prior=prior, prior_weight=beta)
        torch.testing.assert_close(info["saliency"][0], torch.tensor(s), atol=1e-6, rtol=0)
        assert info["seeds"].tolist() == [seeds]
    _, info = quickmerge(x, keep=1, attn=attn, prior=prior, prior_weight=1.0)
    assert info["seeds"].tolist() == [[0]]  # tokens 0 and 2 tie at 1 -> lower index
    # prior_weight 0 (the default) ignores an attached prior
    n_calls = len(prior.calls)
    _, info = quickmerge(x, keep=2, attn=attn, prior=prior)
    torch.testing.assert_close(info["saliency"][0], torch.tensor([1.0, 0.5, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert len(prior.calls) == n_calls


def test_identity_prior_skips_padding_and_reads_zeroed_tokens() -> None:
    # prior(Z) = Z -> u_i = ||Z_{i'} - Z_i||^2 with i' the previous REAL token (padding skipped):
    #   protect 1; mergeable x = [(0,0), (1,0), pad, (1,2), (4,2)]
    #   u = [max, 1, -, ||(1,0)-(1,2)||^2 = 4, ||(1,2)-(4,2)||^2 = 9]; first gets 9.
    #   u_hat = (u - 1) / 8 = [1, 0, -, .375, 1].
    nan = float("nan")
    x = torch.tensor([[[5.0, 5.0], [0.0, 0.0], [1.0, 0.0], [nan, nan], [1.0, 2.0], [4.0, 2.0]]])
    mask = torch.tensor([[True, True, True, False, True, True]])
    prior = RecordingPrior(lambda z: z)
    _, info = quickmerge(x, keep=2, protect=1, mask=mask, prior=prior, prior_weight=1.0)
    torch.testing.assert_close(info["saliency"][0], torch.tensor([1.0, 0.0, -1.0, 0.375, 1.0]), atol=1e-6, rtol=0)
    assert info["seeds"].tolist() == [[1, 5]]
    z, m = prior.calls[-1]
    assert z.shape == (1, 5, 2) and m.tolist() == [[True, True, False, True, True]]
    want = x[:, 1:].clone()
    want[0, 2] = 0.0
    assert torch.equal(z, want), "the prior reads the mergeable tokens with padded rows set to 0"


def test_single_real_token_gets_zero_surprise() -> None:
    x = torch.tensor([[[1.0, 0.0], [7.0, 7.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, False, False]])
    _, info = quickmerge(x, keep=1, mask=mask, prior=RecordingPrior(torch.zeros_like), prior_weight=1.0)
    # one real token: u = 0 (none other), range 0 -> u_hat = 0; s = 0
    assert info["saliency"].tolist() == [[0.0, -1.0, -1.0]]


def _prior(dim: int = 6, seed: int = 0) -> AutoregressivePrior:
    torch.manual_seed(seed)
    return AutoregressivePrior(dim, width=16, layers=2, heads=4).eval()


def test_prior_defaults_and_shape() -> None:
    prior = AutoregressivePrior(10)
    assert prior.config() == {"dim": 10, "width": 128, "layers": 2, "heads": 4}
    out = prior(torch.randn(2, 7, 10), torch.ones(2, 7, dtype=torch.bool))
    assert out.shape == (2, 7, 10)


def test_prior_real_outputs_ignore_padding() -> None:
    prior = _prior()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 9, 6, generator=gen)
    mask = torch.tensor([[True, False, True, True, False, True, False, True, True]] * 2)
    mask[1, 0] = False
    with torch.no_grad():
        ref = prior(z, mask)
        for fill in (float("nan"), float("inf"), 1e6):
            z2 = z.masked_fill(~mask.unsqueeze(-1), fill)
            out = prior(z2, mask)
            torch.testing.assert_close(out[mask], ref[mask], atol=1e-6, rtol=1e-6)
        # positions of padded tokens are not read by real tokens either
        pos = torch.arange(9).expand(2, 9)
        pos2 = torch.where(mask, pos, torch.full_like(pos, 777))
        torch.testing.assert_close(prior(z, mask, pos2)[mask], prior(z, mask, pos)[mask], atol=1e-6, rtol=1e-6)


def test_prior_is_causal() -> None:
    prior = _prior()
    z = torch.randn(1, 8, 6)
    mask = torch.ones(1, 8, dtype=torch.bool)
    with torch.no_grad():
        ref = prior(z, mask)
        z2 = z.clone()
        z2[0, 5:] = torch.randn(3, 6)
        out = prior(z2, mask)
    torch.testing.assert_close(out[0, :5], ref[0, :5], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[0, 5:], ref[0, 5:])


def _naive_symmetric_loss(prior, z: torch.Tensor) -> torch.Tensor:
    """Spec §5 on an unpadded batch, written out with F.mse_loss and torch.flip."""
    mask = torch.ones(z.shape[:2], dtype=torch.bool)
    zf = torch.flip(z, dims=[1])
    return F.mse_loss(prior(z, mask)[:, :-1], z[:, 1:]) + F.mse_loss(prior(zf, mask)[:, :-1], zf[:, 1:])


def test_symmetric_loss_matches_formula() -> None:
    prior = _prior()
    z = torch.randn(3, 7, 6)
    torch.testing.assert_close(symmetric_next_embedding_loss(prior, z), _naive_symmetric_loss(prior, z))
    torch.testing.assert_close(symmetric_next_embedding_loss(prior, z, torch.ones(3, 7, dtype=torch.bool)),
                               _naive_symmetric_loss(prior, z))


def test_symmetric_loss_excludes_padding() -> None:
    prior = _prior()
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(1, 5, 6, generator=gen)
    # the same 5 real tokens with padding interleaved (NaN values)
    z = torch.full((1, 8, 6), float("nan"))
    keep_at = [0, 2, 3, 5, 6]
    z[0, keep_at] = real[0]
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, keep_at] = True
    loss = symmetric_next_embedding_loss(prior, z, mask)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, _naive_symmetric_loss(prior, real), atol=1e-6, rtol=1e-5)


def test_symmetric_loss_batch_of_uneven_rows() -> None:
    # Padding excluded: the MSE averages over every real consecutive pair of the batch.
    prior = _prior()
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randn(1, 6, 6, generator=gen), torch.randn(1, 3, 6, generator=gen)]
    z = torch.zeros(2, 6, 6)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    for b, r in enumerate(rows):
        z[b, : r.shape[1]] = r[0]
        mask[b, : r.shape[1]] = True
    total, count = 0.0, 0
    ones = torch.ones(1, 6, dtype=torch.bool)
    for r in rows:
        for seq in (r, torch.flip(r, dims=[1])):
            n = seq.shape[1]
            err = (prior(seq, ones[:, :n])[:, :-1] - seq[:, 1:]).pow(2)
            total = total + err.sum()
            count += err.numel()
    # two terms, each averaged over its own real pairs (both directions have the same count)
    want = total / (count / 2)
    torch.testing.assert_close(symmetric_next_embedding_loss(prior, z, mask), want, atol=1e-6, rtol=1e-5)


def test_symmetric_loss_trains() -> None:
    torch.manual_seed(0)
    prior = AutoregressivePrior(4, width=16, layers=1, heads=2)
    t = torch.linspace(0, 1, 8)
    z = torch.stack([torch.sin(3 * t), torch.cos(3 * t), t, 1 - t], -1).unsqueeze(0).repeat(4, 1, 1)
    first = None
    for _ in range(40):  # plain gradient descent (torch.optim's first step imports torch._dynamo: slow)
        loss = symmetric_next_embedding_loss(prior, z)
        first = first if first is not None else loss.item()
        prior.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in prior.parameters():
                p -= 0.05 * p.grad
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("fill", [float("nan"), 1e4])
def test_guided_merge_with_real_prior_ignores_padding(fill: float) -> None:
    prior = _prior(dim=5)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 10, 5, generator=gen)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, [3, 7]] = False
    mask[1, 8:] = False
    layer = QuickMerge(QuickMergeConfig(keep=4, protect=1, prior_weight=0.5), prior=prior).eval()
    with torch.no_grad():
        merged, info = layer(x.masked_fill(~mask.unsqueeze(-1), 0.0), mask=mask)
        merged2, info2 = layer(x.masked_fill(~mask.unsqueeze(-1), fill), mask=mask)
    assert torch.equal(info["seeds"], info2["seeds"]) and torch.equal(info["assign"], info2["assign"])
    torch.testing.assert_close(info2["saliency"], info["saliency"], atol=1e-6, rtol=0)
    torch.testing.assert_close(merged2, merged, atol=1e-6, rtol=1e-6)
    # and the prior does change saliency
    _, plain = quickmerge(x.masked_fill(~mask.unsqueeze(-1), 0.0), keep=4, protect=1, mask=mask)
    assert not torch.allclose(plain["saliency"], info["saliency"])
