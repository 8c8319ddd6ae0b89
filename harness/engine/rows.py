"""The row schema in one place: the published columns in order, the dense-reference grouping,
and the content keys of jobs (a key is a hash of everything that determines its result)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

# The column order of the published table: identity, outcome, accuracy, cost, latency (the
# measured p50 beside the latency model's prediction, harness.engine.latency_model),
# cold start, derived ratios, then where it ran and provenance. Method-specific columns follow
# in the CSV (sorted), then ``key``.
COLUMNS = [
    "model", "data", "method", "knob", "budget", "variant", "target", "scenario", "batch", "status",
    "error", "top1", "top5", "top1_torch", "top1_drop", "parity_max_abs", "parity_top1_agree",
    "macs", "params", "size_bytes", "size_fp32_bytes", "p50_ms", "p50_predicted_ms", "p90_ms", "p99_ms", "mean_ms",
    "std_ms", "min_ms", "max_ms", "n", "throughput", "input_p50_min_ms", "input_p50_max_ms",
    "compile_s", "tune_s", "first_run_ms", "train_s", "method_s", "finetune_steps", "speedup", "macs_ratio",
    "realised_share", "speedup_predicted", "p50_predicted_note", "ratio_ok", "ratio_suspect", "ratio_se", "ratio_pairs", "timing_ok", "timing_suspect",
    "timing_tries", "ref_p50_ms", "ref_drift", "ref_interleaved",
    "other_cpu_share", "load_avg_1m", "tail_ratio", "cv", "artifact", "artifact_sha256", "precision", "target_options", "threads", "preset",
    "percentile_rule", "timing_note", "produces", "synthetic", "device", "eval_n", "pool_inputs",
    "train_n", "baseline_source", "baseline_key", "data_hash", "recipe", "seed",
    "node", "cpu", "cpu_count", "arch", "gpu", "board", "emulated", "measure_start", "measure_end",
    "command", "git_rev", "started", "written", "versions", "runtime_versions", "session", "macs_convention", "key",
]
# A row's dense reference: same baseline weights, target, build options, scenario, batch, timing.
GROUP = ["model", "baseline_key", "target", "target_options", "scenario", "batch", "preset", "threads"]
# Columns that depend on when and where a row was timed, not on what was measured: a Ray run
# and a local run of the same sweep agree on every other column.
TIMING_COLUMNS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "n", "throughput",
                  "input_p50_min_ms", "input_p50_max_ms", "compile_s", "tune_s", "first_run_ms", "train_s",
                  "method_s", "speedup", "realised_share", "timing_note", "node", "measure_start",
                  "measure_end", "started", "written", "session", "wall_s", "timing_ok", "timing_suspect",
                  "timing_tries", "ref_p50_ms", "ref_drift", "other_cpu_share", "load_avg_1m", "load_avg_1m_start",
                  "tail_ratio", "cv", "block_drift", "speedup_interleaved", "settle_wait_s", "ratio_ok",
                  "ratio_suspect", "ratio_se", "ratio_pairs", "p50_predicted_ms", "speedup_predicted",
                  "p50_predicted_note")


def content_key(obj: Any) -> str:
    """A 16-hex-digit hash of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def knob_text(knobs: dict[str, Any]) -> tuple[str, str]:
    """The ``knob`` and ``budget`` columns: knob names and their values, comma-joined."""
    return ",".join(knobs), ",".join(str(v) for v in knobs.values())
