"""The ``qm`` node contract of spec §6 as data: names, arities, and the only attributes.

Kept free of torch so that ``qm-export check`` and ``build`` load fast.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QM_DOMAIN", "QM_PLUGIN_VERSION", "QM_NODE_ATTRS", "QmOp", "QM_OPS", "is_qm_plugin_node"]

QM_DOMAIN = "qm"
QM_PLUGIN_VERSION = "1"
#: The attributes every ``qm`` node carries, and no others.
QM_NODE_ATTRS = {"plugin_namespace": QM_DOMAIN, "plugin_version": QM_PLUGIN_VERSION}


@dataclass(frozen=True)
class QmOp:
    """One ``qm`` op: its name and the number of inputs and outputs (spec §6)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


QM_OPS: dict[str, QmOp] = {
    op.name: op
    for op in (
        QmOp("TokenGroupIndex", ("assign", "seeds"), ("order", "offsets")),
        QmOp("TokenMerge", ("x", "weight", "order", "offsets"), ("merged",)),
        QmOp("TokenUnmerge", ("y", "assign"), ("out",)),
    )
}


def is_qm_plugin_node(domain: str, op_type: str) -> bool:
    """A node meant for one of our plugins: domain ``qm``, or the name of one of our ops."""
    return domain == QM_DOMAIN or op_type in QM_OPS
