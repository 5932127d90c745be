"""Everything ``qm-export build`` decides before TensorRT is imported.

Loading the ONNX, refusing to overwrite outputs, picking and validating the profile,
reading the ONNX's precision, finding the qm plugins it uses: all checked here, where it is
cheap and testable, so that a bad argument fails in a second rather than after a build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx

from .files import check_writable, sha256_file, sidecar_path
from .precision import PRECISIONS, onnx_precision
from .profiles import Profile, resolve_profile

__all__ = [
    "BuildRequest",
    "PreparedBuild",
    "prepare_build",
    "required_network_flags",
    "INSTALL_HINT",
    "TensorRTUnavailable",
    "BuildError",
]

INSTALL_HINT = (
    "qm-export build needs TensorRT >= 10.9 and a CUDA GPU. Install it with "
    "pip install 'qm-export[trt]' (or pip install 'tensorrt>=10.9,!=10.14.*'), on a machine with an NVIDIA driver."
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be imported (or is too old); the message says what to install."""


class BuildError(RuntimeError):
    """TensorRT, the parser or the plugins refused the build; the message says why."""


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked ``qm-export build`` for."""

    onnx_path: Path
    engine_path: Path
    shapes: tuple[str, ...] = ()
    recipe: str | None = None
    precision: str | None = None
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    force: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class PreparedBuild:
    """The checked request: the model, its validated profile, precision and plugins."""

    request: BuildRequest
    model: onnx.ModelProto = field(repr=False)
    profile: Profile
    onnx_precision: str | None
    plugins: list[str]
    onnx_sha256: str

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.request.engine_path)


def prepare_build(request: BuildRequest) -> PreparedBuild:
    """Validate ``request`` without TensorRT. Raises ``FileNotFoundError``/``FileExistsError``
    for paths and ``ValueError`` (naming argument and value) for everything else."""
    from qm_export.export.external_data import check_model_external_data
    from qm_export.export.graph_walk import qm_plugins_used
    from .check.checker import load_onnx

    if request.precision is not None and request.precision not in PRECISIONS:
        raise ValueError(f"--precision {request.precision!r} is not one of {', '.join(PRECISIONS)}")
    if request.workspace_bytes is not None and request.workspace_bytes <= 0:
        raise ValueError(f"--workspace must be positive, got {request.workspace_bytes}")
    onnx_path, engine_path = Path(request.onnx_path), Path(request.engine_path)
    if engine_path.resolve() == onnx_path.resolve():
        raise ValueError(f"output {str(engine_path)!r} is the input ONNX file")
    model = load_onnx(onnx_path)
    check_model_external_data(model, onnx_path.resolve().parent, what=f"MODEL {str(onnx_path)!r}")
    check_writable([engine_path, sidecar_path(engine_path)], request.force)
    if request.timing_cache is not None and Path(request.timing_cache).is_dir():
        raise ValueError(f"--timing-cache {str(request.timing_cache)!r} is a directory, not a file")
    profile = resolve_profile(model, request.shapes, request.recipe)
    return PreparedBuild(
        request=request,
        model=model,
        profile=profile,
        onnx_precision=onnx_precision(model),
        plugins=qm_plugins_used(model),
        onnx_sha256=sha256_file(onnx_path),
    )


def required_network_flags(flags: Sequence[str], uses_plugins: bool) -> list[str]:
    """The network flags to set: ``PREFER_AOT_PYTHON_PLUGINS`` only when the model has qm nodes."""
    return [f for f in flags if uses_plugins or f != "PREFER_AOT_PYTHON_PLUGINS"]
