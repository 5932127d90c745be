"""``qm_export.profile``: statistics, speed-up and memory maths on given numbers, the timing
loop on a fake clock, and the breakdown and memory child on real vit-tiny exports.

The exports (vit-tiny merged and ``--no-merge``, encoder-tiny) are made once per test process
by :func:`exported` and shared with ``test_profile_cli.py``. No timing assertions here:
speed goals live in docs/benchmarks.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qm_export.backends.ort_profile import NodeEvent
from qm_export.profile.breakdown import aggregate, arena_stats, ort_breakdown, qm_op_of
from qm_export.profile.memory import MIB, measure_memory, memory_figures, parse_status
from qm_export.profile.ort_session import OrtSettings
from qm_export.profile.stats import latency_stats, paired_speedup, reduction, speedup, throughput
from qm_export.profile.timing import iteration_order, other_cpu_load, time_interleaved
from tiny_exports import tiny_exports


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return tiny_exports()


def _feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)}


# --- statistics: numpy's linear percentiles, h = (n - 1) q / 100 -----------------------------

def test_latency_stats_by_hand() -> None:
    # sorted 1..5 ms: p50 at h=2 -> 3; p90 at h=3.6 -> 4 + 0.6 = 4.6; p95 h=3.8 -> 4.8; p99 h=3.96 -> 4.96
    s = latency_stats([0.005, 0.001, 0.003, 0.002, 0.004])
    assert s == pytest.approx({"min": 1.0, "mean": 3.0, "p50": 3.0, "p90": 4.6, "p95": 4.8, "p99": 4.96, "max": 5.0})


def test_latency_stats_two_and_one_runs() -> None:
    s = latency_stats([0.010, 0.020])  # h = q/100: p50 15, p90 19, p99 19.9
    assert (s["p50"], s["p90"], s["p95"], s["p99"], s["mean"]) == pytest.approx((15, 19, 19.5, 19.9, 15))
    one = latency_stats([0.25])
    assert set(one.values()) == {250.0}


@pytest.mark.parametrize("bad", [[], [0.1, -0.001], [float("nan")], [float("inf")]])
def test_latency_stats_rejects(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        latency_stats(bad)


def test_throughput_is_batch_over_mean() -> None:
    assert throughput(4, [0.1, 0.1, 0.2]) == pytest.approx(30.0)  # 4 * 3 / 0.4
    assert throughput(1, [0.5]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        throughput(1, [])


def test_speedup_and_reduction() -> None:
    base = {"min": 8.0, "mean": 10.0, "p50": 10.0, "p90": 12.0, "p95": 13.0, "p99": 20.0, "max": 30.0}
    merged = {"min": 4.0, "mean": 5.0, "p50": 4.0, "p90": 6.0, "p95": 6.5, "p99": 25.0, "max": 30.0}
    s = speedup(base, merged, baseline_throughput=100.0, merged_throughput=200.0)
    assert s == pytest.approx({"min": 2.0, "mean": 2.0, "p50": 2.5, "p90": 2.0, "p95": 2.0, "p99": 0.8,
                               "max": 1.0, "throughput": 2.0})
    assert "throughput" not in speedup(base, merged)
    # per iteration 2, 1, 4 -> median 2 (the slow spell in iteration 2 hit both runs)
    assert paired_speedup([0.2, 0.5, 0.4], [0.1, 0.5, 0.1]) == pytest.approx(2.0)
    assert paired_speedup([0.2], [0.1, 0.1]) is None and paired_speedup([], []) is None
    assert reduction(100.0, 37.0) == pytest.approx(0.63)
    assert reduction(100.0, 120.0) == pytest.approx(-0.2)
    assert reduction(None, 1.0) is None and reduction(0.0, 1.0) is None and reduction(1.0, None) is None


# --- the timing loop ------------------------------------------------------------------------

def test_iteration_order_alternates() -> None:
    assert [iteration_order(2, i) for i in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert [iteration_order(3, i) for i in range(3)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]


class FakeClock:
    """A clock that advances by a fixed step per reading."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_time_interleaved_order_counts_and_progress() -> None:
    calls: list[str] = []
    seen: list[tuple] = []
    times = time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], warmup=2, runs=3,
                             progress=lambda d, c, t: seen.append((d, c, t)), clock=FakeClock(0.001))
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # 2 warm-up + 3 timed iterations
    assert [len(t) for t in times] == [3, 3] and all(t == pytest.approx(0.001) for ts in times for t in ts)
    assert seen[-1] == ("timing", 3, 3) and ("timing (warm-up)", 2, 2) in seen


