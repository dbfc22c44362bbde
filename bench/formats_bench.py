"""Every device format built from one trained model, measured side by side on this machine.

Trains SmallCNN one epoch on Fashion-MNIST, builds every device-format variant (TFLite fp32 / fp16 /
dynamic-range / full int8, the Edge TPU op report and compile with the stand-in compiler, Core ML
fp16 / int8 / 4-bit / 2-bit, TensorRT-ready ONNX fp32 / fp16 / int8) next to ONNX fp32 and int8,
and prints for each: size ratio, top-1 agreement with the PyTorch model and accuracy on the eval
set, and the p50 latency measured by the agent's benchmark child (same batch-1 method for ONNX
Runtime and LiteRT) as a ratio to ONNX Runtime fp32. Formats that cannot run here (Edge TPU,
Core ML, TensorRT) are listed with what was checked instead.

    .venv/bin/python bench/formats_bench.py [--train 12000] [--eval 2000] [--budget 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")

from edgehub.agent.benchmark import run_benchmark
from edgehub.protocol.messages import BenchmarkSettings

STAND_IN = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_edgetpu_compiler"


def train(n_train: int, n_eval: int, work: Path):
    import torch

    from edgehub.converters.onnx_model import onnx_artifact
    from edgehub.converters.torch_export import export_onnx
    from edgehub.converters.torch_passes.model_io import save_module
    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import small_cnn
    from edgehub.hub.examples.training import train_classifier

    x, y = load_fashion_mnist("train", limit=n_train)
    xe, ye = load_fashion_mnist("test", limit=n_eval)
    torch.manual_seed(0)
    model = small_cnn()
    train_classifier(model, x, y, epochs=1, progress=False)
    export_onnx(model, {"x": xe[:2]}, work / "fp32.onnx")
    root = onnx_artifact(work / "fp32.onnx").model_copy(update={"torch_model": save_module(model, work / "m.pt")})
    with torch.no_grad():
        logits = model(torch.from_numpy(xe)).numpy()
    return root, x, xe, ye, logits


def stand_in_compiler(work: Path) -> None:
    wrapper = work / "bin" / "edgetpu_compiler"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"


def build(root, calib: np.ndarray, work: Path) -> dict:
    from edgehub.converters.passes.base import PassContext, run_pass

    ctx = PassContext(workdir=work / "variants", calibration={"x": calib})
    timed: dict = {}

    def make(label, name, parent, config):
        t0 = time.perf_counter()
        timed[label] = (run_pass(name, parent, config, ctx), time.perf_counter() - t0)
        return timed[label][0]

    make("onnx int8 (QDQ, ORT)", "int8_static", root, {"scheme": "reduce_range"})
    for quantization in ("none", "fp16", "dynamic_int8", "int8"):
        make(f"tflite {quantization if quantization != 'none' else 'fp32'}", "tflite", root,
             {"quantization": quantization})
    make("edgetpu (stand-in compiler)", "edgetpu_compile", timed["tflite int8"][0], {})
    fp16 = make("coreml fp16", "coreml", root, {})
    for weights in ("int8", "palettize-4bit", "palettize-2bit"):
        make(f"coreml {weights}", "coreml_compress", fp16, {"weights": weights})
    make("tensorrt-ready fp32", "tensorrt_ready", root, {})
    make("tensorrt-ready fp16", "tensorrt_ready", root, {"precision": "fp16"})
    sym = run_pass("int8_static", root, {"scheme": "s8s8-symmetric"}, ctx)
    make("tensorrt-ready int8", "tensorrt_ready", sym, {})
    return timed


def evaluate(artifact, xe: np.ndarray) -> np.ndarray | None:
    from edgehub.converters.tflite_model import run_tflite
    from edgehub.hub.publish.evaluate import run_onnx

    if artifact.format in ("onnx", "tensorrt"):
        batch = artifact.inputs[0].shape[0]  # TensorRT-ready variants have a static batch
        # TensorRT sums a Q/DQ graph in int32: run it unfused, as the publish scoring does, not in
        # ONNX Runtime's x86 int8 kernels (s8s8 there saturates: 0.888 agreement against 0.992).
        return run_onnx(artifact.path, {artifact.inputs[0].name: xe}, batch_size=batch if isinstance(batch, int) else 256,
                        simulate_qdq=artifact.format == "tensorrt")[0]
    if artifact.format == "tflite":
        return run_tflite(artifact.path, {"x": xe}, layout=artifact.notes.get("layout"))[0]
    return None  # Edge TPU / Core ML: not runnable on this machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--eval", type=int, default=2000)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stand_in_compiler(work)
        t0 = time.perf_counter()
        root, x, xe, ye, logits = train(args.train, args.eval, work)
        print(f"trained SmallCNN on {args.train} Fashion-MNIST images in {time.perf_counter() - t0:.1f} s; "
              f"PyTorch accuracy {float((logits.argmax(1) == ye).mean()):.4f} on {args.eval} test images")
        variants = build(root, x[:256], work)
        refs = work / "refs.npz"
        np.savez(refs, **{"input.x": xe[:64], "output.logits": logits[:64]})
        settings = BenchmarkSettings(time_budget_s=args.budget, warmup_runs=20, min_runs=50, threads=args.threads)

        rows = [("onnx fp32 (ORT)", root, 0.0)] + [(label, a, s) for label, (a, s) in variants.items()]
        base = run_benchmark(root.path, "onnx", refs, settings)
        base_size = root.size_bytes
        print("\n| variant | build s | size KB | size ratio | top-1 agreement | accuracy | device check | p50 ms | "
              "p50 / ORT fp32 | runtime |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for label, artifact, seconds in rows:
            outputs = evaluate(artifact, xe)
            agreement = accuracy = "n/a"
            if outputs is not None:
                agreement = f"{float((outputs.argmax(1) == logits.argmax(1)).mean()):.4f}"
                accuracy = f"{float((outputs.argmax(1) == ye).mean()):.4f}"
            fmt = "onnx" if artifact.format == "tensorrt" else artifact.format
            result = base if artifact is root else (
                run_benchmark(artifact.path, fmt, refs, settings) if fmt in ("onnx", "tflite") else None)
            check = p50 = ratio = runtime = "n/a"
            if result is not None and result.ok:
                check, p50 = f"{result.agreement:.3f}", f"{result.latency.p50_ms:.4f}"
                ratio = f"{result.latency.p50_ms / base.latency.p50_ms:.2f}"
                runtime = f"{result.runtime} {result.runtime_version}"
                if artifact.format == "tensorrt":
                    runtime += " (the graph on the CPU: no TensorRT here)"
            elif result is not None:
                runtime = f"failed: {result.error}"
            elif artifact.format == "coreml":
                weights = ", ".join(f"{k} x{v}" for k, v in artifact.notes["weights"].items())
                runtime = f"macOS only; weights: {weights}"
            elif artifact.format == "edgetpu":
                runtime = f"no Edge TPU here; {artifact.notes['tpu_ops']}/{artifact.notes['op_report']['ops']} ops mapped"
            print(f"| {label} | {seconds:.1f} | {artifact.size_bytes / 1024:.1f} | "
                  f"{artifact.size_bytes / base_size:.3f} | {agreement} | {accuracy} | {check} | {p50} | {ratio} | "
                  f"{runtime} |")


if __name__ == "__main__":
    main()
