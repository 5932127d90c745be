"""The export view of a model: positional tensors in, a flat tuple of tensors out.

:func:`make_export_module` wraps a model in an ``nn.Module`` whose ``forward`` has one
parameter per input, named as the inputs (so ``torch.onnx.export`` names the graph inputs
after them), and returns the outputs in a fixed order; with ``debug_outputs`` it appends every
merge's ``assign`` and ``seeds`` (``merge{i}_assign``, ``merge{i}_seeds``, ``i`` = the merge's
rank in layer order).

Tracing runs under :func:`size_oblivious`: token counts after a merge (``K = f(N)``) are
symbolic under a dynamic sequence length, and without it torch's shape solver specialises on
whether such a count equals 1 (contiguity checks) and rejects the dynamic range.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..merge.quickmerge import MergeInfo

__all__ = ["size_oblivious", "ExportModule", "make_export_module", "debug_output_names"]

#: ``flatten(result) -> (outputs, merges)``: a model result to its flat outputs and merge infos.
Flatten = Callable[[Any], tuple[Sequence[torch.Tensor], Sequence[MergeInfo]]]


@contextlib.contextmanager
def size_oblivious() -> Iterator[None]:
    """Trace with ``backed_size_oblivious`` (sizes are not assumed to be 0 or 1), when the
    installed torch has it; a no-op in eager mode."""
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # pragma: no cover - other torch versions
        yield
        return
    if not hasattr(fx_config, "backed_size_oblivious"):  # pragma: no cover
        yield
        return
    with fx_config.patch(backed_size_oblivious=True):
        yield


def debug_output_names(n_merges: int) -> tuple[str, ...]:
    """``merge{i}_assign``, ``merge{i}_seeds`` for every merge ``i``."""
    return tuple(f"merge{i}_{what}" for i in range(n_merges) for what in ("assign", "seeds"))


class ExportModule(nn.Module):
    """Base of the generated export modules (see :func:`make_export_module`)."""

    def __init__(self, model: nn.Module, flatten: Flatten, input_names: Sequence[str],
                 output_names: Sequence[str], debug_outputs: bool) -> None:
        super().__init__()
        self.model = model
        self._flatten = flatten
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.debug_outputs = debug_outputs

    def _run(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with size_oblivious():
            outputs, merges = self._flatten(self.model(*tensors))
        flat = list(outputs)
        if self.debug_outputs:
            for info in merges:
                flat += [info["assign"], info["seeds"]]
        return tuple(flat)


def make_export_module(
    model: nn.Module,
    input_names: Sequence[str],
    output_names: Sequence[str],
    flatten: Flatten,
    *,
    debug_outputs: bool = False,
    n_merges: int = 0,
) -> ExportModule:
    """An :class:`ExportModule` with ``forward(<input_names>) -> tuple`` in ``output_names`` order.

    Args:
        model: the model, called as ``model(*tensors)``.
        input_names: the forward's parameter names (valid Python identifiers).
        output_names: names of ``flatten``'s outputs (the debug names are appended).
        flatten: ``result -> (outputs, merges)``.
        debug_outputs: append ``assign``/``seeds`` of each of the ``n_merges`` merges.
    """
    for name in input_names:
        if not name.isidentifier():
            raise ValueError(f"input name {name!r} is not a valid Python identifier")

    def forward(self: ExportModule, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(*tensors)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind) for n in input_names]
    forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cls = type(f"{type(model).__name__}Export", (ExportModule,), {"forward": forward})
    names = tuple(output_names) + (debug_output_names(n_merges) if debug_outputs else ())
    return cls(model, flatten, input_names, names, debug_outputs)
