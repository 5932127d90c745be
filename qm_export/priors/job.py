"""Everything ``qm-export fit-prior`` does, as library calls: resolve a source, build sample
inputs, capture the merge layer's hidden states, train, and describe the result.

Sources: a Hugging Face model folder (text models read ``pydoc_data`` text tokenised with the
folder's tokenizer, or a deterministic hash tokenisation when it has none; vision models read
scikit-learn digits), or a recipe (``qm_export.models.load_source``: text families read
``pydoc_data`` hashed into their vocabulary, vision and video families their seeded sample
inputs; the merge layer's input is captured with ``record_merges``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fit import FitResult, capture_merge_inputs, train_prior
from .signature import SIGNATURE_KEY, weights_signature
from .samples import collate_chunks, hash_tokenizer, hf_tokenizer, image_batch, pydoc_documents, text_chunks

__all__ = ["PriorSource", "open_prior_source", "hf_sample_batches", "run_fit"]


@dataclass
class PriorSource:
    """A model ready for capture: ``capture(batches, layer)``, its batches, where to save."""

    description: str
    layer: int
    schedule: str
    batches: list[dict[str, torch.Tensor]]
    capture: Callable[[list[dict[str, torch.Tensor]], int], list[torch.Tensor]]
    default_output: Path
    #: :func:`~qm_export.priors.signature.weights_signature` of the model fitted on
    signature: dict[str, Any] | None = None


def hf_sample_batches(
    model: Any, tokenizer: Any, family: str, *, count: int, batch_size: int = 16, seed: int = 0,
    documents: list[str] | None = None, min_tokens: int = 128, max_tokens: int = 256,
) -> list[dict[str, torch.Tensor]]:
    """``count`` sample inputs for a Hugging Face model, batched: text chunks or digit images."""
    config = model.config
    if family == "vit":
        images = image_batch(count, config.image_size, config.num_channels, seed=seed)
        dtype = next(model.parameters()).dtype
        return [{"pixel_values": images[i : i + batch_size].to(dtype)} for i in range(0, count, batch_size)]
    tok = hf_tokenizer(tokenizer) if tokenizer is not None else hash_tokenizer(config.vocab_size)
    limit = int(getattr(config, "max_position_embeddings", getattr(config, "n_positions", max_tokens)))
    chunks = text_chunks(documents or pydoc_documents(), tok, min_tokens=min(min_tokens, limit), max_tokens=min(max_tokens, limit), seed=seed)
    random.Random(seed).shuffle(chunks)
    chunks = chunks[:count]
    chunks.sort(key=len)  # batches of similar length pad less
    return [collate_chunks(chunks[i : i + batch_size], tok.pad_id) for i in range(0, len(chunks), batch_size)]


def open_prior_source(
    source: str, *, layer: int | None, schedule: str | None, samples: int, seed: int, batch_size: int = 16,
) -> PriorSource:
    """Load ``source`` (a Hugging Face folder or a recipe name) and prepare the capture."""
    path = Path(source)
    if path.is_dir():
        return _hf_source(path, layer=layer, schedule=schedule, samples=samples, seed=seed, batch_size=batch_size)
    return _recipe_source(source, layer=layer, schedule=schedule, samples=samples, seed=seed, batch_size=batch_size)


def _recipe_batches(loaded: Any, *, count: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Text families: ``pydoc_data`` chunks hashed into the model's vocabulary; the others:
    the family's seeded sample inputs (random images / clips)."""
    names = list(loaded.input_names)
    if names == ["input_ids", "attention_mask"]:
        config = loaded.model.config
        tok = hash_tokenizer(config.vocab_size)
        limit = int(getattr(config, "max_positions", 256))
        chunks = text_chunks(pydoc_documents(), tok, min_tokens=min(16, limit), max_tokens=limit, seed=seed)
        random.Random(seed).shuffle(chunks)
        chunks = sorted(chunks[:count], key=len)
        return [collate_chunks(chunks[i : i + batch_size], tok.pad_id) for i in range(0, len(chunks), batch_size)]
    batches = []
    for i in range(0, count, batch_size):
        inputs = loaded.sample_inputs(batch=min(batch_size, count - i), seed=seed + i)
        batches.append(dict(zip(names, inputs)))
    return batches


