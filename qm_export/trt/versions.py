"""TensorRT version parsing and the feature questions that depend on it.

Everything here is pure: it takes a version (or a namespace that looks like a TensorRT enum)
and answers a question, so it runs and is tested where TensorRT is absent. The facts and
where they come from are listed in ``docs/tensorrt.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TrtVersion",
    "parse_trt_version",
    "installed_version",
    "DEFAULT_CHECK_VERSION",
    "MIN_BUILD_VERSION",
    "build_version_problem",
    "plugin_version_problem",
    "python_plugins_broken",
    "BROKEN_PLUGINS_MESSAGE",
    "has_python_plugins",
    "has_aot_plugins",
    "prefers_plugin_over_function",
    "plugin_namespace_from_domain",
    "is_strongly_typed_only",
    "has_weak_precision_flags",
    "max_onnx_opset",
    "combine_flags",
    "missing_flags",
    "device_memory_bytes",
]

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*$")


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version ``major.minor[.patch[.build]]`` (``10.9.0.34``, ``11.4``)."""

    major: int
    minor: int
    patch: int = 0
    build: int = 0

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.patch or self.build:
            text += f".{self.patch}"
        if self.build:
            text += f".{self.build}"
        return text

    def at_least(self, major: int, minor: int = 0) -> bool:
        """Whether this version is ``>= major.minor`` (patch and build ignored)."""
        return (self.major, self.minor) >= (major, minor)


def parse_trt_version(text: str) -> TrtVersion:
    """Parse ``"10.9"``, ``"10.9.0.34"`` or ``"11.4.0.106"`` into a :class:`TrtVersion`.

    Raises ``ValueError`` naming the value when it is not ``X.Y[.Z[.W]]``, and ``TypeError``
    when it is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"TensorRT version must be a string like '10.13', got {type(text).__name__} {text!r}")
    match = _VERSION_RE.match(text)
    if match is None:
        raise ValueError(
            f"TensorRT version {text!r} is not of the form X.Y[.Z[.W]] (for example '10.13' or '11.4.0.106')"
        )
    parts = [int(p) if p is not None else 0 for p in match.groups()]
    return TrtVersion(*parts)


def installed_version(text: str) -> TrtVersion:
    """The version of an installed ``tensorrt`` from its ``__version__`` (``"10.13.3.9"``,
    ``"10.9.0.34.post1"``): the leading ``X.Y[.Z[.W]]``, ignoring any suffix."""
    match = re.match(r"\s*(\d+\.\d+(?:\.\d+){0,2})", str(text))
    if match is None:
        raise ValueError(f"cannot read a TensorRT version from {text!r}")
    return parse_trt_version(match.group(1))


#: The version ``qm-export check`` assumes when none is given: a recent 10.x.
DEFAULT_CHECK_VERSION = TrtVersion(10, 13)
#: The oldest TensorRT ``qm-export build`` accepts: AOT Python plugins and ``PREFER_AOT_PYTHON_PLUGINS``.
MIN_BUILD_VERSION = TrtVersion(10, 9)


def build_version_problem(v: TrtVersion) -> str | None:
    """Why ``qm-export build`` cannot use TensorRT ``v``, or ``None`` when it can (10.9+)."""
    if v < MIN_BUILD_VERSION:
        return (
            f"TensorRT {v} is too old: AOT Python plugins and PREFER_AOT_PYTHON_PLUGINS need {MIN_BUILD_VERSION}+ "
            "(older versions inline the qm functions or need Python at run time)"
        )
    return None


#: Why qm-export refuses TensorRT 10.14.x for models with qm nodes.
BROKEN_PLUGINS_MESSAGE = (
    "TensorRT 10.14 has a known bug that breaks Python plugins (Torch-TensorRT disables them on 10.14); "
    "10.15+ works"
)


def python_plugins_broken(v: TrtVersion) -> bool:
    """Whether TensorRT ``v`` is a release whose Python plugins are known broken: 10.14.x."""
    return (v.major, v.minor) == (10, 14)


def plugin_version_problem(v: TrtVersion) -> str | None:
    """Why ``qm-export build`` cannot build a model with qm plugins on TensorRT ``v``, or ``None``."""
    if python_plugins_broken(v):
        return f"TensorRT {v}: {BROKEN_PLUGINS_MESSAGE}"
    return None


def has_python_plugins(v: TrtVersion) -> bool:
    """``tensorrt.plugin`` and the parser's support for Python (QDP) plugins: 10.6+."""
    return v.at_least(10, 6)


