"""Export views of a :class:`~.contract.GenerationModel`: the ``prefill`` and ``decode`` graphs.

Each view is what :func:`qm_export.export.onnx_export.export_onnx` needs (``export_module``,
``trace_inputs``, ``dynamic_shapes``, ``input_names``, ``output_names``):

- prefill: ``input_ids``, ``attention_mask`` ``(batch, sequence)`` -> ``logits (batch, vocab)``
  then ``present.{i}.{key,value,positions,sizes}``; the prompt is merged in the graph.
- decode: ``input_ids``, ``position_ids`` ``(batch, 1)`` and ``past_key_values.{i}.*`` (each
  layer's cache length its own dynamic axis ``past_{i}``) -> ``logits`` and ``present.{i}.*``
  one token longer. Nothing is merged in it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .contract import CACHE_FIELDS, GenerationModel, first_positions, flatten_cache, past_names, present_names, unflatten_cache

__all__ = ["GraphView", "as_prefill", "prefill_view", "decode_view", "example_cache", "pad_cache", "distinct_lengths"]


@dataclass
class GraphView:
    """One graph to export (the attributes ``export_onnx`` reads from a loaded model)."""

    export_module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    trace_inputs: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, Any], ...]

    @property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.trace_inputs


def _merge_recorder(gen: GenerationModel) -> Any:
    """``() -> context manager yielding a Recorder`` for a patched Hugging Face model's
    QuickMerge++ merges (their ``assign``/``seeds`` become debug outputs); None otherwise."""
    patch = getattr(getattr(gen, "base", None), "quickmerge", None)
    if patch is None:
        return None
    from ..adapters.hf.runner import QuickMergePatch, recording

    if not isinstance(patch, QuickMergePatch) or patch.method != "quickmerge":
        return None
    return lambda: recording(patch)


class _Prefill(nn.Module):
    def __init__(self, gen: GenerationModel, debug: bool = False) -> None:
        super().__init__()
        self.gen = gen
        self.model = getattr(gen, "model", None)  # registers the weights as a submodule
        self._recorder = _merge_recorder(gen) if debug else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._recorder is None:
            logits, cache = self.gen.prefill(input_ids, attention_mask)
            return (logits, *flatten_cache(cache))
        with self._recorder() as recorder:
            logits, cache = self.gen.prefill(input_ids, attention_mask)
        debug = [t for _, info in recorder.merges for t in (info["assign"], info["seeds"])]
        return (logits, *flatten_cache(cache), *debug)


class _DecodeBase(nn.Module):
    def __init__(self, gen: GenerationModel) -> None:
        super().__init__()
        self.gen = gen
        self.model = getattr(gen, "model", None)

    def _run(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, cache = self.gen.decode(input_ids, position_ids, unflatten_cache(past))
        return (logits, *flatten_cache(cache))


def _decode_module(gen: GenerationModel) -> nn.Module:
    """A module whose ``forward`` takes one named parameter per graph input (``torch.export``
    maps ``dynamic_shapes`` by position; the dotted graph names are set at translation)."""
    depth = gen.spec.depth

    def forward(self: _DecodeBase, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(*tensors)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    names = ["input_ids", "position_ids"] + [f"past_{i}_{f}" for i in range(depth) for f in CACHE_FIELDS]
    forward.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in ["self", *names]])  # type: ignore[attr-defined]
    cls = type("DecodeExport", (_DecodeBase,), {"forward": forward})
    return cls(gen).eval()


def _prompt_pair(gen: GenerationModel, batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ids and an all-ones mask ``(batch, seq_len)``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, gen.spec.vocab_size, (batch, seq_len), generator=g)
    return ids, torch.ones(batch, seq_len, dtype=torch.int64)


def prefill_view(gen: GenerationModel, prompt: tuple[torch.Tensor, torch.Tensor],
                 debug_names: tuple[str, ...] = ()) -> GraphView:
    """The prefill graph, traced on ``prompt`` (ids, mask ``(B >= 2, N >= 2)``); with
    ``debug_names`` (``merge{i}_assign``/``_seeds`` of each merge) the merges' selection too."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=gen.spec.max_positions)
    module = _Prefill(gen, debug=bool(debug_names)).eval()
    if debug_names and module._recorder is None:
        debug_names = ()
    return GraphView(
        module, ("input_ids", "attention_mask"), ("logits", *present_names(gen.spec.depth), *debug_names),
        prompt, ({0: batch, 1: seq}, {0: batch, 1: seq}),
    )


