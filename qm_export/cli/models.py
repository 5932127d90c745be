"""``qm-export models``: list the shipped model recipes."""

from __future__ import annotations

from typing import Any

import click

from .common import CommandFailed, console, emit_json, verdict


def _shape_text(spec: Any) -> str:
    """``input_ids int64 [batch=2, sequence=128]``: dynamic axes named, static ones as numbers."""
    names = {axis: name for name, axis in spec.dynamic.items()}
    dims = [f"{names[i]}={d}" if i in names else str(d) for i, d in enumerate(spec.shape)]
    return f"{spec.name} [{','.join(dims)}] {spec.dtype}"


def recipe_summary(recipe: Any) -> dict[str, Any]:
    """The machine-readable description of one recipe (what ``--json`` prints)."""
    return {
        "name": recipe.name,
        "family": recipe.family,
        "size": recipe.size,
        "description": recipe.description,
        "schedule": str(recipe.merge.schedule) if not isinstance(recipe.merge.schedule, (list, dict)) else recipe.merge.schedule,
        "inputs": {
            name: {"dtype": s.dtype, "shape": list(s.shape), "dynamic": dict(s.dynamic)}
            for name, s in recipe.inputs.items()
        },
        "export": {"opset": recipe.export.opset, "precision": recipe.export.precision,
                   "merge_impl": recipe.export.merge_impl},
        "path": str(recipe.path),
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout (a list, one object per recipe).")
def models(as_json: bool) -> None:
    """List the model recipes (family, size, merge schedule, inputs): a table on stderr."""
    from ..recipes import RecipeError, list_recipes

    try:
        recipes = list_recipes()
    except RecipeError as err:
        raise CommandFailed(f"a shipped recipe is broken: {err}") from None
    from rich.table import Table
    from rich.text import Text

    table = Table(title="qm-export model recipes")
    for column in ("name", "family", "size", "merges"):
        table.add_column(column, no_wrap=True)
    table.add_column("inputs (example shape)", overflow="fold")
    for r in recipes:
        table.add_row(r.name, r.family, r.size, str(r.merge.schedule),
                      Text("\n".join(_shape_text(s) for s in r.inputs.values())))
    err = console(stderr=True)
    err.print(table)
    if as_json:
        emit_json([recipe_summary(r) for r in recipes])
    verdict(err, "DONE", f"{len(recipes)} recipes")
