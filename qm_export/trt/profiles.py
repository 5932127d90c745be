"""Optimization profiles: where they come from, how they are parsed, and how they are checked.

A profile gives each network input three shapes, ``min <= opt <= max`` elementwise. The
sources, in priority order (see :func:`resolve_profile`): ``--shapes``, a recipe's
``[build.shapes.<input>]`` tables, the ONNX metadata key ``qm_export.profile`` written by
``convert``, and the static shapes of the graph's inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = [
    "InputShape",
    "ShapeRange",
    "Profile",
    "PROFILE_METADATA_KEY",
    "parse_shapes",
    "profile_from_mapping",
    "profile_from_recipe",
    "profile_from_metadata",
    "graph_input_shapes",
    "validate_profile",
    "resolve_profile",
]

PROFILE_METADATA_KEY = "qm_export.profile"

#: A graph input's shape: ints for static dims, ``None`` for dynamic ones.
InputShape = tuple[int | None, ...]

_DIMS_RE = re.compile(r"^\d+(x\d+)*$")


@dataclass(frozen=True)
class ShapeRange:
    """The ``min``/``opt``/``max`` shapes of one input (tuples of ints)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class Profile:
    """One optimization profile: input name -> :class:`ShapeRange`; ``source`` says where it came from."""

    shapes: dict[str, ShapeRange]
    source: str = "shapes"
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "inputs": {k: v.as_dict() for k, v in self.shapes.items()}}


def _parse_dims(text: str, name: str, which: str) -> tuple[int, ...]:
    text = text.strip()
    if not _DIMS_RE.match(text):
        raise ValueError(
            f"--shapes: {which} shape {text!r} of input {name!r} is not dims separated by 'x' (for example 4x128)"
        )
    return tuple(int(d) for d in text.split("x"))


def parse_shapes(specs: Iterable[str]) -> Profile:
    """Parse ``--shapes`` values: ``name:min,opt,max`` with dims separated by ``x``.

    ``input_ids:1x8,4x128,8x256``; a single shape (``name:4x128``) means min = opt = max.
    A value may hold several inputs separated by whitespace or ``;``; the option may repeat.
    Names may contain ``:`` (the last ``:`` splits name from shapes).
    """
    shapes: dict[str, ShapeRange] = {}
    for spec in specs:
        for item in re.split(r"[;\s]+", spec.strip()):
            if not item:
                continue
            name, sep, rest = item.rpartition(":")
            if not sep or not name:
                raise ValueError(
                    f"--shapes: {item!r} is not of the form name:min,opt,max (for example x:1x8,4x128,8x256)"
                )
            parts = rest.split(",")
            if len(parts) == 1:
                parts = parts * 3
            if len(parts) != 3:
                raise ValueError(f"--shapes: {item!r} needs one shape or three (min,opt,max), got {len(parts)}")
            if name in shapes:
                raise ValueError(f"--shapes: input {name!r} is given more than once")
            dims = [_parse_dims(p, name, w) for p, w in zip(parts, ("min", "opt", "max"))]
            shapes[name] = ShapeRange(*dims)
    if not shapes:
        raise ValueError("--shapes: no input shapes given")
    return Profile(shapes, source="shapes")


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ValueError(f"{where} must be a list of ints, got {value!r}")
    return tuple(value)


def profile_from_mapping(data: Mapping[str, Any], source: str, where: str) -> Profile:
    """Build a profile from ``{"input": {"min": [...], "opt": [...], "max": [...]}}``."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where}: expected a non-empty table of inputs, got {data!r}")
    shapes: dict[str, ShapeRange] = {}
    for name, spec in data.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}.{name}: expected a table with min/opt/max, got {spec!r}")
        missing = [k for k in ("min", "opt", "max") if k not in spec]
        if missing:
            raise ValueError(f"{where}.{name}: missing {', '.join(missing)}")
        shapes[str(name)] = ShapeRange(*(_int_list(spec[k], f"{where}.{name}.{k}") for k in ("min", "opt", "max")))
    return Profile(shapes, source=source)


def _load_recipe_raw(recipe: str) -> dict[str, Any]:
    """The parsed TOML of a recipe: a path to a ``.toml`` file is read with tomllib; a name
    goes through ``qm_export.recipes.load_recipe`` (its ``.raw``)."""
    path = Path(recipe)
    if path.is_file():
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--recipe: {recipe!r} is not valid TOML: {exc}") from exc
    try:
        from qm_export.recipes import load_recipe  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ValueError(
            f"--recipe: {recipe!r} is not a file, and recipe names need qm_export.recipes, which is not installed"
        ) from exc
    try:
        return dict(load_recipe(recipe).raw)
    except (KeyError, FileNotFoundError) as exc:
        raise ValueError(f"--recipe: no recipe {recipe!r} ({exc})") from exc


def profile_from_recipe(recipe: str) -> Profile:
    """The profile in a recipe's ``[build.shapes.<input>]`` tables."""
    raw = _load_recipe_raw(recipe)
    shapes = raw.get("build", {}).get("shapes") if isinstance(raw.get("build"), Mapping) else None
    if shapes is None:
        raise ValueError(f"--recipe: {recipe!r} has no [build.shapes.<input>] tables")
    return profile_from_mapping(shapes, "recipe", "[build.shapes]")


