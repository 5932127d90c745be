"""Model recipes: TOML files that name a family, its size, a merge schedule and export settings.

The shipped recipes live in the repository's top-level ``models/`` folder, installed as the
data package ``qm_export_recipes``. :func:`load_recipe` takes a recipe name (``"vit-tiny"``)
or a path to a ``.toml`` file; :func:`list_recipes` lists the shipped ones. Every key is
checked: an error names the file and the dotted key (schema: ``docs/models.md``).
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "RecipeError", "InputSpec", "ShapeProfile", "Tolerance", "ExportDefaults", "MergeSpec",
    "Recipe", "load_recipe", "list_recipes", "recipe_names", "PRECISIONS", "MERGE_IMPLS",
]

PRECISIONS = ("fp32", "fp16", "bf16")
MERGE_IMPLS = ("plugin", "inline")
INPUT_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
_RECIPE_PACKAGE = "qm_export_recipes"
_SECTIONS = {"model", "merge", "inputs", "export", "validation", "build"}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``dtype``, an example ``shape`` and ``dynamic`` axes (name -> axis)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: Mapping[str, int]

    def axis(self, dim_name: str) -> int | None:
        """The axis named ``dim_name`` (e.g. ``"batch"``), or None."""
        return self.dynamic.get(dim_name)


@dataclass(frozen=True)
class ShapeProfile:
    """A TensorRT optimisation profile of one input: ``min`` <= ``opt`` <= ``max`` shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Tolerance:
    """Largest allowed absolute error (and optional relative error) against torch fp32."""

    max_abs: float
    max_rel: float | None = None


@dataclass(frozen=True)
class ExportDefaults:
    """``opset``, ``precision`` (fp32/fp16/bf16) and ``merge_impl`` (plugin/inline)."""

    opset: int = 20
    precision: str = "fp32"
    merge_impl: str = "plugin"


@dataclass(frozen=True)
class MergeSpec:
    """The ``[merge]`` table: ``schedule`` as written, ``saliency``, ``scales``, QuickMerge
    ``options`` and the ``prior`` geometry (``AutoregressivePrior`` arguments)."""

    schedule: Any
    saliency: str
    scales: int
    options: Mapping[str, Any]
    prior: Mapping[str, int]


