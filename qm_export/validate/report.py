"""The result of ``validate``: per backend, per output and per merge layer; JSON and tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..export.parity import Flip, ParityResult, not_compared_note
from ..models.schedule import layer_label

__all__ = ["BackendStatus", "ValidateReport", "render_report", "MAX_FLIP_LINES"]

#: Selection bugs listed one per line on the terminal (``--json`` has them all).
MAX_FLIP_LINES = 10


@dataclass
class BackendStatus:
    """``status``: ``"ran"``, ``"skipped"`` (package/device missing, or not asked) or
    ``"failed"`` (it could not load or run the model); ``why`` says why."""

    status: str
    why: str | None = None
    selection_checked: bool | None = None


@dataclass
class ValidateReport:
    """Everything ``validate`` found.

    Attributes:
        model: the MODEL path; reference: ``"torch"`` or the backend compared against;
        reference_note: where the reference came from; precision and near_tie (``δ``);
        atol, rtol: the value tolerance; backends: name -> :class:`BackendStatus`;
        results: one :class:`ParityResult` per (backend, input set); notes: sentences the
        user should read (twin made, selection not checked, ...).
    """

    model: str
    reference: str
    reference_note: str
    precision: str
    near_tie: float
    atol: float
    rtol: float
    backends: dict[str, BackendStatus] = field(default_factory=dict)
    results: list[ParityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    twin_matches_model: bool | None = None
    input_sets: list[dict[str, list[int]]] = field(default_factory=list)
    merge_layers: list[int] = field(default_factory=list)
    #: a generation folder's generation parity (:func:`qm_export.generation.validate.summarise`).
    generation: dict[str, Any] | None = None

    def layer_of(self, merge: int) -> int | None:
        """The model layer of merge ``merge`` (None when unknown)."""
        return self.merge_layers[merge] if 0 <= merge < len(self.merge_layers) else None

    @property
    def ran(self) -> list[str]:
        return [n for n, b in self.backends.items() if b.status == "ran" and n != self.reference]

    @property
    def passed(self) -> bool:
        """Every compared backend ran, every output within tolerance, every flip a near-tie or
        a consequence of one, the twin equal to the model; and something was compared."""
        if any(b.status == "failed" for b in self.backends.values()):
            return False
        if not self.results:
            return False
        if self.generation is not None and not self.generation["ok"]:
            return False
        return all(r.ok for r in self.results) and self.twin_matches_model is not False

    def not_compared(self) -> list[str]:
        """``"backend at BxS"`` for each run whose values were not compared at all (every row
        left out for a near-tie flip or a degenerate row: it passed on selection alone)."""
        return [f"{r.backend} at {r.input_label}" for r in self.results if not r.values_compared]

    def verdict(self) -> str:
        if self.passed:
            n = len(self.ran)
            skipped = self.not_compared()
            values = f" (values not compared for {', '.join(skipped)}: near-tie in every row)" if skipped else ""
            gen = self.generation
            also = ""
            if gen is not None:
                from ..generation.render import generation_phrase

                also = f"; {generation_phrase(gen)} on {', '.join(gen['backends'])}"
            return (f"PASSED: {n} backend{'s' if n != 1 else ''} match {self.reference} on {len(self.input_sets)} "
                    f"input set(s){values}{also}")
        failed = [n for n, b in self.backends.items() if b.status == "failed"]
        bad = sorted({r.backend for r in self.results if not r.ok})
        if not self.results and not failed:
            return "FAILED: no backend ran, nothing was compared"
        parts = []
        if failed:
            why = self.backends[failed[0]].why or ""
            why = why if len(why) <= 160 else why[:157] + "..."
            parts.append(f"{', '.join(failed)} failed to run ({failed[0]}: {why})")
        if bad:
            parts.append(f"{', '.join(bad)} differ from {self.reference}")
        if self.twin_matches_model is False:
            parts.append("the debug twin's outputs differ from the model's")
        gen = self.generation
        if gen is not None and not gen["ok"]:
            parts.append(f"generation differs from torch over {gen['steps']} steps ({gen['bugs']} token(s) outside a "
                         "near-tie)" if gen["backends"] else "generation: no runtime ran")
        return "FAILED: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        outputs = []
        selection = []
        flips: list[dict[str, Any]] = []
        for r in self.results:
            shape = "x".join(map(str, next(iter(r.inputs.values()), [])))
            for o in r.outputs:
                outputs.append({"name": o.name, "backend": r.backend, "input": shape, "shape": o.shape,
                                "max_abs": o.max_abs, "max_rel": o.max_rel, "cosine": o.cosine, "atol": o.atol,
                                "rtol": o.rtol, "rows_excluded": o.rows_excluded, "rows_compared": o.rows_compared,
                                "values_compared": o.values_compared, "passed": o.ok, "detail": o.detail})
            for layer in r.layers:
                selection.append({
                    "layer": self.layer_of(layer.layer), "merge": layer.layer, "backend": r.backend, "input": shape, "rows": layer.rows,
                    "seed_flips": layer.seed_flip_rows, "assign_flips": layer.assign_flips,
                    "near_ties": layer.seed_near_ties + layer.assign_near_ties,
                    "consequences": layer.consequence_flips, "degenerate_rows": layer.degenerate_rows,
                    "bugs": layer.bugs,
                })
            flips += [_flip_json(r.backend, shape, f) for f in r.flips]
        return {
            "passed": self.passed,
            "verdict": self.verdict(),
            "model": self.model,
            "reference": self.reference,
            "reference_note": self.reference_note,
            "precision": self.precision,
            "near_tie": self.near_tie,
            "atol": self.atol,
            "rtol": self.rtol,
            "values_compared": not self.not_compared(),
            "values_not_compared": self.not_compared(),
            "backends": {n: {"status": b.status, "why": b.why, "selection_checked": b.selection_checked}
                         for n, b in self.backends.items()},
            "input_sets": self.input_sets,
            "outputs": outputs,
            "selection": selection,
            "flips": flips,
            "twin_matches_model": self.twin_matches_model,
            "notes": self.notes,
            **({"generation": self.generation} if self.generation is not None else {}),
        }


def _flip_json(backend: str, shape: str, f: Flip) -> dict[str, Any]:
    return {"backend": backend, "input": shape, "layer": f.layer, "row": f.row, "kind": f.kind,
            "status": f.status, "tokens": f.tokens, "gap": f.gap, "detail": f.detail}


def render_report(report: ValidateReport, console: Any) -> None:
    """Tables on ``console`` (stderr): backends, values per output, selection per layer."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]validate[/] {escape(report.model)} vs {escape(report.reference)}: {escape(report.reference_note)}")
    console.print(f"precision {report.precision}: near-tie gap δ = {report.near_tie:g}, "
                  f"tolerance |diff| <= {report.atol:g} + {report.rtol:g}·|ref|")
    table = Table(title="backends", title_justify="left")
    for col in ("backend", "status", "why"):
        table.add_column(col, overflow="fold")
    for name, b in report.backends.items():
        color = {"ran": "green", "skipped": "yellow", "failed": "red"}[b.status]
        table.add_row(name, f"[{color}]{b.status}[/]", escape(b.why or ""))
    console.print(table)
    if report.results:
        values = Table(title="outputs vs " + report.reference, title_justify="left")
        for col, justify in (("backend", "left"), ("input", "left"), ("output", "left"), ("max abs", "right"),
                             ("max rel", "right"), ("cosine", "right"), ("ok", "left")):
            values.add_column(col, justify=justify, no_wrap=col in ("backend", "output"))
        for r in report.results:
            shape = "x".join(map(str, next(iter(r.inputs.values()), [])))
            for o in r.outputs:
                ok = "[green]yes[/]" if o.ok else f"[red]NO[/] {escape(o.detail)}"
                excluded = f" ({o.rows_excluded} rows out)" if o.rows_excluded else ""
                if not o.values_compared:  # every row left out: no number to show (the note says why)
                    values.add_row(r.backend, shape, escape(o.name), "[yellow]not compared[/]", "-", "-",
                                   ok + excluded)
                    continue
                values.add_row(r.backend, shape, escape(o.name), f"{o.max_abs:.2e}", f"{o.max_rel:.2e}",
                               f"{o.cosine:.6f}", ok + excluded)
        console.print(values)
        if report.not_compared():
            console.print(f"[yellow]note:[/] {escape(not_compared_note(report.not_compared()))}")
        sel = Table(title="selection per merge layer (flips: near-tie / consequence / bug)", title_justify="left")
        for col in ("backend", "input", "layer", "seed", "assign", "near-tie", "conseq.", "bugs"):
            sel.add_column(col, no_wrap=col == "backend")
        rows = 0
        for r in report.results:
            shape = "x".join(map(str, next(iter(r.inputs.values()), [])))
            for layer in r.layers:
                rows += 1
                nt = layer.seed_near_ties + layer.assign_near_ties
                bugs = f"[red]{layer.bugs}[/]" if layer.bugs else "0"
                where = report.layer_of(layer.layer)
                sel.add_row(r.backend, shape, layer_label(where) if where is not None else f"merge {layer.layer}",
                            str(layer.seed_flip_rows), str(layer.assign_flips),
                            str(nt), str(layer.consequence_flips), bugs)
        if rows:
            console.print(sel)
        bugs = [(r, f) for r in report.results for f in r.flips if f.status == "bug"]
        for r, f in bugs[:MAX_FLIP_LINES]:
            gap = f" gap {f.gap:.2e}" if f.gap is not None else ""
            where = report.layer_of(f.layer)
            console.print(f"[red]bug[/] {r.backend} layer {layer_label(where) if where is not None else f.layer} row {f.row} "
                          f"{f.kind} tokens {f.tokens}{gap}: {escape(f.detail)}")
        if len(bugs) > MAX_FLIP_LINES:
            console.print(f"[red]... and {len(bugs) - MAX_FLIP_LINES} more bugs[/] (all in --json)")
    if report.twin_matches_model is not None:
        same = "[green]yes[/]" if report.twin_matches_model else "[red]NO[/]"
        console.print(f"the model's own outputs equal its debug twin's bit for bit (ort): {same}")
    if report.generation is not None:
        from ..generation.render import generation_table

        for parity in report.generation["backends"].values():
            console.print(generation_table(parity))
        for name, why in report.generation["skipped"].items():
            console.print(f"[yellow]generation on {name} skipped:[/] {escape(why)}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    color = "green" if report.passed else "red"
    word, _, text = report.verdict().partition(": ")
    console.print(f"[bold {color}]{word}[/]: {escape(text)}", soft_wrap=True)  # one line, whatever the width
