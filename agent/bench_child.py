"""The benchmark child: `python -m edgehub.agent.bench_child`, one JSON job on stdin (a BenchJob),
one JSON BenchResult on stdout. It runs in its own process so that a model which crashes, hangs
or exhausts memory takes down only this process (see edgehub.agent.benchmark for the limits).

Method (the same on every device, so numbers compare):
  load_ms    creating the session (the library is imported before, and not timed);
  warmup_ms  `warmup_runs` runs of the timing input;
  latency    back-to-back runs of one batch-1 input, timed each with perf_counter_ns, until
             `time_budget_s` has passed and at least `min_runs` were made;
  peak RSS   high-water mark after timing (load + serving batch 1, not the reference batches);
  agreement  top-1 of the first output vs the references, all samples, for class scores; a flip
             between classes the reference scores within 2% of its range counts as agreeing
             (protocol/metrics.py: what is a classifier); cosine for every output.
The timing input is the first reference sample, else a deterministic random one (dynamic dims 1).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgehub.agent.benchmark import BenchJob, BenchResult
from edgehub.agent.hardware import emulation
from edgehub.agent.runtimes import RuntimeUnavailable, Session, runtime_for
from edgehub.agent.runtimes.base import NotApplicable
from edgehub.agent.sandbox import claim_stdout, limit_address_space
from edgehub.protocol.manifest import TensorSpec
from edgehub.protocol.messages import Latency
from edgehub.protocol.metrics import NEAR_TIE, cosine, is_classifier
from edgehub.protocol.metrics import agreement as metrics_agreement

REFERENCE_CHUNK = 32  # samples per run when checking references (bounds memory on small devices)
_MAX_ERROR_CHARS = 500


class Stage:
    """What the child is doing, to say where a failure happened."""

    def __init__(self) -> None:
        self.name = "reading the job"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{exc.__class__.__name__}: {text}"


def _as_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    try:
        return np.ascontiguousarray(array, dtype=np.dtype(dtype))
    except TypeError:
        return np.ascontiguousarray(array)  # a dtype numpy lacks (bfloat16): feed as stored


def _peak_rss_mb() -> float:
    """This process's own high-water mark. On Linux ru_maxrss also keeps the RSS of the process
    that forked us (the kernel carries it across exec), which would charge the agent's (or a test
    runner's) memory to the model: VmHWM belongs to this process image alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass  # not Linux: fall back to getrusage
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KB


# ---- inputs ---------------------------------------------------------------------------------

def _random_feed(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """A deterministic input; dynamic dims are 1, non-float inputs (ids, masks) are zeros."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            raise ValueError(f"cannot make a {spec.dtype} input for {spec.name}: give references") from None
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feed


def _match(specs: list[TensorSpec], arrays: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    """Reference arrays in the model's order: by name, else by position (names can change when a
    variant is converted)."""
    if all(spec.name in arrays for spec in specs):
        return [arrays[spec.name] for spec in specs]
    if len(arrays) == len(specs):
        return list(arrays.values())
    raise ValueError(
        f"references have {what} {sorted(arrays)} but the model has {[s.name for s in specs]}"
    )


class References:
    """Reference inputs/outputs, stacked along a leading sample axis."""

    def __init__(self, path: Path, session: Session):
        with np.load(path, allow_pickle=False) as npz:
            inputs = {k[len("input."):]: npz[k] for k in npz.files if k.startswith("input.")}
            outputs = {k[len("output."):]: npz[k] for k in npz.files if k.startswith("output.")}
        if not inputs or not outputs:
            raise ValueError(f"{path.name} needs input.<name> and output.<name> arrays")
        self.specs = session.inputs
        self.inputs = _match(session.inputs, inputs, "inputs")
        first_output = session.outputs[0].name
        # By name, else the first stored output (names can change when a variant is converted).
        self.output_name = first_output if first_output in outputs else next(iter(outputs))
        self.output = outputs[self.output_name]
        self.count = len(self.inputs[0])
        first, rank = self.inputs[0], len(self.specs[0].shape)
        if first.ndim not in (rank, rank + 1):
            raise ValueError(f"reference input of shape {first.shape} does not fit {self.specs[0].shape}")
        self.unbatched = first.ndim == rank + 1  # the model takes one sample without a batch axis
        batch = None if self.unbatched else self.specs[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def feed(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Samples [start, start+count) as a feed; padded with the last one to a fixed batch."""
        feed = {}
        for spec, array in zip(self.specs, self.inputs):
            part = array[start] if self.unbatched else array[start:start + count]
            if self.fixed_batch and count < self.fixed_batch:
                pad = np.repeat(part[-1:], self.fixed_batch - count, axis=0)
                part = np.concatenate([part, pad])
            feed[spec.name] = _as_dtype(part, spec.dtype)
        return feed

    def chunks(self) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        size = 1 if self.unbatched else (self.fixed_batch or REFERENCE_CHUNK)
        for start in range(0, self.count, size):
            count = min(size, self.count - start)
            yield self.feed(start, count), count


# ---- measuring ------------------------------------------------------------------------------

