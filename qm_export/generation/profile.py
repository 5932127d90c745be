"""``profile`` of generation folders: time to first token, per-token decode latency, tokens/s
and KV-cache bytes, a merged folder and its unmerged baseline timed interleaved in one loop.

Per (batch, prompt length): ``warmup`` untimed generations per folder, then ``runs`` timed
ones, the folders alternating every run (order flipped every run). Each generation prefills a
seeded prompt (``(batch, seq_len)``, no padding) and decodes ``new_tokens - 1`` steps (the
first new token comes from the prefill). Reported, in milliseconds:

- ``ttft_ms``: prefill latency (min/mean/p50/p90/p95/p99/max over runs);
- ``decode_ms``: one decode step's latency, over every step of every run;
- ``tokens_per_s``: ``batch * new_tokens / (prefill + decode steps)``, median over runs;
  ``decode_tokens_per_s``: ``batch / p50 decode step``;
- ``kv_cache_bytes``: the cache after the prefill (keys, values, positions and sizes).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..profile.stats import latency_stats
from .folder import GenerationFolder, read_generation_folder
from .loop import Sampler, check_prompt, generate

__all__ = ["SCHEMA", "profile_generation", "render_generation_profile", "prompt_batch"]

SCHEMA = "qm-export.profile-generation/1"


def prompt_batch(vocab: int, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """Seeded token ids ``(batch, seq_len)``."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq_len), dtype=np.int64)


@dataclass
class _Timed:
    prefill: list[float]
    steps: list[float]
    totals: list[float]
    cache_bytes: int = 0


def _summary(t: _Timed, batch: int, new_tokens: int) -> dict[str, Any]:
    decode = latency_stats(t.steps) if t.steps else None
    return {
        "ttft_ms": latency_stats(t.prefill),
        "decode_ms": decode,
        "tokens_per_s": float(np.median([batch * new_tokens / s for s in t.totals])),
        "decode_tokens_per_s": batch / (decode["p50"] / 1e3) if decode else None,
        "kv_cache_bytes": t.cache_bytes,
        "runs": len(t.prefill),
    }


def profile_generation(model: Path, baseline: Path | None, *, batches: Sequence[int], seq_lens: Sequence[int] | None,
                       new_tokens: int, runs: int, warmup: int, threads: int | None, seed: int = 0,
                       progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
    """Profile ``model`` (and ``baseline``) generation folders on ONNX Runtime (CPU); the report
    as JSON (see the module docstring). ``seq_lens`` None: 128 tokens, or what the context
    leaves after ``new_tokens``."""
    from .ort_backend import OrtGeneration

    folders: list[tuple[str, GenerationFolder]] = [("model", read_generation_folder(model))]
    if baseline is not None:
        folders.append(("baseline", read_generation_folder(baseline)))
        a, b = folders[0][1].spec, folders[1][1].spec
        if (a.vocab_size, a.max_positions) != (b.vocab_size, b.max_positions):
            raise ValueError(f"--baseline {baseline} is another model: vocabulary {b.vocab_size} / context "
                             f"{b.max_positions} vs {a.vocab_size} / {a.max_positions}")
    spec = folders[0][1].spec
    lens = list(seq_lens) if seq_lens else [min(128, spec.max_positions - new_tokens)]
    backends = {role: OrtGeneration(f, threads=threads) for role, f in folders}
    results = []
    total = len(batches) * len(lens) * (warmup + runs) * len(folders)
    done = 0
    for batch in batches:
        for seq_len in lens:
            ids = prompt_batch(spec.vocab_size, batch, seq_len, seed)
            check_prompt(spec, ids, None, new_tokens)
            timed = {role: _Timed([], [], []) for role in backends}
            for it in range(warmup + runs):
                order = list(backends) if it % 2 == 0 else list(reversed(backends))
                for role in order:
                    t0 = time.perf_counter()
                    out = generate(backends[role], ids, None, new_tokens=new_tokens, sampler=Sampler())
                    elapsed = time.perf_counter() - t0
                    done += 1
                    if progress is not None:
                        progress(f"generation b{batch} n{seq_len}", done, total)
                    if it < warmup:
                        continue
                    t = timed[role]
                    t.prefill.append(out.prefill_s)
                    t.steps.extend(out.step_s)
                    t.totals.append(elapsed)
                    t.cache_bytes = out.kv_cache_bytes
            row: dict[str, Any] = {"label": str(model), "role": "model", "backend": "ort", "batch": batch,
                                   "seq_len": seq_len, "new_tokens": new_tokens,
                                   **_summary(timed["model"], batch, new_tokens)}
            if "baseline" in timed:
                base = _summary(timed["baseline"], batch, new_tokens)
                row["baseline"] = base
                row["speedup"] = {
                    "ttft_p50": base["ttft_ms"]["p50"] / row["ttft_ms"]["p50"],
                    "decode_p50": (base["decode_ms"]["p50"] / row["decode_ms"]["p50"]) if row["decode_ms"] else None,
                    "tokens_per_s": row["tokens_per_s"] / base["tokens_per_s"],
                }
                row["kv_cache_reduction"] = 1 - row["kv_cache_bytes"] / base["kv_cache_bytes"]
            results.append(row)
    return {
        "schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "settings": {"threads": threads, "runs": runs, "warmup": warmup, "new_tokens": new_tokens, "seed": seed,
                     "model": str(model), "baseline": None if baseline is None else str(baseline),
                     "merged": folders[0][1].merged},
        "results": results,
    }


def render_generation_profile(report: dict[str, Any], console: Any) -> None:
    """One table: per shape and folder, TTFT p50/p95, decode p50/p95, tokens/s, KV cache."""
    from rich import box
    from rich.table import Table

    s = report["settings"]
    table = Table(title=f"generation on ort ({s['new_tokens']} new tokens, {s['runs']} runs, {s['threads']} threads)",
                  title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1))
    for col in ("shape", "model", "TTFT\np50 ms", "\np95", "decode\np50 ms", "\np95", "\ntok/s", "KV cache\nMiB"):
        table.add_column(col, justify="left" if col in ("shape", "model") else "right", no_wrap=True)

    def add(shape: str, role: str, r: dict[str, Any]) -> None:
        d = r["decode_ms"] or {"p50": float("nan"), "p95": float("nan")}
        table.add_row(shape, role, f"{r['ttft_ms']['p50']:.1f}", f"{r['ttft_ms']['p95']:.1f}", f"{d['p50']:.2f}",
                      f"{d['p95']:.2f}", f"{r['tokens_per_s']:.1f}", f"{r['kv_cache_bytes'] / 2**20:.2f}")

    for r in report["results"]:
        shape = f"{r['batch']}x{r['seq_len']}"
        add(shape, "merged" if s["merged"] else "model", r)
        if "baseline" in r:
            add("", "base", r["baseline"])
            sp = r["speedup"]
            dec = f"{sp['decode_p50']:.2f}x" if sp["decode_p50"] else "-"
            table.add_row("", "ratio", f"{sp['ttft_p50']:.2f}x", "", dec, "", f"{sp['tokens_per_s']:.2f}x",
                          f"-{100 * r['kv_cache_reduction']:.1f}%")
    console.print(table)
