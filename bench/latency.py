"""Side-by-side ONNX Runtime latency of several model files, measured in one process.

Rounds alternate between the models so drift in machine load hits all of them alike; the
figure kept per model is the median of its per-round p50s.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def p50_ms(session, feed: dict[str, np.ndarray], seconds: float, warmup: int = 10) -> float:
    for _ in range(warmup):
        session.run(None, feed)
    times: list[int] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append(time.perf_counter_ns() - start)
    return float(np.percentile(times, 50)) / 1e6


def compare(paths: dict[str, Path], feed: dict[str, np.ndarray], threads: int, rounds: int = 3,
            seconds: float = 1.0) -> dict[str, float]:
    """Median p50 (ms) per model, one session per model kept alive, rounds interleaved."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for key, session in sessions.items():
            samples[key].append(p50_ms(session, feed, seconds))
    return {k: statistics.median(v) for k, v in samples.items()}
