"""TensorRT engines: ``qm-export build`` and the pure helpers around it.

Importing this package never imports ``tensorrt``; only :func:`build_engine` does, lazily.
"""

from __future__ import annotations

from .builder import BuildResult, build_engine, import_tensorrt, register_qm_plugins
from .precision import PRECISIONS, PrecisionPlan, onnx_precision, plan_precision
from .prepare import INSTALL_HINT, BuildError, BuildRequest, PreparedBuild, TensorRTUnavailable, prepare_build
from .profiles import PROFILE_METADATA_KEY, Profile, ShapeRange, parse_shapes, resolve_profile, validate_profile
from .units import parse_bytes
from .versions import TrtVersion, parse_trt_version

__all__ = [
    "BuildRequest",
    "BuildResult",
    "BuildError",
    "INSTALL_HINT",
    "PRECISIONS",
    "PROFILE_METADATA_KEY",
    "PrecisionPlan",
    "PreparedBuild",
    "Profile",
    "ShapeRange",
    "TensorRTUnavailable",
    "TrtVersion",
    "build_engine",
    "import_tensorrt",
    "onnx_precision",
    "parse_bytes",
    "parse_shapes",
    "parse_trt_version",
    "plan_precision",
    "prepare_build",
    "register_qm_plugins",
    "resolve_profile",
    "validate_profile",
]
