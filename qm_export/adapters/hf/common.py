"""Input handling shared by the families' replacement ``forward`` functions."""

from __future__ import annotations

from typing import Any

import torch

from ...models.merging import TokenState

__all__ = ["padding_mask", "initial_state", "reject_unsupported", "finish_output"]


def padding_mask(attention_mask: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """``attention_mask`` ``(B, N)`` (1/True = real token) as a bool mask; all real if None."""
    if attention_mask is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.dim() != 2:
        raise ValueError(
            "a QuickMerge-patched model takes a 2-D attention_mask (B, N) with 1 for real tokens, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    return attention_mask.to(device) != 0


def initial_state(
    batch: int, n: int, device: torch.device, mask: torch.Tensor, position_ids: torch.Tensor | None
) -> TokenState:
    """The unmerged :class:`TokenState` (positions from ``position_ids`` or ``0..N-1``)."""
    positions = None
    if position_ids is not None:
        positions = position_ids.to(device).long().expand(batch, n)
    return TokenState.initial(batch, n, device, mask=mask, positions=positions)


def reject_unsupported(model_name: str, **given: Any) -> None:
    """Raise ``ValueError`` for arguments a merged forward cannot honour.

    Caches and cross-attention need every token's keys, which merging rewrites;
    ``output_attentions`` would return matrices over merged tokens.
    """
    for name in ("cache", "past_key_values", "encoder_hidden_states", "encoder_attention_mask"):
        if given.get(name) is not None:
            raise ValueError(f"{model_name} patched with QuickMerge++ does not support {name}=...; remove_quickmerge() to use it")
    if given.get("use_cache"):
        raise ValueError(
            f"{model_name} patched with QuickMerge++ does not support use_cache=True (a KV cache of "
            "merged tokens); call it with use_cache=False on the full context"
        )
    if given.get("output_attentions"):
        raise ValueError(f"{model_name} patched with QuickMerge++ does not return attentions (output_attentions=True)")


def finish_output(output: Any, return_dict: bool | None) -> Any:
    """The ``ModelOutput``, or its tuple form when ``return_dict=False``."""
    return output.to_tuple() if return_dict is False else output
