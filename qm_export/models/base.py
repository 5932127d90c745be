"""What every reference family shares: the geometry config, the output type, the base module.

A family subclasses :class:`MergingModel`, declares its class attributes (``family``,
``protect``, ``mode``, input and output names, whether the sequence length is dynamic) and
implements ``_build`` (embeddings and heads), ``forward`` and ``example_inputs``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..merge.quickmerge import MergeInfo
from .schedule import MergeSchedule, parse_schedule
from .stack import LayerCache, MergingStack, check_method, seeded

__all__ = ["TransformerConfig", "ModelOutput", "MergingModel", "KVCache"]


@dataclass(frozen=True)
class TransformerConfig:
    """Geometry shared by every family.

    Attributes:
        dim: width ``D``; depth: layers; heads: attention heads (``D % heads == 0``);
        mlp_ratio: MLP hidden width over ``D``; layer_norm_eps: LayerNorm epsilon.
    """

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.dim * self.mlp_ratio))

    def positive_ints(self) -> tuple[str, ...]:
        """Names of the fields that must be ints ``>= 1`` (families extend this)."""
        return ("dim", "depth", "heads")

    def validate(self) -> None:
        """Raise ``TypeError``/``ValueError`` naming the field and value."""
        for name in self.positive_ints():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{type(self).__name__}.{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"{type(self).__name__}: dim={self.dim} must be divisible by heads={self.heads}")
        for name in ("mlp_ratio", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a number > 0, got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "config") -> "TransformerConfig":
        """Build from a mapping; unknown keys raise ``ValueError`` naming them and ``where``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; expected some of {sorted(names)}")
        return cls(**dict(values))


@dataclass
class KVCache:
    """The merged KV cache of a causal LM: one :class:`LayerCache` per layer and, per row,
    the position ``(B,)`` int64 the next token takes."""

    layers: list[LayerCache]
    next_position: torch.Tensor


@dataclass
class ModelOutput:
    """A family's result.

    - ``outputs``: the family's named outputs, in contract order (``out["logits"]`` works).
    - ``merges``: quickmerge's info of every merge, in layer order.
    - ``tokens``: tokens entering each layer, then the number leaving the last.
    - ``cache``: the causal LM's :class:`KVCache`; ``attentions``: see ``StackOutput``.
    """

    outputs: dict[str, torch.Tensor]
    merges: list[MergeInfo] = field(default_factory=list)
    tokens: list[Any] = field(default_factory=list)
    cache: KVCache | None = None
    attentions: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]


