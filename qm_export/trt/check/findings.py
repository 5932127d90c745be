"""What ``qm-export check`` reports: findings and the report that collects them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..versions import TrtVersion

__all__ = ["SEVERITIES", "Finding", "CheckReport", "REPORT_SCHEMA"]

#: Most severe first. ``error``: the parser or builder will fail; ``warning``: it builds but
#: degrades (slower path, plugin not used, precision lost); ``info``: worth knowing.
SEVERITIES = ("error", "warning", "info")
REPORT_SCHEMA = "qm-export.trt-check/1"


@dataclass(frozen=True)
class Finding:
    """One problem at one node (or at model level when ``node`` is empty).

    ``op`` is ``domain::op_type`` for non-default domains; ``function`` the local function
    whose body holds the node (``None`` for the model graph); ``graph`` the path of the graph
    inside it (``main``, ``main/Loop_3.body``, ``qm::TokenMerge``).
    """

    severity: str
    rule: str
    message: str
    fix: str
    node: str = ""
    op: str = ""
    function: str | None = None
    graph: str = "main"

    def __post_init__(self) -> None:
        for name in ("node", "op", "function", "graph"):  # a proto2 string with invalid UTF-8 comes back as bytes
            value = getattr(self, name)
            if isinstance(value, bytes):
                object.__setattr__(self, name, value.decode("utf-8", "replace"))
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    def downgraded(self, reason: str) -> "Finding":
        """The same finding as ``info``, its message prefixed with why it does not matter."""
        if self.severity == "info":
            return self
        return replace(self, severity="info", message=f"[{reason}; would be {self.severity}] {self.message}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "rule": self.rule,
            "node": self.node,
            "op": self.op,
            "function": self.function,
            "graph": self.graph,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class CheckReport:
    """All findings for one model checked against one TensorRT version."""

    model: str
    trt_version: TrtVersion
    opset: int | None
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {sev: sum(f.severity == sev for f in self.findings) for sev in SEVERITIES}

    @property
    def ok(self) -> bool:
        """No errors (warnings and infos allowed)."""
        return self.counts()["error"] == 0

    def sorted_findings(self) -> list[Finding]:
        order = {sev: i for i, sev in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: order[f.severity])

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema ``qm-export.trt-check/1``)."""
        return {
            "schema": REPORT_SCHEMA,
            "model": self.model,
            "trt_version": str(self.trt_version),
            "opset": self.opset,
            "ok": self.ok,
            "summary": self.counts(),
            "findings": [f.to_dict() for f in self.sorted_findings()],
        }
