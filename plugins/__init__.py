"""TensorRT plugins for the ``qm`` ops (installed as the package ``qm_export_plugins``).

Importing this package imports neither tensorrt nor triton. Call :func:`register_plugins`
before parsing an ONNX file with ``qm`` nodes: it defines ``qm::TokenGroupIndex``,
``qm::TokenMerge`` and ``qm::TokenUnmerge`` (version "1", no attributes) with
``tensorrt.plugin``, each with an AOT implementation (a Triton kernel compiled to PTX and
stored in the engine) and a JIT implementation (the same kernel launched from Python).

With both implementations registered, create the network with
``1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)`` (or ``..._JIT_...``):
TensorRT refuses to choose on its own. See ``docs/kernels.md``.
"""

from __future__ import annotations

import importlib.util

from . import specs
from .specs import *  # noqa: F403  (the TensorRT-free helpers, listed in specs.__all__)

__all__ = ["PluginDependencyError", "register_plugins", *specs.__all__]


class PluginDependencyError(ImportError):
    """TensorRT (>= 10.9, with ``tensorrt.plugin``) or triton is missing."""


def _require(module: str, what: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise PluginDependencyError(
            f"qm_export_plugins.register_plugins() needs {what}; "
            "install them with: pip install 'qm-export[trt]' (tensorrt>=10.9, triton==3.8.0)"
        )


def register_plugins(*, aot: bool = True, jit: bool = True) -> list[str]:
    """Register the three ``qm`` plugins with TensorRT's plugin registry (idempotent).

    Args:
        aot: define the AOT implementations (TensorRT >= 10.9; the engine runs without Python).
        jit: define the JIT implementations (the engine needs this package at run time).

    Returns:
        the plugin ids, ``["qm::TokenGroupIndex", "qm::TokenMerge", "qm::TokenUnmerge"]``.

    Raises:
        PluginDependencyError: tensorrt, ``tensorrt.plugin`` (AOT: ``aot_impl``) or triton is missing.
        ValueError: neither ``aot`` nor ``jit``, or a different choice than an earlier call.
    """
    if not (aot or jit):
        raise ValueError("register_plugins needs aot=True or jit=True")
    _require("tensorrt", "TensorRT (the tensorrt Python package)")
    _require("triton", "triton")
    try:
        import tensorrt.plugin as trtp
    except Exception as exc:  # a placeholder wheel or missing CUDA libraries fail in many ways
        raise PluginDependencyError(
            f"qm_export_plugins.register_plugins() needs TensorRT >= 10.9 with tensorrt.plugin: {exc}"
        ) from exc
    if aot and not hasattr(trtp, "aot_impl"):
        raise PluginDependencyError(
            "AOT plugins need TensorRT >= 10.9 (tensorrt.plugin.aot_impl); pass aot=False"
        )
    from .qm_plugins import define

    return define(aot=aot, jit=jit)