def test_time_interleaved_duration_and_runs() -> None:
    # every clock reading adds 0.5 s: start at 0.5; iteration 1 reads 1.0..2.5 and checks at 3.0
    # (2.5 s elapsed < 3), iteration 2 reads 3.5..5.0 and checks at 5.5 (5.0 s >= 3): stop
    times = time_interleaved([lambda: None, lambda: None], warmup=0, runs=None, duration=3.0, clock=FakeClock(0.5))
    assert len(times[0]) == len(times[1]) == 2
    # the run count wins when it comes first
    times = time_interleaved([lambda: None], warmup=0, runs=2, duration=100.0, clock=FakeClock(0.5))
    assert len(times[0]) == 2
    with pytest.raises(ValueError):
        time_interleaved([lambda: None], warmup=0, runs=None)
    with pytest.raises(ValueError):
        time_interleaved([], warmup=0, runs=1)


def test_other_cpu_load_is_a_fraction() -> None:
    with other_cpu_load() as load:
        sum(i * i for i in range(200_000))
    assert load["value"] is None or 0.0 <= load["value"] <= 1.0


# --- breakdown aggregation ------------------------------------------------------------------

def test_aggregate_by_hand() -> None:
    events = [
        NodeEvent("node_MatMul_1", "MatMul", "CPU", 600.0),
        NodeEvent("merge_qm/TokenMerge/n7", "TokenMerge", "CPU", 100.0),
        NodeEvent("_inlfunc_TokenGroupIndex_3_node_Add", "Add", "CPU", 50.0),
        NodeEvent("merge_select/node_ReduceMean_2", "ReduceMean", "CPU", 150.0),
        NodeEvent("node_Add_4", "Add", "CPU", 100.0),
    ] * 2  # two runs
    b = aggregate(events, runs=2)
    assert b.total_ms == pytest.approx(1.0)
    assert b.merge_ms == pytest.approx(0.15) and b.merge_share == pytest.approx(0.15)
    assert b.selection_ms == pytest.approx(0.15) and b.selection_share == pytest.approx(0.15)
    assert b.qm_ops == pytest.approx({"TokenGroupIndex": 0.05, "TokenMerge": 0.1})
    # largest first, ties by name; count = kernel runs per run
    assert [(o.name, o.count) for o in b.by_op] == [("MatMul", 1), ("Add", 2), ("ReduceMean", 1), ("TokenMerge", 1)]
    assert b.by_op[0].ms == pytest.approx(0.6) and b.by_op[0].share == pytest.approx(0.6)
    assert b.top_nodes[0].name == "node_MatMul_1 (MatMul)"
    assert qm_op_of("merge_qm/TokenUnmerge/x") == "TokenUnmerge" and qm_op_of("node_Add") is None
    # the median per node ignores one preempted run; the mean does not
    spiky = [NodeEvent("a", "Add", "CPU", d) for d in (100.0, 100.0, 1000.0)]
    assert aggregate(spiky, runs=3).total_ms == pytest.approx(0.1)
    assert aggregate(spiky, runs=3, statistic="mean").total_ms == pytest.approx(0.4)
    empty = aggregate([], runs=1)
    assert empty.total_ms == 0 and empty.merge_share == 0
    with pytest.raises(ValueError):
        aggregate(events, runs=0)


