"""Triton kernels of the three ``qm`` ops (spec §6) and the ``torch.ops.qm`` custom ops.

Importing this package registers ``torch.ops.qm.token_group_index`` / ``token_merge`` /
``token_unmerge`` and imports neither triton nor onnxscript; triton is imported on the first
kernel launch. Modules: ``triton_kernels`` (the ``@triton.jit`` kernels, TensorRT AOT
parameter order), ``config`` (block sizes and grids), ``launch`` (checks and launches),
``custom_ops`` (torch.library), ``onnx_translation`` (dynamo-exporter translation table).
"""

from __future__ import annotations

from .config import LaunchConfig, group_index_config, merge_config, unmerge_config
from .custom_ops import triton_available
from .launch import (
    launch_token_group_index,
    launch_token_merge,
    launch_token_unmerge,
    merge_groups,
    token_group_index,
    token_merge,
    token_unmerge,
)
from .onnx_translation import onnx_translation_table

__all__ = [
    "LaunchConfig",
    "group_index_config",
    "launch_token_group_index",
    "launch_token_merge",
    "launch_token_unmerge",
    "merge_config",
    "merge_groups",
    "onnx_translation_table",
    "token_group_index",
    "token_merge",
    "token_unmerge",
    "triton_available",
    "unmerge_config",
]
