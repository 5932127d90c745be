"""A local Hugging Face model folder as a ``convert`` source.

:func:`load_hf_source` loads the model offline (``local_files_only=True``), patches it with
QuickMerge++ (unless ``no_merge``) and wraps it in an export module whose ``forward`` takes
tensors positionally in ``input_names`` order and returns a flat tuple in ``output_names``
order — what ``torch.export.export`` and the ONNX exporter need.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import SourceError, first_line
from ...models.schedule import EMBED, MergeSchedule
from ...models.source import LoadedModel
from ...recipes import ExportDefaults, ShapeProfile, Tolerance
from .patch import METHODS, SUPPORTED, apply_quickmerge, resolve_base
from .gguf import gguf_file, load_gguf
from .runner import QuickMergePatch, recording
from .trust import refuse_remote_code

__all__ = ["load_hf_model", "load_hf_source", "PRECISIONS", "TOLERANCES"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Parity tolerances per precision: ``|diff| <= max_abs + max_rel * |torch|``.
TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4, max_rel=1e-4),
    "fp16": Tolerance(max_abs=2e-2, max_rel=2e-2),
    "bf16": Tolerance(max_abs=6e-2, max_rel=6e-2),
}
_ARCHITECTURES = {
    "BertModel", "BertForSequenceClassification", "BertForMaskedLM", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertForMultipleChoice", "BertForPreTraining", "BertForNextSentencePrediction",
    "ViTModel", "ViTForImageClassification", "GPT2Model", "GPT2LMHeadModel", "LlamaModel", "LlamaForCausalLM",
}
_BY_MODEL_TYPE = {"bert": "BertModel", "vit": "ViTModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def load_hf_model(path: str | Path, *, precision: str = "fp32") -> tuple[nn.Module, Any]:
    """Load a supported model (and its tokenizer, if the folder has one) from a local folder.

    The class comes from ``config.json`` (``architectures``, else ``model_type``). Never
    downloads: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``. Never runs code from the
    folder: an ``auto_map`` is refused (:mod:`.trust`), ``trust_remote_code=False`` and
    pickled weights load with ``weights_only=True``.

    Returns:
        ``(model in eval mode, tokenizer or None)``.
    """
    path = Path(path)
    if (gguf := gguf_file(path)) is not None:  # a .gguf file, or a folder's only one (gguf.py)
        return load_gguf(gguf, precision=precision)
    refuse_remote_code(path)  # before transformers reads anything from the folder
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = import_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # malformed JSON, a missing model_type, ...: the folder's fault
        raise SourceError(f"{path / 'config.json'} cannot be read as a Hugging Face config: {first_line(err)}") from None
    names = [a for a in (getattr(config, "architectures", None) or []) if a in _ARCHITECTURES]
    name = names[0] if names else _BY_MODEL_TYPE.get(getattr(config, "model_type", ""))
    if name is None:
        found = getattr(config, "architectures", None) or getattr(config, "model_type", "?")
        raise TypeError(f"{path}: model {found} is not supported; supported: {SUPPORTED}")
    weights = [f for f in _WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        raise SourceError(f"{path} has no weights: expected one of {', '.join(_WEIGHT_FILES)} next to config.json")
    try:
        with _quiet_loading(transformers):
            model = getattr(transformers, name).from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                                weights_only=True)
    except Exception as err:  # a truncated or corrupt weights file, shapes that do not match the config
        raise SourceError(f"{path / weights[0]}: the weights cannot be loaded ({first_line(err)}); "
                          "is the file complete?") from None
    model = model.to(PRECISIONS[precision]).eval()
    tokenizer = None
    if any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                                   trust_remote_code=False)
        except Exception as err:
            raise SourceError(f"{path}: its tokenizer files cannot be loaded ({first_line(err)})") from None
    return model, tokenizer


#: Weight files ``from_pretrained`` reads (a sharded checkpoint has an index file).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@contextlib.contextmanager
def _quiet_loading(transformers: Any) -> Iterator[None]:
    """No "Loading weights" progress bar from transformers on our stderr (the command shows
    its own stages)."""
    hf_logging = getattr(getattr(transformers, "utils", None), "logging", None)
    if hf_logging is None or not hasattr(hf_logging, "disable_progress_bar"):
        yield
        return
    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def import_transformers() -> Any:
    """``transformers``, or an ``ImportError`` that names the extra to install."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"Hugging Face model folders need transformers ({err}): "
                          "pip install 'qm-export[hf]'") from None
    return transformers


