"""Print a :class:`CheckReport` as a rich table (the JSON form is ``report.to_dict()``)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .findings import CheckReport

__all__ = ["render_report"]

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def render_report(report: CheckReport, console: Console) -> None:
    """A header (model, TensorRT version assumed, opset), one row per finding, and the counts."""
    console.print(
        f"[bold]TensorRT check[/bold] of {escape(report.model)}  (parser rules of TensorRT {report.trt_version}, "
        f"opset {report.opset if report.opset is not None else '?'})"
    )
    if report.findings:
        table = Table(show_lines=True, expand=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("node")
        table.add_column("op")
        table.add_column("where")
        table.add_column("message", ratio=3)
        table.add_column("fix", ratio=2)
        for f in report.sorted_findings():
            where = f.graph if f.graph != "main" or f.function else ("model" if not f.node else "main")
            cells = (f.rule, f.node or "-", f.op or "-", where, f.message, f.fix)
            table.add_row(Text(f.severity, style=_STYLE[f.severity]), *(Text(c) for c in cells))
        console.print(table)
    counts = report.counts()
    verdict = "[green]no errors[/green]" if report.ok else f"[bold red]{counts['error']} error(s)[/bold red]"
    console.print(f"{verdict}: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info")