def _time_runs(session: Session, feed: dict[str, np.ndarray], budget_s: float, min_runs: int) -> tuple[list[int], int]:
    """Per-run latencies in ns, and the loop's wall time in ns."""
    clock, run = time.perf_counter_ns, session.run
    times: list[int] = []
    start = clock()
    deadline = start + int(budget_s * 1e9)
    while True:
        t0 = clock()
        run(feed)
        t1 = clock()
        times.append(t1 - t0)
        if t1 >= deadline and len(times) >= min_runs:
            return times, t1 - start


def _latency(times_ns: list[int]) -> Latency:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Latency(p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=float(ms.mean()), runs=len(ms))


def _compare(session: Session, refs: References) -> tuple[float | None, float | None, float]:
    """(top-1 agreement or None, cosine, max |output - reference|) on the first output over all samples."""
    parts = []
    for feed, count in refs.chunks():
        out = np.asarray(session.run(feed)[0])
        parts.append(out[None] if refs.unbatched else out[:count])
    got = np.concatenate(parts).astype(np.float64)
    want = np.asarray(refs.output).astype(np.float64)
    if got.shape != want.shape:
        raise ValueError(f"output shape {got.shape} does not match the references' {want.shape}")
    similar: float | None = cosine(got, want) if want.ndim >= 2 else None
    if want.ndim < 2:  # one value per sample (a label or a score): no axis to take a top-1 along
        agreement: float | None = float(np.mean(np.isclose(got, want, rtol=1e-3, atol=1e-5)))
    else:
        agreement = metrics_agreement(got, want, tie=NEAR_TIE) if is_classifier(want, refs.output_name) else None
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if similar is not None and not np.isfinite(similar):
        similar = -1.0
    # JSON has no NaN/Inf: a non-finite difference (NaN outputs) is reported as the largest float.
    return agreement, similar, diff if np.isfinite(diff) else sys.float_info.max


def run_job(job: BenchJob, stage: Stage, known: dict) -> BenchResult:
    """Measure; `known` collects what is known so far, for the failure report."""
    settings = job.settings
    stage.name = "finding a runtime"
    runtime = runtime_for(job.format)
    runtime.prepare()
    known.update(runtime=runtime.name, runtime_version=runtime.version(), threads=settings.threads,
                 settings=job.runtime_settings, emulated=emulation())
    path = Path(job.model_path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    stage.name = f"loading {path.name}"
    t0 = time.perf_counter_ns()
    session = runtime.load(path, threads=settings.threads, settings=job.runtime_settings)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    known.update(load_ms=load_ms, threads=int(session.describe().get("threads", settings.threads)))
    print(f"bench_child: {session.describe()}", file=sys.stderr)

    stage.name = "reading the references"
    refs = References(Path(job.references_path), session) if job.references_path else None
    feed = refs.feed(0, 1) if refs else _random_feed(session.inputs)

    stage.name = "warming up"
    t0 = time.perf_counter_ns()
    for _ in range(settings.warmup_runs):
        session.run(feed)
    warmup_ms = (time.perf_counter_ns() - t0) / 1e6

    stage.name = "timing runs"
    times, wall_ns = _time_runs(session, feed, settings.time_budget_s, settings.min_runs)
    peak_rss_mb = _peak_rss_mb()

    agreement = similar = max_abs_diff = None
    if refs is not None:
        stage.name = "comparing with the references"
        agreement, similar, max_abs_diff = _compare(session, refs)
    stage.name = "reading where the graph ran"
    # Coverage loads a second (profiling) session: free the timed one first, so both never sit
    # under the child's memory limit at once.
    feed = {name: np.array(value, copy=True) for name, value in feed.items()}
    session = refs = None
    try:
        coverage = runtime.coverage(path, job.runtime_settings, feed)
    except Exception as exc:  # noqa: BLE001 - the measurement stands without it; say why on stderr
        print(f"bench_child: no coverage: {_one_line(exc)}", file=sys.stderr)
        coverage = None
    return BenchResult(
        ok=True, warmup_ms=warmup_ms, latency=_latency(times),
        throughput_per_s=len(times) / (wall_ns / 1e9), peak_rss_mb=peak_rss_mb,
        agreement=agreement, cosine=similar, max_abs_diff=max_abs_diff, coverage=coverage, **known,
    )


def _limits_address_space(format: str) -> bool:
    """Whether RLIMIT_AS may enforce the memory limit: CUDA runtimes (TensorRT) reserve far more
    virtual address space than they use, so for them it would only break CUDA's start."""
    try:
        return bool(getattr(runtime_for(format), "limits_address_space", True))
    except RuntimeUnavailable:
        return True  # run_job reports the missing runtime


def main() -> int:
    out = claim_stdout()
    stage, known = Stage(), {}
    try:
        job = BenchJob.model_validate_json(sys.stdin.buffer.read())
        if job.memory_limit_bytes and _limits_address_space(job.format):
            # Before the runtime is imported, so every allocation of its counts (benchmark.py).
            limit_address_space(job.memory_limit_bytes)
        result = run_job(job, stage, known)
    except NotApplicable as exc:  # a setting this device's runtime lacks: not the variant's failure
        result = BenchResult(ok=False, not_applicable=True, error=f"not applicable: {_one_line(exc)}", **known)
    except Exception as exc:  # any failure of the model or runtime becomes the report's error
        error = f"{stage.name} failed: {_one_line(exc)}"[:_MAX_ERROR_CHARS]
        result = BenchResult(ok=False, error=error, **known)
    out.write(result.model_dump_json())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