class MergingModel(nn.Module):
    """Base of the reference families.

    Args:
        config: the family's config dataclass (or a mapping of its fields).
        schedule: a :class:`MergeSchedule`, or anything :func:`parse_schedule` accepts
            (None = no merge).
        merge_options: shared merge options for a parsed schedule (``saliency``, ``scales``,
            ``tau``, ``prior_weight``, ...); ``protect`` and ``mode`` are the family's.
        prior_config: ``AutoregressivePrior`` arguments when ``prior_weight > 0``.
        seed: seed of the random init.
        method: ``"quickmerge"`` (default) or ``"tome"``: the ToMe baseline at the same layers
            and token counts (refused for causal-mode families and with a prior).
    """

    family: ClassVar[str]
    config_class: ClassVar[type[TransformerConfig]]
    protect: ClassVar[int] = 0
    mode: ClassVar[str] = "global"
    norm_first: ClassVar[bool] = True
    input_names: ClassVar[tuple[str, ...]]
    #: whether the token count follows an input's length (text) or is fixed by the config.
    dynamic_sequence: ClassVar[bool] = False

    def __init__(
        self,
        config: TransformerConfig | Mapping[str, Any],
        schedule: Any = None,
        *,
        merge_options: Mapping[str, Any] | None = None,
        prior_config: Mapping[str, int] | None = None,
        seed: int = 0,
        method: str = "quickmerge",
    ) -> None:
        super().__init__()
        if isinstance(config, Mapping):
            config = self.config_class.from_mapping(config)
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        self.prior_config = dict(prior_config or {})
        sched = self.make_schedule(schedule, config.depth, merge_options)
        self.check_method(method, sched)
        with seeded(seed):
            self._build()
            self.stack = MergingStack(
                config.dim, config.depth, config.heads, config.mlp_hidden,
                norm_first=self.norm_first, eps=config.layer_norm_eps,
                causal=self.mode == "causal", schedule=sched,
                prior_config=self.prior_config, seed=seed, method=method,
            )
            self._build_head()

    @classmethod
    def make_schedule(cls, schedule: Any, depth: int, merge_options: Mapping[str, Any] | None = None) -> MergeSchedule:
        """Parse ``schedule`` with this family's ``protect``/``mode``; check it fits ``depth``."""
        options = dict(merge_options or {})
        if isinstance(schedule, MergeSchedule):
            if options:
                raise ValueError("merge_options cannot be combined with a MergeSchedule; set them on the schedule")
            if (schedule.protect, schedule.mode) != (cls.protect, cls.mode):
                raise ValueError(
                    f"family {cls.family!r} merges with protect={cls.protect}, mode={cls.mode!r}; "
                    f"the schedule has protect={schedule.protect}, mode={schedule.mode!r}"
                )
            schedule.check_layers(depth)
            return schedule
        for key in ("protect", "mode"):
            if key in options:
                raise ValueError(f"merge option {key!r} is fixed by family {cls.family!r}; remove it")
        if schedule is None:
            return MergeSchedule((), cls.protect, cls.mode, **_schedule_fields(options))
        return parse_schedule(schedule, num_layers=depth, protect=cls.protect, mode=cls.mode, **options)

    @classmethod
    def check_method(cls, method: str, schedule: MergeSchedule | None = None) -> None:
        """Refuse an unknown merge ``method``, and ``"tome"`` where this family cannot use it
        (a causal-mode family: ToMe's bipartite matching ignores token order; a prior)."""
        sched = schedule if schedule is not None else MergeSchedule((), cls.protect, cls.mode)
        check_method(method, sched, causal=cls.mode == "causal", what=f"family {cls.family!r}")

    @property
    def schedule(self) -> MergeSchedule:
        return self.stack.schedule

    @property
    def method(self) -> str:
        """``"quickmerge"`` or ``"tome"``."""
        return self.stack.method

    @property
    def merge_layers(self) -> tuple[int, ...]:
        return self.schedule.layers

    def _build(self) -> None:
        """Create the embeddings (runs under the seeded RNG, before the layers)."""
        raise NotImplementedError

    def _build_head(self) -> None:
        """Create the final norm and heads (after the layers)."""
        raise NotImplementedError

    def with_schedule(self, schedule: Any, merge_options: Mapping[str, Any] | None = None) -> "MergingModel":
        """The same weights under another schedule (a new module; priors are dropped or new)."""
        twin = type(self)(self.config, schedule, merge_options=merge_options,
                          prior_config=self.prior_config, seed=self.seed, method=self.method)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("stack.priors.")}
        missing, unexpected = twin.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith("stack.priors.")]
        if missing or unexpected:
            raise RuntimeError(f"weights do not carry over: missing {missing}, unexpected {unexpected}")
        return twin.to(next(self.parameters()).dtype).train(self.training)

    def without_merges(self) -> "MergingModel":
        """The same weights with no merge layer: the baseline every speed-up is measured against."""
        return self.with_schedule(None, {"saliency": self.schedule.saliency, "scales": self.schedule.scales})

    def output_names(self) -> tuple[str, ...]:
        """Names of :meth:`flat_outputs`, in order."""
        raise NotImplementedError

    def flat_outputs(self, out: ModelOutput) -> tuple[torch.Tensor, ...]:
        """The export view's outputs: ``out.outputs`` in :meth:`output_names` order."""
        return tuple(out.outputs[name] for name in self.output_names())

    def example_inputs(self, shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Inputs of the given shapes (``input_names`` order), drawn from ``generator``."""
        raise NotImplementedError


def _schedule_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """Split merge options into :class:`MergeSchedule` fields (``saliency``, ``scales``, ``options``)."""
    rest = dict(options)
    fields: dict[str, Any] = {}
    for key in ("saliency", "scales"):
        if key in rest:
            fields[key] = rest.pop(key)
    fields["options"] = rest
    return fields
