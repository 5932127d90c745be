"""ToMe (bipartite soft matching) as an exportable merge step at QuickMerge++'s token counts.

:func:`tome_tokens` merges ``x`` ``(B, N, D)`` to exactly the ``P + K`` tokens QuickMerge++
keeps (``K = resolve_keep(N', config)``), batched and traceable by ``torch.export`` and the
dynamo ONNX exporter; :func:`tome_merge` does the same on a model's
:class:`~qm_export.models.merging.TokenState`. :func:`~qm_export.merge.tome.bipartite_merge`
stays the eager reference (one pass, no padding).

**One pass** is ToMe's: the sequence (protected token included) alternates into sets A (even
indices) and B (odd); with ``protect=1`` the class token is A's first entry and never merges.
Each mergeable A token's best B partner is found by cosine similarity of ``metric``; the
``r`` A tokens with the most similar partners are added into them. Output order, as
``bipartite_merge``: the protected token, the kept A tokens (in index order with
``protect=1``; in ToMe's ranking order with ``protect=0``), then the B tokens in index order.

**Several passes.** A pass removes at most ``floor(n/2)`` of its ``n`` mergeable tokens, so a
layer that keeps fewer than half runs several passes: pass ``i`` removes
``min(remaining, floor(n_i/2))``. The number of passes is fixed at trace time by
:func:`~qm_export.merge.tome.tome_passes` from ``keep_ratio`` (the most any ``N'`` needs) or from ``keep`` and the
largest ``N'`` a static or bounded dynamic shape allows; a pass with nothing left to remove
is a no-op. Between passes a merged token matches on the size-weighted mean of its real
members' metrics (its direction: the weighted sum, normalised).

**Padding** (``mask`` False) never changes a real token: padded tokens weigh 0 and their
values are never read (NaN is fine). Padded slots go first: a pass merges padded A tokens
(into a padded B token when there is one), then moves real A tokens one to one into padded B
slots (the least similar ones; the slot takes the token's value, size and position as they
are), and only then adds real A tokens into their most similar real B tokens. So every row
keeps ``min(K, its real tokens)`` real tokens, as QuickMerge++ does. (Scoring pad/real pairs
``-inf`` instead would let one pass drop only the padded A tokens, about half the padding, and
merge real tokens while padding is left.) A merged token's value is ``sum(size x) / sum(size)``
over its real members (zeros for padding only), its ``sizes`` the sum of its real members'
sizes, its ``mask`` whether it has a real member, its ``positions`` the largest position among
its real members (among all members for padding only). A padded row still differs from the
same row alone: its padded slots shift the A/B alternation of later passes.

**Export.** No ``TopK``: ranks are counted pairwise under export
(:func:`~qm_export.merge.indexing.stable_rank_descending`, ties to the lower index, as the
eager stable sort), so TensorRT's 3840-element ``TopK`` limit does not apply (eager ToMe's
``argsort`` would be fine for ONNX Runtime, not for TensorRT above 3840 set-A tokens). The
matching scores and ranks are ``(B, |A|, |B|)`` and ``(B, |A|, |A|)`` per pass, quadratic
like ToMe's own scores. The final merge is the
``qm::TokenGroupIndex``/``qm::TokenMerge`` pair of QuickMerge++ (sum, then divide; no
``scatter_reduce``), with each merged token's *representative* (the A or B token the others
were added into) as the ``seeds`` input, whose shape is all the op reads. No random op; counts
may be symbolic (``N'``, ``K`` and each pass's ``r`` are SymInts under a dynamic length).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

import torch

from . import ops
from .config import QuickMergeConfig, resolve_keep
from .indexing import batch_gather, first_argmax, running_count, stable_rank_descending
from .saliency import normalise
from .tome import tome_passes
from .validate import check_inputs

if TYPE_CHECKING:  # the models package imports this one
    from ..models.merging import TokenState

__all__ = ["ToMeInfo", "tome_tokens", "tome_merge"]


class ToMeInfo(TypedDict):
    """What :func:`tome_tokens` returns besides the merged tokens (``M' = P + K``).

    - ``assign`` ``(B, N)`` int64: index in the merged sequence of every input token.
    - ``sizes`` ``(B, M')`` float32, ``positions`` ``(B, M')`` int64, ``mask`` ``(B, M')`` bool.
    - ``representative`` ``(B, K)`` int64: index in ``x`` of the token each merged token is
      named after: the one the others were added into (a real member whenever the merged
      token has one). ToMe has no seeds; this is not a selection to compare across runtimes.
    - ``keep``: ``K``; ``passes``: bipartite passes run (some may remove nothing).
    """

    assign: torch.Tensor
    sizes: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    representative: torch.Tensor
    keep: Any
    passes: int


def _check_config(config: QuickMergeConfig) -> None:
    if config.protect not in (0, 1):
        raise ValueError(f"ToMe supports protect 0 or 1 (a class token), got protect={config.protect}")
    if config.mode != "global":
        raise ValueError(
            f"ToMe supports mode='global' only, got mode={config.mode!r}: its bipartite matching "
            "ignores token order, so it cannot keep a causal model causal"
        )


def _partition(flag: torch.Tensor, n_true: Any) -> torch.Tensor:
    """Indices of ``flag`` ``(B, n)``'s True entries, then its False ones, each in index order.

    :func:`~qm_export.merge.indexing.stable_partition` with the count of True entries given
    (an int, a SymInt or ``(B, 1)``), so that no slice of a symbolic size is taken.
    """
    idx = torch.arange(flag.shape[1], device=flag.device).unsqueeze(0).expand_as(flag)
    upto = running_count(flag)
    slot = torch.where(flag, upto - 1, n_true + idx - upto)
    return torch.empty_like(idx).scatter(1, slot, idx)


#: Priority keys of the harmless merges (cosine similarities lie in [-1, 1]).
_PAD_A_KEY, _INTO_PAD_KEY = 8.0, 4.0


def _match(hat_a: torch.Tensor, hat_b: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each A token's partner in B and its merge priority (higher merges first), ``(B, |A|)``.

    Real A tokens match the most similar real B token by cosine similarity (ToMe; the
    priority is that similarity). Merges that cannot change a real token come first: a padded
    A token (into the first padded B token, if any; weight 0), then real A tokens moved one to
    one into padded B tokens (the least similar ones first: the B slot takes the real token's
    value, size and position unchanged). So a layer consumes padded slots before it merges two
    real tokens, and every row keeps ``min(K, real tokens)`` real tokens.
    """
    scores = torch.matmul(hat_a, hat_b.transpose(1, 2))  # (B, |A|, |B|)
    scores = torch.where(ra.unsqueeze(2) & rb.unsqueeze(1), scores, -torch.inf)
    # A -inf column keeps the reductions defined when B is empty (a pass with nothing to do).
    batch, n_a = ra.shape
    scores = torch.cat([scores, scores.new_full((batch, n_a, 1), -torch.inf)], 2)
    best = scores.amax(-1)
    partner = first_argmax(scores)  # ties to the lower B index
    pad_b = torch.cat([~rb, rb.new_ones((batch, 1))], 1)  # a padded dummy ends the list
    n_pad_b = (~rb).sum(1, keepdim=True)
    pad_b_list = _partition(pad_b, n_pad_b + 1)  # padded B indices first, in index order
    # Real A tokens from the least similar: the first n_pad_b of them move into padded slots.
    low_rank = stable_rank_descending(torch.where(ra, -best, -torch.inf))
    into_pad = ra & (low_rank < n_pad_b)
    slot = torch.gather(pad_b_list, 1, torch.where(into_pad, low_rank, 0))
    first_pad = torch.where(n_pad_b > 0, torch.gather(pad_b_list, 1, torch.zeros_like(n_pad_b)), 0)
    partner = torch.where(ra, torch.where(into_pad, slot, partner), first_pad.expand_as(partner))
    key = torch.where(ra, torch.where(into_pad, _INTO_PAD_KEY, best), _PAD_A_KEY)
    return key, partner


def _bipartite_pass(state: dict[str, torch.Tensor], n_next: Any, p: int) -> dict[str, torch.Tensor]:
    """One ToMe pass taking the ``n`` current mergeable tokens to ``n_next`` (``r = n - n_next``).

    ``state`` holds, per current token ``(B, n, ...)``: ``hat`` the normalised metric,
    ``gw`` the size-weighted metric sum and ``w`` the real size (both over real members),
    ``real``, ``pos``, ``rep``; and ``assign`` ``(B, N')``, each input token's current index.
    A pass with ``r = 0`` (possible under a symbolic length) is the identity, order included,
    so that an exported model with spare passes gives the eager model's result exactly.
    Sets A and B are gathered (not strided slices) and every count is written from ``n`` and
    ``n_next`` once, which keeps the symbolic sizes of several passes small.
    """
    hat, real = state["hat"], state["real"]
    batch, n = real.shape
    device = hat.device
    r = n - n_next
    n_a = (n + 1 - p) // 2  # A: index + p even (the class token, index -1, is A's first)
    n_b = n - n_a
    n_kept = n_a - r

    def rows(count: Any) -> torch.Tensor:
        return torch.arange(count, device=device).unsqueeze(0).expand(batch, count)

    a_at, b_at = 2 * rows(n_a) + p, 2 * rows(n_b) + (1 - p)  # current index of each A / B token
    ra, rb = torch.gather(real, 1, a_at), torch.gather(real, 1, b_at)
    key, partner = _match(batch_gather(hat, a_at), batch_gather(hat, b_at), ra, rb)
    rank = stable_rank_descending(key)  # ties to the lower A index
    merged = rank < r
    if p == 0:  # ToMe's order: kept A tokens by rank
        kept_pos = rank - r
        kept_a = torch.gather(torch.empty_like(rank).scatter(1, rank, rows(n_a)), 1, rows(n_kept) + r)
    else:  # the class token first, then kept A tokens by index
        kept_pos = running_count(~merged) - 1
        kept_a = torch.gather(_partition(~merged, n_kept), 1, rows(n_kept))
    j = rows(n)
    half = torch.div(j, 2, rounding_mode="floor")
    back = torch.where((j + p) % 2 == 0, half, half + n_a)  # current index -> place in cat([A, B])
    # dest: each current token's index after the pass; src: each new token's current index.
    dest = torch.gather(torch.cat([torch.where(merged, partner + n_kept, kept_pos), rows(n_b) + n_kept], 1), 1, back)
    src = torch.cat([2 * kept_a + p, b_at], 1)
    acted = merged.any(1, keepdim=True)  # False only when r == 0
    dest = torch.where(acted, dest, j)
    src = torch.where(acted, src, rows(n_next))

    # B tokens absorb their merged A partners: sums by a (B, |B|, |A|) membership product.
    absorb = (partner.unsqueeze(2) == torch.arange(n_b, device=device)) & merged.unsqueeze(2)  # (B, |A|, |B|)
    take = absorb.transpose(1, 2).float()
    real_in = absorb & ra.unsqueeze(2)
    low = torch.tensor(torch.iinfo(torch.int64).min, device=device)
    a_of = {name: batch_gather(state[name], a_at) for name in ("gw", "w", "pos", "rep")}
    b_of = {name: batch_gather(state[name], b_at) for name in ("gw", "w", "pos", "rep")}
    real_b = rb | real_in.any(1)
    from_real = torch.where(real_in, a_of["pos"].unsqueeze(2), low).amax(1)
    from_all = torch.where(absorb, a_of["pos"].unsqueeze(2), low).amax(1)
    # A padded B slot that took a real A token is named after it.
    real_rep = torch.where(real_in, a_of["rep"].unsqueeze(2), low).amax(1)
    new_b = {
        "rep": torch.where(rb | ~real_b, b_of["rep"], real_rep),
        "w": b_of["w"] + torch.matmul(take, a_of["w"].unsqueeze(-1)).squeeze(-1),
        "gw": b_of["gw"] + torch.matmul(take, a_of["gw"]),
        "real": real_b,
        "pos": torch.where(real_b, torch.maximum(torch.where(rb, b_of["pos"], low), from_real),
                           torch.maximum(b_of["pos"], from_all)),
    }
    a_of["real"] = ra

    out = {name: batch_gather(batch_gather(torch.cat([a_of[name], new_b[name]], 1), back), src) for name in new_b}
    out["hat"] = torch.where(out["real"].unsqueeze(-1), normalise(out["gw"]), torch.zeros((), device=device))
    out["assign"] = torch.gather(dest, 1, state["assign"])
    return out


def tome_tokens(
    x: torch.Tensor,
    config: QuickMergeConfig,
    *,
    metric: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ToMeInfo]:
    """Merge ``x`` ``(B, N, D)`` to ``(B, P + K, D)`` tokens with ToMe (see the module docs).

    Args:
        x: ``(B, N, D)`` float tokens (matching runs in float32; merged values in ``x``'s dtype).
        config: ``keep``/``keep_ratio`` give ``K`` as for QuickMerge++; ``protect`` 0 or 1;
            ``mode`` must be ``"global"``; the saliency options are not used.
        metric: ``(B, N, Dm)`` matching features (ToMe uses the attention keys averaged over
            heads); default ``x``.
        sizes, positions, mask: ``(B, N)`` as for :func:`~qm_export.merge.quickmerge`.

    Returns:
        ``(merged, info)``, see :class:`ToMeInfo`.
    """
    if not isinstance(config, QuickMergeConfig):
        raise TypeError(f"config must be a QuickMergeConfig, got {type(config).__name__}: {config!r}")
    _check_config(config)
    tracing = ops.is_exporting()
    inputs = check_inputs(x, config, attn=None, scales=None, sizes=sizes, positions=positions,
                          metric=metric, mask=mask, tracing=tracing)
    p = config.protect
    batch, n_all = x.shape[:2]
    n = n_all - p
    k = resolve_keep(n, config)
    if config.keep is not None:  # (eager checks keep <= N'; a traced length may still be shorter)
        k = min(n, k) if isinstance(n, int) else torch.sym_min(n, k)
    real = inputs.mask[:, p:]
    zero = torch.zeros((), device=x.device)
    g = torch.where(real.unsqueeze(-1), inputs.metric[:, p:].float(), zero)
    w = torch.where(real, inputs.sizes[:, p:], zero)
    local = torch.arange(n, device=x.device).unsqueeze(0).expand(batch, n)
    state = {
        "hat": normalise(g), "gw": g * w.unsqueeze(-1), "w": w, "real": real,
        "pos": inputs.positions[:, p:].long(), "rep": local, "assign": local,
    }
    passes = tome_passes(n, config)
    current = n
    for _ in range(passes):  # a pass removes min(remaining, floor(n/2)): n -> max(K, ceil(n/2))
        half_up = (current + 1) // 2
        current = max(k, half_up) if isinstance(k, int) and isinstance(half_up, int) else torch.sym_max(k, half_up)
        state = _bipartite_pass(state, current, p)

    assign_local, rep = state["assign"], state["rep"]
    order, offsets = ops.group_index(assign_local, rep)
    merged = ops.merge(x[:, p:], w, order, offsets)
    out_sizes = ops.group_sum(inputs.sizes[:, p:], real, order, offsets)
    protected = torch.arange(p, device=x.device).unsqueeze(0).expand(batch, p)
    info: ToMeInfo = {
        "assign": torch.cat([protected, assign_local + p], 1),
        "sizes": torch.cat([inputs.sizes[:, :p], out_sizes], 1),
        "positions": torch.cat([inputs.positions[:, :p].long(), state["pos"]], 1),
        "mask": torch.cat([inputs.mask[:, :p], state["real"]], 1),
        "representative": rep + p,
        "keep": k,
        "passes": passes,
    }
    return torch.cat([x[:, :p], merged], 1), info


def tome_merge(
    hidden: torch.Tensor, state: "TokenState", config: QuickMergeConfig, metric: torch.Tensor
) -> tuple[torch.Tensor, "TokenState", ToMeInfo]:
    """ToMe on a model's residual stream ``hidden`` ``(B, M, D)`` with its token ``state``.

    Args:
        hidden: ``(B, M, D)`` tokens; state: their :class:`TokenState` (sizes, positions,
            mask, source); config: the layer's config (``K`` as QuickMerge++'s);
        metric: ``(B, M, Dm)`` matching features (the layer's keys averaged over heads).

    Returns:
        ``(merged (B, P + K, D), new_state, info)``; ``new_state.source`` maps every original
        token to its merged token, exactly as :func:`~qm_export.models.merging.merge_tokens`.
    """
    from ..models.merging import TokenState

    merged, info = tome_tokens(hidden, config, metric=metric, sizes=state.sizes,
                               positions=state.positions, mask=state.mask)
    source = torch.gather(info["assign"], 1, state.source)
    return merged, TokenState(info["sizes"], info["positions"], info["mask"], source), info