@dataclass(frozen=True)
class Recipe:
    """A parsed, checked recipe. ``raw`` is the TOML document as parsed."""

    name: str
    family: str
    size: str
    description: str
    config: Mapping[str, Any]
    merge: MergeSpec
    inputs: Mapping[str, InputSpec]
    export: ExportDefaults
    tolerances: Mapping[str, Tolerance]
    build_shapes: Mapping[str, ShapeProfile]
    path: Path
    raw: Mapping[str, Any]

    def merge_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~qm_export.models.parse_schedule` besides the spec."""
        return {"saliency": self.merge.saliency, "scales": self.merge.scales, **dict(self.merge.options)}


class _Reader:
    """Typed access to the TOML document with errors naming the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> RecipeError:
        return RecipeError(f"recipe {self.path}: key {key!r}: {message}")

    def table(self, doc: Mapping[str, Any], key: str, name: str, *, required: bool = True) -> dict[str, Any]:
        value = doc.get(name)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "missing table" if value is None else f"must be a table, got {value!r}")
        return value

    def only(self, table: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(key, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")

    def string(self, table: Mapping[str, Any], key: str, name: str, choices: tuple[str, ...] | None = None,
               default: str | None = None) -> str:
        value = table.get(name, default)
        if not isinstance(value, str):
            raise self.fail(f"{key}.{name}", "missing" if value is None else f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(f"{key}.{name}", f"must be one of {list(choices)}, got {value!r}")
        return value

    def integer(self, table: Mapping[str, Any], key: str, name: str, default: int, minimum: int) -> int:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"{key}.{name}", f"must be an int >= {minimum}, got {value!r}")
        return value

    def positive(self, table: Mapping[str, Any], key: str, name: str) -> float:
        value = table.get(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and math.isfinite(value)):
            raise self.fail(f"{key}.{name}", f"must be a finite number > 0, got {value!r}")
        return float(value)

    def shape(self, value: Any, key: str, minimum: int = 1) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value
        ):
            raise self.fail(key, f"must be a non-empty list of ints >= {minimum}, got {value!r}")
        return tuple(value)


def _parse_inputs(r: _Reader, doc: Mapping[str, Any]) -> dict[str, InputSpec]:
    inputs = r.table(doc, "inputs", "inputs")
    if not inputs:
        raise r.fail("inputs", "must name at least one input")
    out = {}
    for name, spec in inputs.items():
        key = f"inputs.{name}"
        spec = r.table(inputs, key, name)
        r.only(spec, key, {"dtype", "shape", "dynamic"})
        dtype = r.string(spec, key, "dtype", INPUT_DTYPES)
        shape = r.shape(spec.get("shape"), f"{key}.shape")
        dynamic = spec.get("dynamic", {})
        if not isinstance(dynamic, dict):
            raise r.fail(f"{key}.dynamic", f"must be a table of axis names to axis indices, got {dynamic!r}")
        for dim_name, axis in dynamic.items():
            if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < len(shape):
                raise r.fail(f"{key}.dynamic.{dim_name}", f"must be an axis in [0, {len(shape)}), got {axis!r}")
        if len(set(dynamic.values())) != len(dynamic):
            raise r.fail(f"{key}.dynamic", f"names one axis twice: {dynamic!r}")
        if dynamic.get("batch") != 0:
            raise r.fail(f"{key}.dynamic", f"axis 0 must be the dynamic 'batch' axis, got {dynamic!r}")
        out[name] = InputSpec(name, dtype, shape, dict(dynamic))
    return out


def _parse_build(r: _Reader, doc: Mapping[str, Any], inputs: Mapping[str, InputSpec]) -> dict[str, ShapeProfile]:
    build = r.table(doc, "build", "build")
    r.only(build, "build", {"shapes"})
    shapes = r.table(build, "build.shapes", "shapes")
    r.only(shapes, "build.shapes", set(inputs))
    out = {}
    for name, spec in inputs.items():
        key = f"build.shapes.{name}"
        table = r.table(shapes, key, name)
        r.only(table, key, {"min", "opt", "max"})
        lo, opt, hi = (r.shape(table.get(k), f"{key}.{k}") for k in ("min", "opt", "max"))
        for k, s in (("min", lo), ("opt", opt), ("max", hi)):
            if len(s) != len(spec.shape):
                raise r.fail(f"{key}.{k}", f"has rank {len(s)}, the input has rank {len(spec.shape)} ({list(spec.shape)})")
        dyn = set(spec.dynamic.values())
        for axis in range(len(spec.shape)):
            if axis not in dyn and not lo[axis] == opt[axis] == hi[axis] == spec.shape[axis]:
                raise r.fail(key, f"axis {axis} is static ({spec.shape[axis]}) but min/opt/max give "
                                  f"{lo[axis]}/{opt[axis]}/{hi[axis]}")
            if not lo[axis] <= opt[axis] <= hi[axis]:
                raise r.fail(key, f"axis {axis} needs min <= opt <= max, got {lo[axis]}/{opt[axis]}/{hi[axis]}")
            if not lo[axis] <= spec.shape[axis] <= hi[axis]:
                raise r.fail(key, f"the example shape {list(spec.shape)} is outside min/max at axis {axis}")
        out[name] = ShapeProfile(lo, opt, hi)
    return out


def _parse_merge(r: _Reader, doc: Mapping[str, Any]) -> MergeSpec:
    merge = r.table(doc, "merge", "merge")
    r.only(merge, "merge", {"schedule", "saliency", "scales", "options", "prior"})
    if "schedule" not in merge:
        raise r.fail("merge.schedule", "missing (write e.g. \"1:0.5,4:0.7\", 0.5, [1.0, 0.5] or {1 = 0.5})")
    saliency = r.string(merge, "merge", "saliency", ("attention", "self"), default="attention")
    scales = r.integer(merge, "merge", "scales", 1, 1)
    options = r.table(merge, "merge.options", "options", required=False)
    prior = r.table(merge, "merge.prior", "prior", required=False)
    r.only(prior, "merge.prior", {"width", "layers", "heads"})
    for k in prior:
        r.integer(prior, "merge.prior", k, 1, 1)
    return MergeSpec(merge["schedule"], saliency, scales, dict(options), dict(prior))


def _parse_tolerances(r: _Reader, doc: Mapping[str, Any]) -> dict[str, Tolerance]:
    validation = r.table(doc, "validation", "validation")
    r.only(validation, "validation", {"tolerances"})
    tol = r.table(validation, "validation.tolerances", "tolerances")
    r.only(tol, "validation.tolerances", set(PRECISIONS))
    if "fp32" not in tol:
        raise r.fail("validation.tolerances.fp32", "missing (fp32 tolerance is required)")
    out = {}
    for precision in tol:
        key = f"validation.tolerances.{precision}"
        table = r.table(tol, key, precision)
        r.only(table, key, {"max_abs", "max_rel"})
        max_rel = r.positive(table, key, "max_rel") if "max_rel" in table else None
        out[precision] = Tolerance(r.positive(table, key, "max_abs"), max_rel)
    return out


def _check_model(r: _Reader, recipe: Recipe) -> None:
    """Cross-checks against the family: config fields, schedule, inputs (imports torch)."""
    from .models.families import family_class

    try:
        cls = family_class(recipe.family)
    except ValueError as err:
        raise r.fail("model.family", str(err)) from None
    try:
        config = cls.config_class.from_mapping(recipe.config, where="model.config")
    except (TypeError, ValueError) as err:
        raise r.fail("model.config", str(err)) from None
    try:
        cls.make_schedule(recipe.merge.schedule, config.depth, recipe.merge_options())
    except (TypeError, ValueError) as err:
        raise r.fail("merge", str(err)) from None
    for spec in recipe.inputs.values():
        extra = set(spec.dynamic) - ({"batch", "sequence"} if cls.dynamic_sequence else {"batch"})
        if extra:
            raise r.fail(f"inputs.{spec.name}.dynamic", f"family {recipe.family!r} cannot vary {sorted(extra)}")
        if cls.dynamic_sequence and spec.shape[-1] > getattr(config, "max_positions", spec.shape[-1]):
            raise r.fail(f"inputs.{spec.name}.shape", f"sequence {spec.shape[-1]} exceeds max_positions")


def _check_input_names(r: _Reader, family: str, inputs: Mapping[str, InputSpec]) -> None:
    from .models.families import FAMILIES

    cls = FAMILIES.get(family)
    if cls is not None and tuple(inputs) != cls.input_names:
        raise r.fail("inputs", f"family {family!r} takes inputs {list(cls.input_names)} (in this order), got {list(inputs)}")


def parse_recipe(doc: Mapping[str, Any], path: Path, name: str | None = None) -> Recipe:
    """Check a parsed TOML document and build the :class:`Recipe` (``name``: default file stem)."""
    r = _Reader(path)
    r.only(doc, "<top level>", _SECTIONS)
    model = r.table(doc, "model", "model")
    r.only(model, "model", {"family", "size", "description", "config"})
    export = r.table(doc, "export", "export")
    r.only(export, "export", {"opset", "precision", "merge_impl"})
    inputs = _parse_inputs(r, doc)
    family = r.string(model, "model", "family")
    _check_input_names(r, family, inputs)
    recipe = Recipe(
        name=name or path.stem,
        family=family,
        size=r.string(model, "model", "size"),
        description=r.string(model, "model", "description", default=""),
        config=dict(r.table(model, "model.config", "config")),
        merge=_parse_merge(r, doc),
        inputs=inputs,
        export=ExportDefaults(
            r.integer(export, "export", "opset", 20, 18),
            r.string(export, "export", "precision", PRECISIONS, default="fp32"),
            r.string(export, "export", "merge_impl", MERGE_IMPLS, default="plugin"),
        ),
        tolerances=_parse_tolerances(r, doc),
        build_shapes=_parse_build(r, doc, inputs),
        path=path,
        raw=doc,
    )
    _check_model(r, recipe)
    return recipe


def _shipped() -> dict[str, Any]:
    """Shipped recipe name -> resource."""
    try:
        root = resources.files(_RECIPE_PACKAGE)
    except ModuleNotFoundError:  # pragma: no cover - broken install
        return {}
    return {p.name[: -len(".toml")]: p for p in root.iterdir() if p.name.endswith(".toml")}


def recipe_names() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(_shipped())


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a shipped recipe by name, or a recipe ``.toml`` file by path.

    Raises:
        RecipeError (a ``ValueError``): unknown name, unreadable file, bad TOML, bad key.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"recipe must be a name or a path, got {type(name_or_path).__name__}")
    text_name = str(name_or_path)
    path = Path(name_or_path)
    if text_name.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        data, where = path.read_bytes(), path
    else:
        shipped = _shipped()
        if text_name not in shipped:
            import difflib

            close = difflib.get_close_matches(text_name, list(shipped), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RecipeError(f"unknown recipe {text_name!r}; {hint}known recipes: {', '.join(sorted(shipped))} "
                              "(or give a path to a .toml file or a Hugging Face model folder)")
        data, where = shipped[text_name].read_bytes(), Path(str(shipped[text_name]))
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RecipeError(f"recipe {where}: not valid TOML: {err}") from None
    return parse_recipe(doc, where)


_FAMILY_ORDER = {"vit": 0, "encoder": 1, "causal-lm": 2, "video": 3}
_SIZE_ORDER = {"tiny": 0, "small": 1, "base": 2}


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, loaded and checked, by family then size."""
    recipes = [load_recipe(name) for name in recipe_names()]
    return sorted(recipes, key=lambda r: (_FAMILY_ORDER.get(r.family, 99), r.family, _SIZE_ORDER.get(r.size, 99), r.name))
