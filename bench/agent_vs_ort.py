"""Does the agent's benchmark child measure what ONNX Runtime itself would?

Compares the p50 latency from `run_benchmark` (child process, its method) with a plain onnxruntime
loop in this process: same model, same batch-1 input, same thread count, warm-up and time budget.
Rounds alternate which side goes first, to cancel drift. Prints figures only.

    .venv/bin/python bench/agent_vs_ort.py [MODEL.onnx] [--budget 2] [--rounds 3] [--threads 1 2]

Without a model it exports a small CNN on 1x28x28 input (needs torch).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes.onnxruntime_rt import choose_providers
from edgehub.protocol.messages import BenchmarkSettings


def build_cnn(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(2, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def _session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=choose_providers(ort.get_available_providers()))


def write_references(model: Path, path: Path) -> dict[str, np.ndarray]:
    """One batch-1 sample, so the agent times exactly the input the direct loop uses."""
    session = _session(model, 1)
    rng = np.random.default_rng(0)
    feed = {}
    for node in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
        feed[node.name] = rng.standard_normal(shape).astype(np.float32)
    outputs = session.run(None, feed)
    arrays = {f"input.{k}": v for k, v in feed.items()}
    arrays.update({f"output.{n.name}": v for n, v in zip(session.get_outputs(), outputs)})
    np.savez(path, **arrays)
    return feed


def direct_p50(model: Path, feed: dict[str, np.ndarray], settings: BenchmarkSettings) -> float:
    session = _session(model, settings.threads)
    for _ in range(settings.warmup_runs):
        session.run(None, feed)
    times: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(settings.time_budget_s * 1e9)
    while True:
        t0 = clock()
        session.run(None, feed)
        t1 = clock()
        times.append(t1 - t0)
        if t1 >= deadline and len(times) >= settings.min_runs:
            break
    del session  # its idle threads spin: none may be alive while the agent's child runs
    gc.collect()
    return float(np.percentile(np.asarray(times) / 1e6, 50))


def agent_p50(model: Path, refs: Path, settings: BenchmarkSettings) -> float:
    result = run_benchmark(model, "onnx", refs, settings)
    if not result.ok:
        raise SystemExit(f"agent benchmark failed: {result.error}")
    return result.latency.p50_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_cnn(Path(tmp) / "cnn.onnx")
        refs = Path(tmp) / "refs.npz"
        feed = write_references(model, refs)
        print(f"model {model.name}, onnxruntime {ort.__version__}, budget {args.budget:g}s, "
              f"warm-up {args.warmup} runs, {args.rounds} rounds (p50 in ms)")
        print(f"{'threads':>7} {'round':>5} {'agent p50':>10} {'direct p50':>10} {'ratio':>6}")
        for threads in args.threads:
            settings = BenchmarkSettings(time_budget_s=args.budget, warmup_runs=args.warmup,
                                         min_runs=20, threads=threads, timeout_s=args.budget * 10 + 30)
            agent, direct = [], []
            for round_ in range(args.rounds):
                if round_ % 2 == 0:
                    agent.append(agent_p50(model, refs, settings))
                    direct.append(direct_p50(model, feed, settings))
                else:
                    direct.append(direct_p50(model, feed, settings))
                    agent.append(agent_p50(model, refs, settings))
                print(f"{threads:>7} {round_ + 1:>5} {agent[-1]:>10.4f} {direct[-1]:>10.4f} "
                      f"{agent[-1] / direct[-1]:>6.3f}")
            a, d = statistics.median(agent), statistics.median(direct)
            print(f"{threads:>7} {'med':>5} {a:>10.4f} {d:>10.4f} {a / d:>6.3f}")


if __name__ == "__main__":
    main()