def _memory_checked(make: Any, config: Any, family: str, dtype: torch.dtype, default_batch: int) -> Any:
    """``make(b, s, seed)`` that first refuses a batch whose forward cannot fit in memory
    (:mod:`qm_export.memory`), from the model config's width, heads and MLP size."""
    from ...memory import check_batch_fits, forward_row_bytes

    def first(*names: str, default: int = 0) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return default

    width = first("hidden_size", "n_embd", default=768)
    heads = first("num_attention_heads", "n_head", default=12)
    mlp = first("intermediate_size", "n_inner", default=4 * width)
    cache: dict[int | None, int] = {}

    def checked(b: int | None, s: int | None, sd: int) -> tuple[torch.Tensor, ...]:
        eff = default_batch if b is None else b
        if eff > 1:
            if s not in cache:
                row = make(1, s, sd)
                if family == "vit":
                    tokens = (int(config.image_size) // int(config.patch_size)) ** 2 + 1
                else:
                    tokens = int(row[0].shape[1])
                input_bytes = sum(t.numel() * t.element_size() for t in row)
                cache[s] = forward_row_bytes(input_bytes, tokens, width, heads, mlp, torch.finfo(dtype).bits // 8)
            check_batch_fits("--batch", eff, cache[s])
        return make(b, s, sd)

    return checked


#: Longest sequence of a text model's declared build profile (``build --shapes`` goes further).
PROFILE_MAX_TOKENS = 2048


def default_schedule(num_layers: int) -> dict[int, float]:
    """One merge keeping half the tokens, in layer ``num_layers // 3``."""
    return {num_layers // 3: 0.5}


class _ExportBase(nn.Module):
    def __init__(self, model: nn.Module, output_names: list[str], debug: bool) -> None:
        super().__init__()
        self.model = model
        self.output_names = list(output_names)
        self.debug = debug

    def _run(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        base, _ = resolve_base(self.model)
        patch = getattr(base, "quickmerge", None)
        if not (self.debug and isinstance(patch, QuickMergePatch) and patch.method == "quickmerge"):
            out = self.model(**inputs)
            return tuple(out[name] for name in self.output_names)
        with recording(patch) as recorder:
            out = self.model(**inputs)
        flat = [out[name] for name in self.output_names]
        for _, info in recorder.merges:
            flat += [info["assign"], info["seeds"]]
        return tuple(flat)


class TextExport(_ExportBase):
    """``forward(input_ids (B, N) int64, attention_mask (B, N) int64) -> outputs``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(input_ids=input_ids, attention_mask=attention_mask)


class VisionExport(_ExportBase):
    """``forward(pixel_values (B, C, H, W)) -> outputs``."""

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(pixel_values=pixel_values)


def _text_example(model: nn.Module, tokenizer: Any, batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, ...]:
    from ...priors.samples import hash_tokenizer, hf_tokenizer, pydoc_documents

    tok = hf_tokenizer(tokenizer) if tokenizer is not None else hash_tokenizer(model.config.vocab_size)
    ids = tok.encode(" ".join(pydoc_documents()[seed % 50 : seed % 50 + 3]))
    inner = seq_len - len(tok.wrap([]))
    ids = ids * (batch * inner // max(len(ids), 1) + 1)
    rows = [tok.wrap(ids[i * inner : (i + 1) * inner]) for i in range(batch)]
    input_ids = torch.tensor(rows, dtype=torch.long)
    mask = torch.ones_like(input_ids)
    if batch > 1:  # the last row carries right padding (a quarter of the sequence)
        pad = seq_len // 4
        if pad > 0:
            mask[-1, seq_len - pad :] = 0
            input_ids[-1, seq_len - pad :] = tok.pad_id
    return input_ids, mask


def load_hf_source(
    path: str | Path,
    *,
    schedule: Any = None,
    no_merge: bool = False,
    precision: str = "fp32",
    batch: int | None = None,
    seq_len: int | None = None,
    debug_outputs: bool = False,
    seed: int = 0,
    prior: str | Path | None = None,
    prior_weight: float | None = None,
    method: str = "quickmerge",
) -> LoadedModel:
    """Load a local Hugging Face model folder, patch it, and describe it for export.

    Args:
        path: folder with ``config.json`` and safetensors weights.
        schedule: merge schedule (any :func:`parse_schedule` form); default one merge keeping
            half the tokens in layer ``num_layers // 3``.
        no_merge: leave the model unpatched (the baseline).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (weights and float inputs).
        batch, seq_len: example input shape (defaults 2 and 32; ViT uses its image size).
        debug_outputs: also return ``merge{i}_assign`` ``(B, N_i)`` and ``merge{i}_seeds``
            ``(B, K_i)`` of every merge layer.
        seed: seed of the example inputs.
        prior, prior_weight: a prior fitted by ``qm-export fit-prior`` for one merge layer
            (named in its metadata) and its weight (default 0.3).
        method: ``"quickmerge"`` or ``"tome"``: the ToMe baseline at the same layers and token
            counts, with the batched, exportable step (``tome_impl="batched"``); a ToMe model
            has no debug merge outputs. Refused for GPT-2 (causal), with a prior or ``no_merge``.
    """
    from ...priors.samples import image_batch

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "tome" and (no_merge or prior is not None):
        raise ValueError("method='tome' needs merges and takes no prior (got no_merge or a prior)")
    model, tokenizer = load_hf_model(path, precision=precision)
    base, family = resolve_base(model)
    if method == "tome" and family.default_mode == "causal":
        raise ValueError(
            f"method='tome' cannot merge {type(base).__name__}: it is a causal model, and ToMe's bipartite "
            "matching ignores token order; use method='quickmerge'"
        )
    num_layers = len(family.layers(base))
    plan = None
    if not no_merge:
        options: dict[str, Any] = {}
        if prior is not None:
            from ...priors.io import read_prior_metadata
            from ...priors.signature import check_prior_source

            meta = read_prior_metadata(prior)
            check_prior_source(prior, meta, model)
            layer = meta.get("layer")
            if not isinstance(layer, int):
                raise ValueError(f"prior {str(prior)!r} does not say which merge layer it was fitted for (metadata 'layer')")
            options["prior"] = {layer: prior}
            if prior_weight is not None:
                options["prior_weight"] = prior_weight
        if method == "tome":
            options.update(method="tome", tome_impl="batched")
        apply_quickmerge(model, default_schedule(num_layers) if schedule is None else schedule, **options)
        plan = base.quickmerge.plan
    batch = 2 if batch is None else int(batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dtype = PRECISIONS[precision]
    dim_batch = torch.export.Dim("batch", min=1, max=4096)
    if family.name == "vit":
        if seq_len is not None:
            raise ValueError(f"seq_len={seq_len}: a ViT's token count is fixed by its image size; it cannot be set")
        size, channels = base.config.image_size, base.config.num_channels

        def make(b: int | None, s: int | None, sd: int) -> tuple[torch.Tensor, ...]:
            return (image_batch(batch if b is None else b, size, channels, seed=sd).to(dtype),)

        input_names = ("pixel_values",)
        dynamic: dict[str, dict[int, Any]] = {"pixel_values": {0: dim_batch}}
        profile_dims = {"min": (1, None), "opt": (batch, None), "max": (max(batch, 8), None)}
        module_cls: type[_ExportBase] = VisionExport
    else:
        max_pos = int(getattr(base.config, "max_position_embeddings", getattr(base.config, "n_positions", 512)))
        seq_len = 32 if seq_len is None else int(seq_len)
        if not 4 <= seq_len <= max_pos:
            raise ValueError(f"seq_len must be in [4, {max_pos}], got {seq_len}")

        def make(b: int | None, s: int | None, sd: int) -> tuple[torch.Tensor, ...]:
            return _text_example(model, tokenizer, batch if b is None else b, seq_len if s is None else s, sd)

        input_names = ("input_ids", "attention_mask")
        dim_seq = torch.export.Dim("seq_len", min=4, max=max_pos)
        dynamic = {name: {0: dim_batch, 1: dim_seq} for name in input_names}
        # The declared profile (verified by convert, built by build) stops at PROFILE_MAX_TOKENS:
        # long-context models (SmolLM2: 8192 positions) would otherwise be checked at 8 x 8192.
        profile_dims = {"min": (1, 4), "opt": (batch, seq_len),
                        "max": (max(batch, 8), max(seq_len, min(max_pos, PROFILE_MAX_TOKENS)))}
        module_cls = TextExport
    make = _memory_checked(make, base.config, family.name, dtype, batch)
    example = make(None, None, seed)
    trace = example if batch >= 2 else make(2, None, seed)
    with torch.no_grad():
        out = model(**dict(zip(input_names, example)))
    output_names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    export_module = module_cls(model, output_names, debug_outputs).eval()
    merge_layers = tuple(plan.layers) if plan is not None else ()
    if debug_outputs and method == "quickmerge":
        output_names = output_names + [n for i in range(len(merge_layers)) for n in (f"merge{i}_assign", f"merge{i}_seeds")]

    def shape_of(name: str, b: int, s: int | None) -> tuple[int, ...]:
        t = example[input_names.index(name)]
        return (b, *t.shape[1:]) if s is None else (b, s)

    build_shapes = {
        name: ShapeProfile(*(shape_of(name, *profile_dims[k]) for k in ("min", "opt", "max"))) for name in input_names
    }
    declared = ((None, None),) + tuple(
        dict.fromkeys(v for k, v in profile_dims.items() if v != (batch, None if family.name == "vit" else seq_len))
    )

    def tokens_per_layer(*inputs: torch.Tensor) -> list[int]:
        if family.name == "vit":
            n = (base.config.image_size // base.config.patch_size) ** 2 + 1
        else:
            n = int(inputs[0].shape[1])
        patch = getattr(base, "quickmerge", None)
        if patch is None:
            return [n] * (num_layers + 1)
        with torch.no_grad(), recording(patch) as rec:
            model(**dict(zip(input_names, inputs)))
        after = {layer: int(info["mask"].shape[1]) for layer, info in rec.merges}  # P + K
        n = after.get(EMBED, n)  # an embed merge: layer 0 already runs on the merged tokens
        counts = []
        for i in range(num_layers):
            counts.append(n)
            n = after.get(i, n)
        return counts + [n]

    return LoadedModel(
        model=model, export_module=export_module, input_names=input_names, output_names=tuple(output_names),
        example_inputs=example, trace_inputs=trace, dynamic_shapes=dynamic, family=family.name, recipe=None,
        schedule=plan if plan is not None else MergeSchedule(), tolerances=dict(TOLERANCES),
        merge_layers=merge_layers, precision=precision, export_defaults=ExportDefaults(),
        build_shapes=build_shapes, tokens_per_layer=tokens_per_layer,
        sample_inputs=lambda batch=None, seq_len=None, seed=seed: make(batch, seq_len, seed),
        declared_shapes=declared, tokenizer=tokenizer,
        generation=_generation(model, family, dtype, tokenizer),
    )


def _generation(model: nn.Module, family: Any, dtype: torch.dtype, tokenizer: Any) -> Any:
    """The :class:`~.generation.HFGeneration` of a causal LM with its head (None otherwise)."""
    if family.causal is None or not hasattr(model, "lm_head"):
        return None
    from .generation import HFGeneration

    eos = getattr(tokenizer, "eos_token_id", None)
    return HFGeneration(model, dtype=dtype, eos_token_id=eos if isinstance(eos, int) else None)