def test_breakdown_on_real_exports(models: dict[str, Path]) -> None:
    merged = ort_breakdown(models["merged"], _feeds(), OrtSettings(threads=1), runs=2)
    plain = ort_breakdown(models["baseline"], _feeds(), OrtSettings(threads=1), runs=2)
    assert merged.runs == 2 and merged.total_ms > 0
    assert 0 < merged.merge_share < 1 and 0 < merged.selection_share < 1
    assert merged.merge_share + merged.selection_share <= 1
    assert set(merged.qm_ops) <= {"TokenGroupIndex", "TokenMerge", "TokenUnmerge"} and merged.qm_ops
    assert plain.merge_share == 0 and plain.selection_share == 0 and plain.qm_ops == {}
    assert sum(o.share for o in plain.by_op) == pytest.approx(1.0)
    for b in (merged, plain):  # ORT's own arena figures come with the trace
        assert b.memory is not None and b.memory["arena_in_use_peak_mb"] > 0
        assert b.memory["arena_in_use_peak_mb"] >= b.memory["arena_base_mb"] >= 0
        assert b.memory["arena_activation_mb"] > 0


def test_arena_stats_by_hand() -> None:
    def node(in_use: int, delta: int, peak: int) -> dict:
        return {"cat": "Node", "name": f"n{in_use}_kernel_time",
                "args": {"mem_bytes_in_use": str(in_use * 2**20), "mem_in_use_delta": str(delta * 2**20),
                         "mem_in_use_peak": str(peak * 2**20), "mem_arena_held": str(400 * 2**20)}}

    # weights 300 MiB in the arena; a run allocates 10, peaks at 325, frees
    s = arena_stats([node(310, 10, 310), node(320, 10, 325), node(300, -20, 325)])
    assert (s["arena_base_mb"], s["arena_in_use_peak_mb"], s["arena_activation_mb"]) == (320 - 20, 325, 25)
    assert s["peak_at_node"] == "n320" and s["arena_held_mb"] == 400


def test_arena_stats_absent() -> None:
    assert arena_stats([{"cat": "Node", "name": "x_kernel_time", "args": {"op_name": "Add"}}]) is None


# --- memory -----------------------------------------------------------------------------------

def test_parse_status() -> None:
    text = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n"
    assert parse_status(text) == {"VmHWM": 2048 * 1024, "VmRSS": 1024 * 1024}
    with pytest.raises(ValueError):
        parse_status("Name: x\n")


def test_memory_figures_by_hand() -> None:
    m = int(MIB)
    raw = {"rss_before": 100 * m, "rss_session": 400 * m, "hwm_session": 450 * m, "rss_reset": 400 * m,
           "hwm_warmup": 430 * m, "rss_reset2": 410 * m, "hwm_end": 415 * m, "clear_refs": True}
    f = memory_figures(raw, weight_bytes=250 * m)
    assert f["peak_memory_mb"] == pytest.approx(350)  # 450 - 100
    assert f["activation_memory_mb"] == pytest.approx(30) and f["activation_method"] == "clear_refs"  # 430 - 400
    assert f["activation_steady_mb"] == pytest.approx(5)  # 415 - 410
    assert f["activation_peak_minus_weights_mb"] == pytest.approx(100)  # 350 - 250
    assert f["session_memory_mb"] == pytest.approx(300) and f["weights_mb"] == pytest.approx(250)
    f = memory_figures({**raw, "clear_refs": False}, weight_bytes=250 * m)
    assert f["activation_method"] == "peak-minus-weights" and f["activation_memory_mb"] == pytest.approx(100)
    assert f["activation_clear_refs_mb"] is None and f["activation_steady_mb"] is None


def test_memory_child_real(models: dict[str, Path]) -> None:
    from qm_export.validate.model_file import open_model_file

    weights = open_model_file(models["merged"]).weight_bytes
    f = measure_memory(models["merged"], _feeds(4), OrtSettings(threads=1), warmup=1, runs=2, weight_bytes=weights)
    for key in ("peak_memory_mb", "activation_memory_mb", "activation_method", "activation_steady_mb",
                "activation_peak_minus_weights_mb", "session_memory_mb", "weights_mb"):
        assert key in f, key
    assert f["activation_method"] in ("clear_refs", "peak-minus-weights")
    assert f["peak_memory_mb"] >= f["activation_memory_mb"] >= 0
    assert 0 < f["peak_memory_mb"] < 2048 and f["runs"] == 2 and f["warmup"] == 1


