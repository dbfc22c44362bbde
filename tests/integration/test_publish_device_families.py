"""`edgehub publish` for every device family at once, from a PyTorch model trained on real data."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from paths import FAKE_EDGETPU_COMPILER

from edgehub.hub.cli import cli

FAKE_COMPILER = FAKE_EDGETPU_COMPILER


@pytest.mark.slow
def test_publish_builds_each_familys_variants(fmnist_cnn, hub_home, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKE_COMPILER, bin_dir / "edgetpu_compiler")  # the stand-in follows the real CLI
    # The stand-in is a Python script: the venv's interpreter must come first on PATH too.
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.delenv("EDGEHUB_EDGETPU_COMPILER", raising=False)
    result = CliRunner().invoke(cli, [
        "publish", "edgehub.hub.examples.nets:small_cnn", "--weights", str(fmnist_cnn["weights"]),
        "--name", "families", "--eval", str(fmnist_cnn["eval"]), "--json",
        "--profile", "rpi5", "--profile", "coral-edgetpu", "--profile", "apple-coreml",
        "--profile", "jetson-orin-nano"])
    assert result.exit_code == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    variants = {v["label"]: v for v in data["variants"]}
    # Only the guarded int8 variants may be skipped: where the plain int8 is within budget.
    assert all(s["variant"].startswith(("int8-guarded", "tensorrt-int8-guarded")) and "within the budget" in s["reason"]
               for s in data["skipped"]), data["skipped"]
    fp32 = variants["fp32"]["metrics"]["accuracy"]

    for label in ("tflite-fp32", "tflite-fp16", "tflite-int8"):
        assert variants[label]["format"] == "tflite" and "rpi5" in variants[label]["profiles"]
    assert variants["tflite-fp32"]["metrics"]["agreement"] >= 0.99
    assert variants["tflite-int8"]["precision"] == "int8"
    assert variants["tflite-int8"]["metrics"]["accuracy"] >= fp32 - 0.02
    assert variants["tflite-int8"]["size_bytes"] <= 0.35 * variants["tflite-fp32"]["size_bytes"]

    edgetpu = variants["edgetpu"]
    assert edgetpu["format"] == "edgetpu" and edgetpu["parent"] == variants["tflite-int8"]["id"]
    assert edgetpu["profiles"] == ["coral-edgetpu"]

    coreml = {k: v for k, v in variants.items() if v["format"] == "coreml"}
    assert {"coreml-fp16", "coreml-int8", "coreml-palettize-4bit"} <= set(coreml)
    assert coreml["coreml-palettize-4bit"]["size_bytes"] < coreml["coreml-fp16"]["size_bytes"] / 2
    assert all(v["metrics"]["agreement"] is None for v in coreml.values())  # Core ML predicts on macOS only

    trt = {k: v for k, v in variants.items() if v["format"] == "tensorrt"}
    assert set(trt) - {"tensorrt-int8-guarded"} == {"tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8"}
    assert trt["tensorrt-int8"]["metrics"]["accuracy"] >= fp32 - 0.01
    assert all("jetson-orin-nano" in v["profiles"] for v in trt.values())


def test_onnx_source_skips_torch_only_formats_with_a_reason(tiny_mlp, hub_home):
    result = CliRunner().invoke(cli, ["publish", str(tiny_mlp["onnx"]), "--name", "onnx-only",
                                      "--eval", str(tiny_mlp["eval"]), "--profile", "rpi5", "--json"])
    assert result.exit_code == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    skipped = {s["variant"]: s for s in data["skipped"]}
    assert {"tflite-fp32", "tflite-fp16", "tflite-int8"} <= set(skipped)
    assert all("PyTorch" in s["reason"] for label, s in skipped.items() if label.startswith("tflite"))
    assert {v["label"] for v in data["variants"]} >= {"fp32", "int8-static-u8s8"}
