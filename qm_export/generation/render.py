"""Rich tables of generation results (readable at 80 columns)."""

from __future__ import annotations

from typing import Any

__all__ = ["generation_table", "generation_phrase"]


def generation_table(parity: dict[str, Any]) -> Any:
    """One row per runtime: steps x rows, identical?, near-ties, bugs, max |diff| of logits."""
    from rich import box
    from rich.table import Table

    tol = f"tol {parity['atol']:.0e}" + (f" + {parity['rtol']:.0e}·|t|" if parity.get("rtol") else "")
    how = ", float32 upcast twin" if parity.get("upcast") else ""
    table = Table(title=f"generation vs torch greedy (teacher-forced, {tol}{how})", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1))
    for col, justify in (("runtime", "left"), ("steps", "right"), ("rows", "right"), ("identical", "left"),
                         ("near-ties", "right"), ("bugs", "right"), ("max |diff|", "right"), ("ok", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    table.add_row(
        parity["backend"], str(parity["steps"]), str(parity["rows"]), "yes" if parity["identical"] else "no",
        str(parity["near_ties"]), f"[red]{parity['bugs']}[/]" if parity["bugs"] else "0",
        f"{parity['max_abs']:.1e}", "[green]yes[/]" if parity["ok"] else "[red]NO[/]",
    )
    return table


def generation_phrase(gen: dict[str, Any]) -> str:
    """The verdict's clause on generation: ``greedy generation identical for N steps`` or
    ``generation equal but for K near-tie step(s) in N``."""
    if gen["identical"]:
        return f"greedy generation identical for {gen['steps']} steps"
    return f"generation equal but for {gen['near_ties']} near-tie step(s) in {gen['steps']}"