def as_prefill(loaded: Any) -> Any:
    """``loaded`` (a :class:`~qm_export.models.LoadedModel` of a causal LM) exporting the prefill
    graph: the recipes' export module already does (logits, ``present.*``, debug merge
    outputs); other sources (Hugging Face, GGUF) get the contract's prefill, their merges'
    selection recorded as debug outputs when ``loaded`` has them."""
    import dataclasses

    from ..export.onnx_export import is_debug_output

    gen = loaded.generation
    names = ("logits", *present_names(gen.spec.depth))
    if tuple(loaded.output_names[:len(names)]) == names:
        return loaded
    debug = tuple(n for n in loaded.output_names if is_debug_output(n))
    view = prefill_view(gen, tuple(loaded.trace_inputs), debug)
    return dataclasses.replace(loaded, export_module=view.export_module, output_names=view.output_names)


def example_cache(gen: GenerationModel, batch: int = 2, seq_len: int = 8, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
    """``(next ids (B, 1), their positions (B, 1), cache)`` from a real prefill of a seeded
    prompt: the decode graph is traced on a cache the model produced."""
    ids, mask = _prompt_pair(gen, batch, seq_len, seed)
    with torch.no_grad():
        logits, cache = gen.prefill(ids, mask)
    return logits.argmax(-1, keepdim=True), first_positions(mask), cache


def pad_cache(cache: list[Any], extra: list[int]) -> list[Any]:
    """Each layer's cache with ``extra[i]`` padding entries appended (size 0, never attended)."""
    from ..models.stack import LayerCache

    out = []
    for c, n in zip(cache, extra):
        if n:
            b, h, _, dh = c.key.shape
            z = c.key.new_zeros(b, h, n, dh)
            c = LayerCache(torch.cat([c.key, z], 2), torch.cat([c.value, z], 2),
                           torch.cat([c.positions, c.positions.new_zeros(b, n)], 1),
                           torch.cat([c.sizes, c.sizes.new_zeros(b, n)], 1))
        out.append(c)
    return out


def distinct_lengths(lengths: list[int]) -> list[int]:
    """Padding per layer that makes every cache length distinct (the exporter gives inputs
    of equal size one symbol, which would tie the layers' cache lengths together)."""
    seen: set[int] = set()
    extra = []
    for n in lengths:
        pad = 0
        while n + pad in seen:
            pad += 1
        seen.add(n + pad)
        extra.append(pad)
    return extra


def decode_view(gen: GenerationModel, *, batch: int = 2, seq_len: int = 8, seed: int = 0) -> GraphView:
    """The decode graph, traced on the cache of a ``(batch, seq_len)`` prefill (padded so that
    every layer's cache length differs: each is its own dynamic axis ``past_{i}``)."""
    depth = gen.spec.depth
    ids, pos, cache = example_cache(gen, batch, seq_len, seed)
    cache = pad_cache(cache, distinct_lengths([c.key.shape[2] for c in cache]))
    for i, c in enumerate(cache):
        if c.key.shape[2] < 2:  # torch.export specialises an axis of size 1
            raise ValueError(f"decode_view: layer {i}'s cache has {c.key.shape[2]} token(s) after a {seq_len}-token "
                             "prompt; trace with a longer seq_len")
    b = torch.export.Dim("batch", min=1, max=4096)
    past = [torch.export.Dim(f"past_{i}", min=1, max=gen.spec.max_positions) for i in range(depth)]
    shapes: list[dict[int, Any]] = [{0: b}, {0: b}]
    for i in range(depth):
        shapes += [{0: b, 2: past[i]}, {0: b, 2: past[i]}, {0: b, 1: past[i]}, {0: b, 1: past[i]}]
    return GraphView(
        _decode_module(gen), ("input_ids", "position_ids", *past_names(depth)), ("logits", *present_names(depth)),
        (ids, pos, *flatten_cache(cache)), tuple(shapes),
    )