# --- the library entry point ------------------------------------------------------------------

def test_profile_models_report(models: dict[str, Path]) -> None:
    from qm_export.profile.core import profile_models

    steps: list[tuple] = []
    report = profile_models([models["merged"]], models["baseline"], batches=[1, 2], threads=1, runs=3, warmup=1,
                            progress=lambda d, c, t: steps.append((d, c, t)), memory=False, profile_runs=1)
    doc = report.to_json()
    assert [(r["label"], r["batch"]) for r in doc["results"]] == [("merged", 1), ("baseline", 1), ("merged", 2), ("baseline", 2)]
    merged = doc["results"][0]
    assert merged["status"] == "ok" and merged["runs"] == 3 and merged["threads"] == 1
    assert merged["speedup"]["p50"] == pytest.approx(doc["results"][1]["latency_ms"]["p50"] / merged["latency_ms"]["p50"])
    assert merged["merge_share"] > 0 and doc["results"][1]["merge_share"] == 0
    assert merged["peak_memory_mb"] is None and doc["results"][1]["speedup"] is None
    assert any(d.startswith("ort 1x3x32x32") for d, _, _ in steps)


def test_trt_figures_from_a_runner_contract() -> None:
    """TensorRT runs only where it exists: check the glue against TrtRunner's contract
    (``engine_bytes`` the serialized engine, ``device_memory_bytes``, ``layer_times``)."""
    from qm_export.profile.core import _device_memory

    class FakeTrt:
        engine_bytes = b"x" * 2**20
        device_memory_bytes = 3 * 2**20

        def layer_times(self, feeds, runs):
            return [NodeEvent("merge_qm/TokenMerge/a", "PluginV3", "trt", 10.0),
                    NodeEvent("node_MatMul_1", "Gemm", "trt", 90.0)] * runs

    mem = _device_memory(FakeTrt())
    assert mem == {"engine_mb": 1.0, "device_memory_mb": 3.0, "activation_memory_mb": 3.0,
                   "activation_method": "trt-device-memory"}
    assert _device_memory(object())["engine_mb"] is None
    bd = aggregate(FakeTrt().layer_times({}, 4), 4, source="trt-layer-profiler")
    assert bd.merge_share == pytest.approx(0.1) and bd.total_ms == pytest.approx(0.1)


def test_profile_models_seq_len_and_skips(models: dict[str, Path]) -> None:
    from qm_export.profile.core import ProfileInputError, has_seq_axis, profile_models
    from qm_export.validate.model_file import open_model_file

    assert has_seq_axis(open_model_file(models["text"]).inputs)
    assert not has_seq_axis(open_model_file(models["merged"]).inputs)
    report = profile_models([models["text"]], backends=["ort", "trt"], seq_lens=[8, 16], threads=1, runs=2, warmup=0,
                            memory=False, breakdown=False)
    got = [(r.backend, r.seq_len, r.status) for r in report.results]
    assert got[:2] == [("ort", 8, "ok"), ("ort", 16, "ok")]
    assert {s for b, _, s in got if b == "trt"} == {"skipped"}
    assert all(r.why for r in report.results if r.backend == "trt")
    with pytest.raises(ProfileInputError) as err:
        profile_models([models["merged"]], seq_lens=[16], runs=1)
    assert err.value.param == "--seq-len"
    with pytest.raises(ProfileInputError) as err:
        profile_models([models["merged"]], models["text"], runs=1)
    assert err.value.param == "--baseline"
    with pytest.raises(ProfileInputError) as err:
        profile_models([models["merged"]], backends=["onnx-ref"], runs=1)
    assert err.value.param == "--backends"
