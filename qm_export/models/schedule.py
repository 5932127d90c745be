"""Merge schedules: which layers merge, how much, and with which QuickMerge++ options.

One parser, :func:`parse_schedule`, accepts every form users write:

- a single ratio ``0.5`` (or ``"0.5"``): one merge of that ratio in the first layer (layer 0);
- a per-layer list ``[1.0, 0.5, 1.0, 0.7]`` (``1.0`` = no merge in that layer);
- a mapping ``{1: 0.5, 4: 0.7}`` (string keys allowed, as TOML writes them);
- the CLI spelling ``"1:0.5,4:0.7"``.

A float in ``(0, 1]`` is a ``keep_ratio``; an int ``>= 1`` is an absolute ``keep``.

The key ``embed`` (``"embed:0.33"``, ``{"embed": 0.33}``, TOML ``{embed = 0.33}``) merges the
embeddings *before* layer 0, so that every layer runs on the merged tokens; it is stored as
layer :data:`EMBED` (``-1``), and ``-1`` is accepted for it too (``"-1:0.33"``), so that any
spelling that writes ``f"{layer}:{amount}"`` parses back to the same schedule.
:func:`layer_label` prints a layer index the way users write it (``embed`` for ``-1``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..merge.config import MODES, QuickMergeConfig

__all__ = ["LayerMerge", "MergeSchedule", "parse_schedule", "noop_entries", "SALIENCY_SOURCES", "EMBED", "EMBED_KEY", "layer_label"]

#: Where saliency comes from: the host layer's attention probabilities, or self-similarity.
SALIENCY_SOURCES = ("attention", "self")

#: The layer index of a merge on the embeddings, before layer 0.
EMBED = -1
#: How schedules spell :data:`EMBED`.
EMBED_KEY = "embed"


def layer_label(layer: int) -> str:
    """A merge layer as users write it: ``"embed"`` for :data:`EMBED` (-1), else the index."""
    return EMBED_KEY if layer == EMBED else str(layer)


@dataclass(frozen=True)
class LayerMerge:
    """One merge: inside ``layer`` (after its attention), keep ``keep`` tokens or ``keep_ratio``.

    ``layer == EMBED`` (-1): on the embeddings, before layer 0 (self-similarity saliency).
    """

    layer: int
    keep_ratio: float = 1.0
    keep: int | None = None

    @property
    def is_noop(self) -> bool:
        return self.keep is None and self.keep_ratio >= 1.0

    @property
    def is_embed(self) -> bool:
        """Whether this merge runs on the embeddings, before layer 0."""
        return self.layer == EMBED

    def spelling(self, exact: bool = False) -> str:
        """``"embed:0.33"``, ``"1:0.5"``, ``"4:12"``; ``exact`` writes the ratio's ``repr``."""
        amount = str(self.keep) if self.keep is not None else (repr(self.keep_ratio) if exact else f"{self.keep_ratio:g}")
        return f"{layer_label(self.layer)}:{amount}"


