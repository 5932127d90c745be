"""What an exported model was made from, written into its ONNX metadata by ``convert``.

``validate``, ``profile`` and ``run`` read it back to rebuild the torch reference without
being told the source: the same recipe or folder, schedule, method, precision, seed (recipes
are seeded, so the same weights), prior and example shape. Keys (``metadata_props``):

| key | value |
| --- | --- |
| ``qm_export.source`` | the SOURCE as given (recipe name, ``.toml`` path or folder) |
| ``qm_export.source_path`` | its absolute path when SOURCE is a file or folder, else empty |
| ``qm_export.provenance`` | JSON: schedule, no_merge, method, precision, seed, batch, seq_len, prior, prior_weight, inputs; weights (a folder's weight file format: safetensors, pickle (weights_only), gguf) |

A model without these keys (not made by ``convert``, or edited by a tool that drops
metadata) has no provenance: callers then need ``--source`` and say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Provenance", "ProvenanceError", "read_metadata", "schedule_spelling", "PROVENANCE_KEY"]

PROVENANCE_KEY = "qm_export.provenance"


class ProvenanceError(ValueError):
    """The model's metadata cannot rebuild its source (missing, or the source moved)."""


def schedule_spelling(schedule: Any) -> str:
    """A :class:`MergeSchedule` in the CLI spelling with exact ratios (``repr``, not ``%g``),
    so that parsing it back gives the same ``K`` rule."""
    parts = []
    for m in schedule.merges:
        parts.append(f"{m.layer}:{m.keep}" if m.keep is not None else f"{m.layer}:{m.keep_ratio!r}")
    return ",".join(parts)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (external data is not read).

    Raises:
        FileNotFoundError: no such file. ValueError: not an ONNX model.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    try:
        model = onnx.load(os.fspath(p), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise ValueError(f"{str(p)!r} is not an ONNX model ({type(err).__name__}: {err})") from None
    return {prop.key: prop.value for prop in model.metadata_props}


@dataclass
class Provenance:
    """How ``convert`` built a model; :meth:`load` builds the same model again in torch."""

    source: str
    source_path: str | None = None
    schedule: str | None = None
    no_merge: bool = False
    method: str = "quickmerge"
    precision: str = "fp32"
    seed: int = 0
    batch: int | None = None
    seq_len: int | None = None
    prior: str | None = None
    prior_weight: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    def to_metadata(self) -> dict[str, str]:
        data = asdict(self)
        source, source_path = data.pop("source"), data.pop("source_path")
        if data["weights"] is None:  # a recipe: no weight files
            del data["weights"]
        return {
            "qm_export.source": source,
            "qm_export.source_path": source_path or "",
            PROVENANCE_KEY: json.dumps(data, separators=(",", ":"), sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "Provenance | None":
        """The provenance in ``meta``, or None when the model has none.

        Raises:
            ProvenanceError: the keys are there but unreadable.
        """
        if "qm_export.source" not in meta or PROVENANCE_KEY not in meta:
            return None
        try:
            data = json.loads(meta[PROVENANCE_KEY])
            known = {f for f in cls.__dataclass_fields__} - {"source", "source_path"}
            data = {k: v for k, v in data.items() if k in known}
            return cls(source=meta["qm_export.source"], source_path=meta.get("qm_export.source_path") or None, **data)
        except (json.JSONDecodeError, TypeError) as err:
            raise ProvenanceError(f"the model's {PROVENANCE_KEY} metadata is unreadable: {err}") from None

    @classmethod
    def of_file(cls, path: str | os.PathLike[str]) -> "Provenance | None":
        """The provenance of an ONNX file (None when it has none)."""
        return cls.from_metadata(read_metadata(path))

    def resolved_source(self) -> str:
        """The source to load: the recorded absolute path when SOURCE was a path.

        Raises:
            ProvenanceError: the recorded file or folder no longer exists.
        """
        if self.source_path:
            if not Path(self.source_path).exists():
                raise ProvenanceError(
                    f"the model was made from {self.source_path!r}, which no longer exists (moved or deleted); "
                    "pass --source with its new location"
                )
            return self.source_path
        return self.source

    def load(self, *, debug_outputs: bool = True, source: str | None = None) -> Any:
        """Build the torch model this provenance describes (a :class:`LoadedModel`).

        Args:
            debug_outputs: append every merge's ``assign``/``seeds`` outputs.
            source: load this source instead of the recorded one (the rest stays).
        """
        from ..models import load_source

        options: dict[str, Any] = dict(
            schedule=None if self.no_merge else self.schedule or None, no_merge=self.no_merge,
            precision=self.precision, batch=self.batch, seq_len=self.seq_len,
            debug_outputs=debug_outputs, seed=self.seed,
        )
        if self.method != "quickmerge":
            options["method"] = self.method
        if self.prior:
            if not Path(self.prior).is_file():
                raise ProvenanceError(f"the model's prior {self.prior!r} no longer exists; pass --source and re-convert")
            options.update(prior=self.prior, prior_weight=self.prior_weight)
        return load_source(source if source is not None else self.resolved_source(), **options)


def provenance_of(options: Any, loaded: Any) -> Provenance:
    """The provenance ``convert`` records for ``options`` (a ``ConvertOptions``) and the
    :class:`LoadedModel` it built."""
    src = str(options.source)
    path = Path(src).expanduser()
    source_path = str(path.resolve()) if path.exists() else None
    return Provenance(
        source=src,
        source_path=source_path,
        schedule=None if options.no_merge else schedule_spelling(loaded.schedule),
        no_merge=bool(options.no_merge),
        method=str(getattr(options, "method", "quickmerge") or "quickmerge"),
        precision=str(loaded.precision),
        seed=int(options.seed),
        batch=options.batch,
        seq_len=options.seq_len,
        prior=str(Path(options.prior).resolve()) if options.prior is not None else None,
        prior_weight=options.prior_weight,
        inputs={n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                for n, t in zip(loaded.input_names, loaded.example_inputs)},
        weights=_weights_format(path),
    )


def _weights_format(path: Path) -> str | None:
    """The weight file format a Hugging Face folder was loaded from (None for a recipe)."""
    if not path.is_dir():
        return None
    from ..adapters.hf.trust import weights_format

    return weights_format(path)


__all__ += ["provenance_of"]