def _recipe_capture(loaded: Any) -> Callable[[list[dict[str, torch.Tensor]], int], list[torch.Tensor]]:
    """Capture the mergeable real tokens a reference model's merge at ``layer`` receives."""
    from ..merge.recording import record_merges

    def capture(batches: list[dict[str, torch.Tensor]], layer: int) -> list[torch.Tensor]:
        index = list(loaded.merge_layers).index(layer)
        sequences = []
        for batch in batches:
            with torch.no_grad(), record_merges() as records:
                loaded.export_module(*(batch[n] for n in loaded.input_names))
            rec = records[index]
            for b in range(rec.tokens.shape[0]):
                seq = rec.tokens[b][rec.real[b]].float().cpu()
                if seq.shape[0] >= 2:
                    sequences.append(seq)
        return sequences

    return capture


def _recipe_source(source: str, *, layer: int | None, schedule: str | None, samples: int, seed: int,
                   batch_size: int) -> PriorSource:
    from ..models import load_source

    if layer is not None and schedule is None:
        schedule = f"{layer}:0.5"
    loaded = load_source(source, schedule=schedule)
    layers = tuple(loaded.merge_layers)
    if not layers:
        raise ValueError(f"recipe {source!r} has no merge layer; pass --layer")
    chosen = layers[0] if layer is None else layer
    if chosen not in layers:
        raise ValueError(f"--layer {chosen} is not a merge layer of {source!r} (merge layers: {list(layers)}); "
                         f"pass a schedule that merges there")
    # Next to a recipe file the user gave; in the working folder for a shipped recipe name.
    folder = Path(source).parent if str(source).endswith(".toml") else Path.cwd()
    return PriorSource(
        description=f"recipe {source}", layer=chosen, schedule=loaded.schedule.describe(),
        batches=_recipe_batches(loaded, count=samples, batch_size=batch_size, seed=seed),
        capture=_recipe_capture(loaded),
        default_output=folder / f"{Path(source).stem}-prior-layer{chosen}.safetensors",
        signature=weights_signature(loaded.model),
    )


def _hf_source(path: Path, *, layer: int | None, schedule: str | None, samples: int, seed: int, batch_size: int) -> PriorSource:
    from ..adapters.hf import apply_quickmerge, load_hf_model
    from ..adapters.hf.patch import resolve_base
    from ..adapters.hf.source import default_schedule

    model, tokenizer = load_hf_model(path)
    base, family = resolve_base(model)
    n_layers = len(family.layers(base))
    if layer is not None and not 0 <= layer < n_layers:
        raise ValueError(f"--layer must be in [0, {n_layers - 1}] for {path}, got {layer}")
    if schedule is None:
        spec: Any = {layer: 0.5} if layer is not None else default_schedule(n_layers)
    else:
        spec = schedule
    apply_quickmerge(model, spec)
    plan = base.quickmerge.plan
    if layer is None:
        if not plan.layers:
            raise ValueError(f"schedule {schedule!r} merges nowhere; pass --layer")
        layer = plan.layers[0]
    batches = hf_sample_batches(model, tokenizer, family.name, count=samples, batch_size=batch_size, seed=seed)
    return PriorSource(
        description=str(path), layer=layer, schedule=plan.describe(), batches=batches,
        capture=lambda b, layer_: capture_merge_inputs(model, b, layer_),
        default_output=path / f"qm-prior-layer{layer}.safetensors",
        signature=weights_signature(model),
    )


def run_fit(
    src: PriorSource, *, steps: int, batch_size: int, lr: float, seed: int,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[FitResult, dict[str, Any]]:
    """Capture and train; returns the result and the metadata to save with the prior."""
    sequences = src.capture(src.batches, src.layer)
    result = train_prior(sequences, steps=steps, batch_size=batch_size, lr=lr, seed=seed, callback=callback)
    meta = {
        "layer": src.layer, "source": src.description, "schedule": src.schedule, "steps": steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "sequences": result.sequences,
        "train_loss_start": result.train_loss_start, "train_loss_end": result.train_loss_end,
        "val_loss_start": result.val_loss_start, "val_loss_end": result.val_loss_end,
    }
    if src.signature is not None:
        meta[SIGNATURE_KEY] = src.signature
    return result, meta
