"""Publish a CNN trained on Fashion-MNIST and compare its variants side by side.

    .venv/bin/python bench/publish_bench.py [--epochs 2] [--seconds 1.0]

Prints, per variant: size and size ratio to fp32, top-1 accuracy on the 10,000 test images,
and ONNX Runtime batch-1 latency ratio to fp32 at 1 and 2 threads (one run, interleaved).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from latency import compare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per latency round")
    args = parser.parse_args()

    import torch

    from edgehub.converters.torch_export import export_onnx
    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import small_cnn
    from edgehub.hub.examples.training import evaluate_accuracy, train_classifier
    from edgehub.hub.home import HubPaths
    from edgehub.hub.publish.pipeline import PublishOptions, publish
    from edgehub.zoo.registry import Registry
    from edgehub.zoo.store import ArtifactStore

    console = Console(width=130)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    torch.manual_seed(0)
    model = small_cnn()
    started = time.perf_counter()
    train_classifier(model, x_train, y_train, epochs=args.epochs, progress=True)
    console.print(f"trained SmallCNN {args.epochs} epochs on 60,000 images in {time.perf_counter() - started:.1f} s; "
                  f"torch test top-1 {evaluate_accuracy(model, x_test, y_test):.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        export_onnx(model.eval(), {"x": x_test[:2]}, tmp_path / "cnn.onnx")
        np.savez(tmp_path / "eval.npz", x=x_test, y=y_test)
        paths = HubPaths.from_home(tmp_path / "home")
        registry = Registry(paths.db_url)
        started = time.perf_counter()
        outcome = publish(PublishOptions(source=str(tmp_path / "cnn.onnx"), name="fmnist-cnn",
                                         eval_path=tmp_path / "eval.npz", profiles=["x86-cpu"]), paths, registry)
        publish_s = time.perf_counter() - started
        registry.close()
        store = ArtifactStore(paths.artifacts_dir)
        files = {v.label: store.path_for(v.sha256) for v in outcome.variants}
        feed = {"x": x_test[:1]}
        latency = {t: compare(files, feed, threads=t, seconds=args.seconds) for t in (1, 2)}

    table = Table(title=f"fmnist-cnn variants (publish took {publish_s:.1f} s; {platform.processor() or platform.machine()})")
    for column in ("variant", "size KB", "size ratio", "top-1", "drop (pts)", "p50 1T ms", "ratio 1T", "p50 2T ms", "ratio 2T"):
        table.add_column(column, justify="right")
    fp32 = next(v for v in outcome.variants if v.label == "fp32")
    for v in outcome.variants:
        acc, base = v.metrics["accuracy"], fp32.metrics["accuracy"]
        table.add_row(
            v.label, f"{v.size_bytes / 1024:.1f}", f"{v.size_bytes / fp32.size_bytes:.3f}", f"{acc:.4f}",
            f"{(base - acc) * 100:+.2f}",
            f"{latency[1][v.label]:.3f}", f"{latency[1][v.label] / latency[1]['fp32']:.2f}",
            f"{latency[2][v.label]:.3f}", f"{latency[2][v.label] / latency[2]['fp32']:.2f}",
        )
    console.print(table)
    scheme = next(v for v in outcome.variants if v.label == "int8-static").recipe[-1]["notes"]
    console.print(f"int8-static scheme chosen: {scheme['scheme']} (scores {scheme.get('scheme_scores')})")


if __name__ == "__main__":
    main()