def has_aot_plugins(v: TrtVersion) -> bool:
    """``trtp.aot_impl`` and the ``PREFER_AOT_PYTHON_PLUGINS`` network flag: 10.9+."""
    return v.at_least(10, 9)


def plugin_namespace_from_domain(v: TrtVersion) -> bool:
    """Whether the parser's fallback plugin importer (a node with no importer and no local
    function of its name) takes the node's domain when ``plugin_namespace`` is absent: 10.10+."""
    return v.at_least(10, 10)


def prefers_plugin_over_function(v: TrtVersion, has_namespace_attr: bool) -> bool:
    """Whether the ONNX parser imports a node as its registered plugin rather than inlining
    the model-local function of the same name (local functions are keyed by name only).

    - before 10.7: never (the local function is always inlined);
    - 10.7 to 10.14: when ``isNodeInPluginRegistry`` finds the plugin, and it reads only the
      ``plugin_namespace`` attribute (absent: namespace ``""``, where no qm plugin lives; the
      domain fallback of 10.10 is the fallback importer's, reached only without a function);
    - 10.15 and later: only when the node carries ``plugin_namespace`` (or the parser's
      ``ENABLE_PLUGIN_OVERRIDE`` flag is set, which qm-export does not use).

    So from 10.7 on: exactly when the node carries ``plugin_namespace``.
    """
    return v.at_least(10, 7) and has_namespace_attr


def is_strongly_typed_only(v: TrtVersion) -> bool:
    """TensorRT 11 builds every network strongly typed: precision comes from the ONNX types."""
    return v.major >= 11


def has_weak_precision_flags(v: TrtVersion) -> bool:
    """``BuilderFlag.FP16``/``BF16`` exist (10.x; deprecated in 10.12, removed in 11)."""
    return v.major <= 10


def max_onnx_opset(v: TrtVersion) -> int:
    """The highest default-domain opset the parser of that version documents support for.

    10.0-10.5: 20 (operators.md of 10.0/10.1); 10.6-10.10: 22 (ONNX 1.17 submodule);
    10.11-10.14: 23 (ONNX 1.18 submodule); 10.15-11.4: 24 (operators.md of 10.15);
    11.5+: 25 (11.5 release notes). The values between documented releases are inferred
    from the ONNX release the parser was built against.
    """
    if v.at_least(11, 5):
        return 25
    if v.at_least(10, 15):
        return 24
    if v.at_least(10, 11):
        return 23
    if v.at_least(10, 6):
        return 22
    return 20


def combine_flags(enum: Any, names: list[str] | tuple[str, ...]) -> int:
    """OR together ``1 << int(enum.NAME)`` for each name (never hardcoded values).

    ``enum`` is ``trt.NetworkDefinitionCreationFlag`` (or anything with those attributes).
    Raises ``ValueError`` naming the flags this enum lacks.
    """
    absent = missing_flags(enum, names)
    if absent:
        raise ValueError(f"this TensorRT has no {getattr(enum, '__name__', 'flag enum')} member(s) {', '.join(absent)}")
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits


def missing_flags(enum: Any, names: list[str] | tuple[str, ...]) -> list[str]:
    """The names in ``names`` that ``enum`` does not define."""
    return [name for name in names if not hasattr(enum, name)]


def device_memory_bytes(engine: Any) -> int | None:
    """An engine's device-memory need in bytes: ``device_memory_size_v2`` (10.1+, the only
    one in 11) or the deprecated ``device_memory_size``; ``None`` when neither exists."""
    for attr in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, attr, None)
        if value is not None:
            return int(value)
    return None
