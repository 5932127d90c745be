"""``load_source``: any model source -> a :class:`LoadedModel`, the uniform view export uses.

A source is a recipe name (``"vit-tiny"``), a recipe ``.toml`` path, or anything a registered
loader accepts (:func:`register_source_loader`). A directory holding a ``config.json``, a
``.gguf`` file and a folder of ``.gguf`` files (without ``config.json``) go to the Hugging Face
adapters (``qm_export.adapters.hf.load_hf_source``, imported lazily).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..recipes import PRECISIONS, ExportDefaults, Recipe, ShapeProfile, Tolerance, load_recipe
from .export_view import make_export_module
from .families import family_class
from .schedule import MergeSchedule
from .stack import MERGE_METHODS

__all__ = ["LoadedModel", "load_source", "register_source_loader", "DTYPES", "recipe_source"]

#: export precision -> torch dtype.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: ``(predicate(source) -> bool, loader(source, **options) -> LoadedModel)``, tried in order.
_LOADERS: list[tuple[Callable[[Any], bool], Callable[..., "LoadedModel"]]] = []


@dataclass
class LoadedModel:
    """A model ready to export, validate and profile.

    Attributes:
        model: the ``nn.Module`` in ``eval()`` mode (cast to ``precision``).
        export_module: ``forward(*inputs)`` positional in ``input_names`` order, returning a
            flat tuple in ``output_names`` order (debug outputs appended when asked for).
        input_names, output_names: graph input and output names.
        example_inputs: a tuple of seeded tensors (float inputs in the model's dtype).
        trace_inputs: the inputs to trace an export with: ``example_inputs``, unless one of
            their dynamic axes has size 1, which ``torch.export`` would specialise on; then
            seeded inputs with every dynamic axis at least 2.
        dynamic_shapes: per input, ``{axis: torch.export.Dim}`` (batch always; the sequence
            length where the family allows it), for ``torch.export`` / ``torch.onnx.export``.
        family: family name; recipe: the :class:`Recipe` or None; schedule: the merges
            (empty with ``no_merge``); merge_layers: their layer indices.
        tolerances: precision -> :class:`Tolerance` (largest error against torch fp32).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; export_defaults: opset, merge_impl.
        build_shapes: input -> TensorRT :class:`ShapeProfile` (min/opt/max).
        tokens_per_layer: ``tokens_per_layer(*inputs) -> list[int]``: tokens entering each
            layer, then the number leaving the last layer (``depth + 1`` entries).
        sample_inputs: ``sample_inputs(batch=None, seq_len=None, seed=0)``: seeded inputs of
            another shape (None keeps the example's size on that axis).
        declared_shapes: ``(batch, seq_len)`` pairs that validation runs: the example's and the
            build profile's min/opt/max (``seq_len`` None where the family fixes it).
        tokenizer: the source's tokenizer, if it has one (Hugging Face folders).
        generation: a causal LM's :class:`~qm_export.generation.contract.GenerationModel`
            (prefill + decode over the merged cache); None for other families.
    """

    model: nn.Module
    export_module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: tuple[torch.Tensor, ...]
    trace_inputs: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, Any], ...]
    family: str
    recipe: Recipe | None
    schedule: MergeSchedule
    tolerances: Mapping[str, Tolerance]
    merge_layers: tuple[int, ...]
    precision: str
    export_defaults: ExportDefaults
    build_shapes: Mapping[str, ShapeProfile]
    tokens_per_layer: Callable[..., list[int]]
    sample_inputs: Callable[..., tuple[torch.Tensor, ...]]
    declared_shapes: tuple[tuple[int | None, int | None], ...] = ((None, None),)
    tokenizer: Any = None
    generation: Any = None

    @property
    def tolerance(self) -> Tolerance:
        """The tolerance of this model's ``precision`` (fp32's when the recipe has none)."""
        return self.tolerances.get(self.precision, self.tolerances["fp32"])

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``export_module(*inputs)`` without autograd."""
        with torch.no_grad():
            return self.export_module(*inputs)


def register_source_loader(predicate: Callable[[Any], bool], loader: Callable[..., LoadedModel]) -> None:
    """Let ``load_source`` hand sources for which ``predicate(source)`` is true to ``loader``.

    ``loader(source, *, schedule, no_merge, precision, batch, seq_len, debug_outputs, seed)``
    (``precision`` None: the source's own default)
    must return a :class:`LoadedModel`. Later registrations are tried first.
    """
    if not callable(predicate) or not callable(loader):
        raise TypeError("register_source_loader needs two callables: predicate(source) and loader(source, **options)")
    _LOADERS.insert(0, (predicate, loader))


def _is_hf_directory(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).is_dir() and (Path(source) / "config.json").is_file()


def is_gguf_source(source: Any) -> bool:
    """A ``.gguf`` file, or a folder without ``config.json`` that holds ``.gguf`` files."""
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and not (path / "config.json").is_file() and any(path.glob("*.gguf"))


def _load_hf(source: Any, **options: Any) -> LoadedModel:
    try:
        from ..adapters.hf import load_hf_source  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            f"{source} is a Hugging Face model directory, but the Hugging Face adapters "
            f"(qm_export.adapters.hf) cannot be imported ({err}): pip install 'qm-export[hf]'"
        ) from None
    return load_hf_source(source, **options)