@dataclass(frozen=True)
class MergeSchedule:
    """The merges of a model and the options shared by its merge layers.

    Attributes:
        merges: the merging layers, ascending, no-ops removed.
        protect: leading tokens never merged (1 for a class token).
        mode: ``"global"`` or ``"causal"``.
        saliency: ``"attention"`` (host attention probabilities) or ``"self"`` (self-similarity).
        scales: number of layers whose attention (or hidden states) feed saliency: the merge
            layer and the ``scales - 1`` layers before it (multi-scale).
        options: further :class:`QuickMergeConfig` fields (``tau``, ``refine_iters``,
            ``prior_weight``, ...).
    """

    merges: tuple[LayerMerge, ...] = ()
    protect: int = 0
    mode: str = "global"
    saliency: str = "attention"
    scales: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.saliency not in SALIENCY_SOURCES:
            raise ValueError(f"saliency must be one of {SALIENCY_SOURCES}, got {self.saliency!r}")
        if isinstance(self.scales, bool) or not isinstance(self.scales, int) or self.scales < 1:
            raise ValueError(f"scales must be an int >= 1, got {self.scales!r}")
        bad = set(self.options) - {f.name for f in dataclasses.fields(QuickMergeConfig)}
        bad |= set(self.options) & {"keep", "keep_ratio", "protect", "mode"}
        if bad:
            raise ValueError(f"unknown or misplaced merge option(s): {sorted(bad)}")
        # Build one config eagerly so bad option values fail here, not in a forward pass.
        QuickMergeConfig(protect=self.protect, mode=self.mode, **self.options)  # type: ignore[arg-type]

    @property
    def layers(self) -> tuple[int, ...]:
        """Indices of the merging layers (``EMBED`` = -1 first when the embeddings merge)."""
        return tuple(m.layer for m in self.merges)

    @property
    def merges_embeddings(self) -> bool:
        """Whether a merge runs on the embeddings, before layer 0."""
        return any(m.is_embed for m in self.merges)

    def config_for(self, layer: int) -> QuickMergeConfig | None:
        """The :class:`QuickMergeConfig` of ``layer``, or None if it does not merge."""
        for m in self.merges:
            if m.layer == layer:
                return QuickMergeConfig(
                    keep=m.keep,
                    keep_ratio=m.keep_ratio,
                    protect=self.protect,
                    mode=self.mode,  # type: ignore[arg-type]
                    **self.options,
                )
        return None

    def check_layers(self, num_layers: int) -> None:
        """Raise ``ValueError`` if a merge names a layer the model does not have
        (``embed``, before layer 0, is every model's)."""
        for m in self.merges:
            if not EMBED <= m.layer < num_layers:
                raise ValueError(
                    f"merge schedule names layer {m.layer}, but the model has {num_layers} "
                    f"layers (0..{num_layers - 1}, or '{EMBED_KEY}' before layer 0)"
                )

    def replace(self, **changes: Any) -> "MergeSchedule":
        return dataclasses.replace(self, **changes)

    def token_counts(self, n_tokens: int, where: str = "") -> list[int]:
        """Tokens leaving each merge for ``n_tokens`` entering the model (merge order); raise
        ``ValueError`` for a merge that cannot do anything there, before any tracing.

        An absolute ``keep`` must be below the mergeable count ``N' = tokens - protect`` at its
        layer: ``keep >= N'`` keeps every token (``keep > N'`` fails in the graph). ``where``
        (e.g. ``" at sequence length 4"``) ends the message.
        """
        from ..merge.config import resolve_keep

        n, out = int(n_tokens), []
        for m in self.merges:
            mergeable = n - self.protect
            if m.keep is not None:
                if m.keep >= mergeable:
                    label = layer_label(m.layer)
                    lead = "the embeddings have" if m.is_embed else f"layer {label} has"
                    raise ValueError(
                        f"merge schedule entry '{m.spelling()}': keep={m.keep} tokens, but {lead} only {mergeable} "
                        f"mergeable tokens ({n} tokens, {self.protect} protected){where}, so nothing would merge; "
                        f"give a count below {mergeable} or a keep ratio such as '{label}:0.5'"
                    )
                n = self.protect + m.keep
            else:
                n = self.protect + int(resolve_keep(mergeable, self.config_for(m.layer)))
            out.append(n)
        return out

    def describe(self) -> str:
        """The CLI spelling, e.g. ``"embed:0.5,1:0.5,4:0.7"`` (empty when nothing merges)."""
        return ",".join(m.spelling() for m in self.merges)