def profile_from_metadata(metadata: Mapping[str, str]) -> Profile | None:
    """The profile in the ONNX metadata key ``qm_export.profile`` (JSON), or ``None``."""
    text = metadata.get(PROFILE_METADATA_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ONNX metadata {PROFILE_METADATA_KEY!r} is not valid JSON: {exc}") from exc
    return profile_from_mapping(data, "metadata", f"metadata {PROFILE_METADATA_KEY}")


def graph_input_shapes(model: Any) -> dict[str, InputShape]:
    """The real inputs of an ``onnx.ModelProto`` (initializers excluded) and their shapes."""
    initializers = {t.name for t in model.graph.initializer}
    out: dict[str, InputShape] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out


def validate_profile(profile: Profile, inputs: Mapping[str, InputShape]) -> Profile:
    """Check ``profile`` against the graph inputs and complete it with the static ones.

    Errors (``ValueError`` naming input and value, and ``--shapes`` when the profile came from
    it): unknown input names; a dynamic input without shapes; a rank that differs from the
    graph; a static dim that differs; a dim that is not positive; ``min <= opt <= max``
    broken at any position.
    """
    try:
        return _validate_profile(profile, inputs)
    except ValueError as err:
        if profile.source == "shapes" and "--shapes" not in str(err):
            raise ValueError(f"--shapes: {err}") from None
        raise


def _validate_profile(profile: Profile, inputs: Mapping[str, InputShape]) -> Profile:
    unknown = sorted(set(profile.shapes) - set(inputs))
    if unknown:
        raise ValueError(
            f"profile ({profile.source}) names input(s) {', '.join(map(repr, unknown))} that the model does not have; "
            f"its inputs are {', '.join(map(repr, inputs)) or '(none)'}"
        )
    completed: dict[str, ShapeRange] = {}
    for name, graph_shape in inputs.items():
        rng = profile.shapes.get(name)
        if rng is None:
            if any(d is None for d in graph_shape):
                raise ValueError(
                    f"input {name!r} has dynamic shape {_show(graph_shape)} and the profile ({profile.source}) "
                    "gives it no "
                    f"shapes; pass --shapes {name}:MIN,OPT,MAX"
                )
            static = tuple(int(d) for d in graph_shape)  # type: ignore[arg-type]
            completed[name] = ShapeRange(static, static, static)
            continue
        for which in ("min", "opt", "max"):
            dims = getattr(rng, which)
            if len(dims) != len(graph_shape):
                raise ValueError(
                    f"input {name!r}: {which} shape {list(dims)} has rank {len(dims)} but the model's input "
                    f"{_show(graph_shape)} has rank {len(graph_shape)}"
                )
            for i, (d, g) in enumerate(zip(dims, graph_shape)):
                if d <= 0:
                    raise ValueError(f"input {name!r}: {which} shape {list(dims)} has non-positive dim {d} at axis {i}")
                if g is not None and d != g:
                    raise ValueError(
                        f"input {name!r}: {which} shape {list(dims)} has {d} at axis {i}, "
                        f"where the model's dim is static {g}"
                    )
        for i, (lo, mid, hi) in enumerate(zip(rng.min, rng.opt, rng.max)):
            if not lo <= mid <= hi:
                raise ValueError(
                    f"input {name!r}: min {list(rng.min)}, opt {list(rng.opt)}, max {list(rng.max)} break "
                    f"min <= opt <= max at axis {i} ({lo}, {mid}, {hi})"
                )
        completed[name] = rng
    return Profile(completed, source=profile.source, notes=profile.notes)


def _show(shape: InputShape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def resolve_profile(
    model: Any,
    shapes: Iterable[str] | None = None,
    recipe: str | None = None,
) -> Profile:
    """Pick the profile by priority (``shapes``, ``recipe``, ONNX metadata, static shapes) and validate it."""
    inputs = graph_input_shapes(model)
    shapes = list(shapes or [])
    if shapes:
        profile = parse_shapes(shapes)
    elif recipe:
        profile = profile_from_recipe(recipe)
    else:
        metadata = {p.key: p.value for p in model.metadata_props}
        profile = profile_from_metadata(metadata) or Profile({}, source="static")
    return validate_profile(profile, inputs)