def _check_int(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def load_source(
    source: str | Path,
    *,
    schedule: Any = None,
    no_merge: bool = False,
    precision: str | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    debug_outputs: bool = False,
    seed: int = 0,
    prior: str | Path | None = None,
    prior_weight: float | None = None,
    method: str = "quickmerge",
) -> LoadedModel:
    """Load ``source`` as a :class:`LoadedModel`.

    Args:
        source: recipe name, recipe ``.toml`` path, Hugging Face directory, GGUF checkpoint
            (``PATH.gguf`` or a folder holding one), or a source a registered loader accepts.
        schedule: overrides the recipe's merge schedule (any form ``parse_schedule`` takes).
        no_merge: the same model and weights without merge layers (the baseline).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``: the model is cast before export
            (selection maths stay float32 inside quickmerge); None: the recipe's export
            precision (fp32 for other sources).
        batch, seq_len: example input batch size / sequence length (default: the recipe's).
        debug_outputs: append every merge's ``assign`` and ``seeds`` to the outputs.
        seed: seed of the random init and of the example inputs.
        prior: a prior fitted by ``qm-export fit-prior`` (safetensors; its metadata names the
            merge layer it was fitted for), used with ``prior_weight`` (default 0.3) there.
        method: ``"quickmerge"`` (default) or ``"tome"``: the ToMe baseline merging the same
            layers to the same token counts (refused for causal-mode families, with a prior and
            with ``no_merge``); a ToMe model has no debug merge outputs (no seeds to compare).

    Raises:
        ValueError / TypeError naming the argument and value.
    """
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a recipe name or a path, got {type(source).__name__}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    _check_int("batch", batch)
    _check_int("seq_len", seq_len)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if no_merge and schedule is not None:
        raise ValueError("no_merge=True builds the model without merges; do not also pass a schedule")
    if prior is not None and no_merge:
        raise ValueError("no_merge=True builds the model without merges; a prior has nothing to guide")
    if prior_weight is not None and prior is None:
        raise ValueError(f"prior_weight={prior_weight!r} needs a prior (pass prior=PATH)")
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    if method == "tome" and no_merge:
        raise ValueError("no_merge=True builds the model without merges; method='tome' has nothing to merge")
    if method == "tome" and prior is not None:
        raise ValueError("method='tome' takes no prior; ToMe matches on attention keys only")
    options = dict(schedule=schedule, no_merge=no_merge, precision=precision, batch=batch,
                   seq_len=seq_len, debug_outputs=debug_outputs, seed=int(seed))
    if prior is not None:
        options.update(prior=prior, prior_weight=prior_weight)
    if method != "quickmerge":  # loaders written before ToMe need not take the option
        options["method"] = method
    for predicate, loader in _LOADERS:
        if predicate(source):
            return loader(source, **options)
    if _is_hf_directory(source) or is_gguf_source(source):
        options["precision"] = precision or "fp32"
        return _load_hf(source, **options)
    if Path(source).is_dir():
        raise ValueError(f"source {str(source)!r} is a directory without a config.json or a .gguf file: neither a "
                         "Hugging Face model directory nor a recipe (give a recipe name or a .toml file)")
    return recipe_source(load_recipe(source), **options)


def _example_shapes(recipe: Recipe, batch: int | None, seq_len: int | None, dynamic_sequence: bool) -> dict[str, tuple[int, ...]]:
    if seq_len is not None and not dynamic_sequence:
        raise ValueError(f"seq_len={seq_len}: family {recipe.family!r} has a token count fixed by its config; "
                         "its sequence length cannot be set")
    shapes = {}
    for name, spec in recipe.inputs.items():
        shape = list(spec.shape)
        if batch is not None:
            shape[spec.dynamic["batch"]] = batch
        if seq_len is not None and "sequence" in spec.dynamic:
            shape[spec.dynamic["sequence"]] = seq_len
        shapes[name] = tuple(shape)
    return shapes


def _make_inputs(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in model.example_inputs(shapes, gen))


def _trace_shapes(recipe: Recipe, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``shapes`` with every dynamic axis at least 2 (torch.export specialises sizes 0 and 1)."""
    out = {}
    for name, spec in recipe.inputs.items():
        shape = list(shapes[name])
        for axis in spec.dynamic.values():
            shape[axis] = max(shape[axis], 2)
        out[name] = tuple(shape)
    return out


def _dynamic_shapes(recipe: Recipe, shapes: Mapping[str, tuple[int, ...]], seq_limit: int | None) -> tuple[dict[int, Any], ...]:
    """One ``{axis: Dim}`` per input; a Dim's range covers the build profile and the example."""
    bounds: dict[str, list[int]] = {}
    for name, spec in recipe.inputs.items():
        profile = recipe.build_shapes[name]
        for dim_name, axis in spec.dynamic.items():
            lo = min(profile.min[axis], shapes[name][axis])
            hi = max(profile.max[axis], shapes[name][axis])
            if dim_name == "sequence" and seq_limit is not None:
                hi = min(hi, seq_limit)
            old = bounds.get(dim_name, [lo, hi])
            bounds[dim_name] = [max(old[0], lo), min(old[1], hi)]
    dims = {n: torch.export.Dim(n, min=lo, max=hi) for n, (lo, hi) in bounds.items()}
    return tuple({axis: dims[n] for n, axis in spec.dynamic.items()} for spec in recipe.inputs.values())


#: ``prior_weight`` used with a fitted prior when none is given.
DEFAULT_PRIOR_WEIGHT = 0.3


def _attach_fitted_prior(model: nn.Module, path: str | Path) -> None:
    """Put the prior at ``path`` in the merge layer it was fitted for; the model's other merge
    layers run without prior guidance."""
    from ..priors.io import load_prior, read_prior_metadata
    from ..priors.signature import check_prior_source

    meta = read_prior_metadata(path)
    check_prior_source(path, meta, model)
    layer = meta.get("layer")
    if not isinstance(layer, int):
        raise ValueError(f"prior {str(path)!r} does not say which merge layer it was fitted for (metadata 'layer')")
    if layer not in model.merge_layers:
        raise ValueError(f"prior {str(path)!r} was fitted for layer {layer}, which does not merge "
                         f"(merge layers: {list(model.merge_layers)})")
    fitted = load_prior(path)
    dim = model.stack.blocks[0].attn_dim if hasattr(model.stack.blocks[0], "attn_dim") else None
    expected = getattr(next(iter(model.stack.priors.values()), None), "dim", dim)
    if expected is not None and fitted.dim != expected:
        raise ValueError(f"prior {str(path)!r} predicts {fitted.dim}-dim tokens, the model's width is {expected}")
    model.stack.priors = nn.ModuleDict({str(layer): fitted.to(next(model.parameters()).dtype)})


def _declared_shapes(recipe: Recipe, shapes: Mapping[str, tuple[int, ...]], seq_limit: int | None,
                     dynamic_sequence: bool) -> tuple[tuple[int | None, int | None], ...]:
    """The example's shape, then the build profile's min/opt/max, as ``(batch, seq_len)``."""
    name, spec = next(iter(recipe.inputs.items()))
    profile = recipe.build_shapes[name]
    b_axis, s_axis = spec.dynamic["batch"], spec.dynamic.get("sequence")
    out: list[tuple[int | None, int | None]] = [(None, None)]
    for dims in (profile.min, profile.opt, profile.max):
        seq = dims[s_axis] if (s_axis is not None and dynamic_sequence) else None
        if seq is not None and seq_limit is not None:
            seq = min(seq, seq_limit)
        pair = (dims[b_axis], seq)
        same_as_example = dims[b_axis] == shapes[name][b_axis] and (seq is None or seq == shapes[name][s_axis])
        if pair not in out and not same_as_example:
            out.append(pair)
    return tuple(out)


def recipe_source(
    recipe: Recipe, *, schedule: Any = None, no_merge: bool = False, precision: str | None = None,
    batch: int | None = None, seq_len: int | None = None, debug_outputs: bool = False, seed: int = 0,
    prior: str | Path | None = None, prior_weight: float | None = None, method: str = "quickmerge",
) -> LoadedModel:
    """Build the :class:`LoadedModel` of a recipe (see :func:`load_source` for the options)."""
    cls = family_class(recipe.family)
    cls.check_method(method)
    config = cls.config_class.from_mapping(recipe.config, where=f"recipe {recipe.path}: model.config")
    spec = None if no_merge else (recipe.merge.schedule if schedule is None else schedule)
    merge_options = recipe.merge_options()
    if prior is not None:
        merge_options["prior_weight"] = DEFAULT_PRIOR_WEIGHT if prior_weight is None else prior_weight
    try:
        model = cls(config, spec, merge_options=merge_options, prior_config=recipe.merge.prior, seed=seed,
                    method=method)
    except (TypeError, ValueError) as err:
        where = "schedule" if schedule is not None else f"recipe {recipe.path}: key 'merge'"
        raise type(err)(f"{where}: {err}") from None
    if prior is not None:
        _attach_fitted_prior(model, prior)
    precision = precision or recipe.export.precision
    dtype = DTYPES[precision]
    model = model.to(dtype).eval()
    seq_limit = getattr(config, "max_positions", None)
    if seq_len is not None and seq_limit is not None and seq_len > seq_limit:
        raise ValueError(f"seq_len={seq_len} exceeds max_positions={seq_limit} of {recipe.name}")
    row_bytes = _row_bytes_of(model, config, lambda s: _make_inputs(
        model, _example_shapes(recipe, 1, seq_len if s is None else s, cls.dynamic_sequence), seed, dtype), dtype)
    if batch is not None:
        row_bytes("--batch", batch, None)
    shapes = _example_shapes(recipe, batch, seq_len, cls.dynamic_sequence)
    example = _make_inputs(model, shapes, seed, dtype)
    trace_shapes = _trace_shapes(recipe, shapes)
    trace = example if trace_shapes == shapes else _make_inputs(model, trace_shapes, seed, dtype)

    declared = _declared_shapes(recipe, shapes, seq_limit, cls.dynamic_sequence)
    _check_token_counts(model, recipe, declared, lambda b, s: _make_inputs(
        model, _example_shapes(recipe, b, seq_len if s is None else s, cls.dynamic_sequence), seed, dtype))

    def tokens_per_layer(*inputs: torch.Tensor) -> list[int]:
        with torch.no_grad():
            return [int(t) for t in model(*inputs).tokens]

    export_module = make_export_module(
        model, cls.input_names, model.output_names(),
        lambda out: (model.flat_outputs(out), out.merges),
        debug_outputs=debug_outputs and method == "quickmerge", n_merges=len(model.merge_layers),
    ).eval()
    return LoadedModel(
        model=model,
        export_module=export_module,
        input_names=cls.input_names,
        output_names=export_module.output_names,
        example_inputs=example,
        trace_inputs=trace,
        dynamic_shapes=_dynamic_shapes(recipe, trace_shapes, seq_limit),
        family=recipe.family,
        recipe=recipe,
        schedule=model.schedule,
        tolerances=dict(recipe.tolerances),
        merge_layers=model.merge_layers,
        precision=precision,
        export_defaults=recipe.export,
        build_shapes=dict(recipe.build_shapes),
        tokens_per_layer=tokens_per_layer,
        sample_inputs=lambda batch=None, seq_len=None, seed=seed: (
            row_bytes("--batch", batch, seq_len),
            _make_inputs(model, _example_shapes(recipe, batch, seq_len, cls.dynamic_sequence), seed, dtype))[1],
        declared_shapes=declared,
        generation=_recipe_generation(model, dtype),
    )


def _recipe_generation(model: nn.Module, dtype: torch.dtype) -> Any:
    """The causal LM's generation contract (None for the other families)."""
    from ..models.causal_lm import CausalLM

    if not isinstance(model, CausalLM):
        return None
    from ..generation.recipe import RecipeGeneration

    return RecipeGeneration(model, dtype)


def _row_bytes_of(model: nn.Module, config: Any, make_row: Callable[[int | None], tuple[torch.Tensor, ...]],
                  dtype: torch.dtype) -> Callable[[str, int | None, int | None], None]:
    """``check(option, batch, seq_len)``: refuse a batch whose forward cannot fit in memory
    (:mod:`qm_export.memory`); the per-row estimate is computed once per sequence length."""
    from ..memory import check_batch_fits, forward_row_bytes

    cache: dict[int | None, int] = {}

    def check(option: str, batch: int | None, seq_len: int | None) -> None:
        if batch is None or batch <= 1:
            return
        if seq_len not in cache:
            row = make_row(seq_len)
            tokens = _stack_tokens(model, row)
            cache[seq_len] = forward_row_bytes(sum(t.numel() * t.element_size() for t in row), tokens,
                                               config.dim, config.heads, config.mlp_hidden,
                                               torch.finfo(dtype).bits // 8)
        check_batch_fits(option, batch, cache[seq_len])

    return check


class _Entered(Exception):
    """Raised by a hook to stop a forward once the stack's input is known."""


def _stack_tokens(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Tokens entering ``model.stack`` (after the embeddings) for ``inputs``: the forward stops
    at the stack, so no layer runs."""
    seen: list[int] = []

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(int(args[0].shape[1]))
        raise _Entered

    handle = model.stack.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(*inputs)
    except _Entered:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the model never reached its layer stack")
    return seen[0]


def _check_token_counts(model: nn.Module, recipe: Recipe, declared: Sequence[tuple[int | None, int | None]],
                        make: Callable[[int | None, int | None], tuple[torch.Tensor, ...]]) -> None:
    """Refuse, before any tracing, a schedule that cannot merge at one of the declared shapes
    (``keep`` >= the mergeable tokens of its layer): :meth:`MergeSchedule.token_counts`."""
    if not model.schedule.merges:
        return
    for seq in sorted({seq for _, seq in declared}, key=lambda s: -1 if s is None else s):
        n = _stack_tokens(model, make(1, seq))
        where = "" if seq is None else f" at sequence length {seq} (a shape {recipe.name}'s build profile declares)"
        model.schedule.token_counts(n, where)