def _amount(value: Any, where: str) -> tuple[float, int | None]:
    """A schedule entry -> ``(keep_ratio, keep)``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text.isdigit() else float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a keep ratio in (0, 1] or a token count >= 1, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: expected a keep ratio in (0, 1] or a token count >= 1, got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{where}: a token count must be >= 1, got {value!r}")
        return 1.0, int(value)
    v = float(value)
    if math.isnan(v) or not 0.0 < v <= 1.0:
        raise ValueError(f"{where}: a keep ratio must be in (0, 1], got {value!r}")
    return v, None


_LAYER_HELP = f"an index >= 0, or '{EMBED_KEY}' (a merge on the embeddings, before layer 0)"


def _layer(key: Any, where: str) -> int:
    """A schedule key -> layer index: an int >= 0, or ``"embed"`` / ``"-1"`` (:data:`EMBED`).

    ``"-1"`` is the spelling ``f"{layer}:{amount}"`` gives an embed merge, accepted so that such
    text parses back. An *int* ``-1`` in a mapping is refused: in Python it reads as "the last
    layer", which is not what it would do.
    """
    if isinstance(key, str):
        text = key.strip()
        if text == EMBED_KEY or text == str(EMBED):
            return EMBED
        if not text.isdigit():
            raise ValueError(f"{where}: the layer must be {_LAYER_HELP}, got {key!r}")
        key = int(text)
    if isinstance(key, bool) or not isinstance(key, numbers.Integral):
        raise TypeError(f"{where}: layer index must be an int >= 0 or '{EMBED_KEY}', got {key!r}")
    if key < 0:
        raise ValueError(
            f"{where}: layer index must be >= 0, got {key!r} (negative indices do not count from the end; "
            f"write '{EMBED_KEY}' for a merge on the embeddings before layer 0)"
        )
    return int(key)


def _entries(spec: Any) -> list[tuple[int, Any]]:
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise ValueError("merge schedule is empty; write e.g. '0.5', '1:0.5,4:0.7' or '[1.0,0.5]'")
        if ":" not in text and "," not in text:
            return [(0, text)]
        out = []
        for part in text.split(","):
            if ":" not in part:
                raise ValueError(f"merge schedule entry {part.strip()!r} must be LAYER:AMOUNT, e.g. '1:0.5'")
            layer, amount = part.split(":", 1)
            out.append((_layer(layer, f"merge schedule entry {part.strip()!r}"), amount))
        return out
    if isinstance(spec, Mapping):
        return [(_layer(k, f"merge schedule key {k!r}"), v) for k, v in spec.items()]
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        return [(0, spec)]
    if isinstance(spec, Iterable) and not isinstance(spec, (bytes, bytearray)):
        return list(enumerate(spec))
    raise TypeError(
        f"merge schedule must be a ratio, a per-layer list, a {{layer: amount}} mapping or a "
        f"'1:0.5,4:0.7' string, got {spec!r}"
    )


def noop_entries(spec: str) -> list[str]:
    """The entries of a CLI schedule string that merge nothing: a keep ratio of 1.0 (``"1:1.0"``,
    or a lone ``"1.0"``), which :func:`parse_schedule` drops. ``"1:1"`` (an int: keep one
    token) is not one. A per-layer list (``"[1.0,0.5]"``, where 1.0 means "this layer does not
    merge") is not checked. Entries that do not parse are left to :func:`parse_schedule`."""
    text = spec.strip()
    if not text or text.startswith("["):
        return []
    try:
        entries = _entries(text)
    except (TypeError, ValueError):
        return []
    out = []
    for (layer, amount), part in zip(entries, text.split(",") if ":" in text or "," in text else [text]):
        try:
            ratio, keep = _amount(amount, "")
        except (TypeError, ValueError):
            continue
        if keep is None and ratio >= 1.0:
            out.append(part.strip())
    return out


def parse_schedule(
    spec: Any,
    *,
    num_layers: int | None = None,
    protect: int = 0,
    mode: str = "global",
    saliency: str = "attention",
    scales: int = 1,
    **options: Any,
) -> MergeSchedule:
    """Parse any schedule form into a :class:`MergeSchedule` (see the module docstring).

    Args:
        spec: the schedule, or an existing :class:`MergeSchedule` (returned as is; the
            options below are then ignored).
        num_layers: if given, layers outside ``[0, num_layers)`` raise ``ValueError``.
        protect, mode, saliency, scales, **options: shared merge options.
    """
    if isinstance(spec, MergeSchedule):
        schedule = spec
    else:
        entries = _entries(spec)
        seen: dict[int, LayerMerge] = {}
        for layer, value in entries:
            if layer in seen:
                raise ValueError(f"merge schedule names layer {layer_label(layer)} twice")
            where = f"merge schedule layer {layer}" if layer != EMBED else f"merge schedule entry '{EMBED_KEY}' (before layer 0)"
            ratio, keep = _amount(value, where)
            seen[layer] = LayerMerge(layer, ratio, keep)
        merges = tuple(m for _, m in sorted(seen.items()) if not m.is_noop)
        schedule = MergeSchedule(merges, protect, mode, saliency, scales, dict(options))
    if num_layers is not None:
        schedule.check_layers(num_layers)
    return schedule
