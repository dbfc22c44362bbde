"""The agent's runtime registry and its ONNX Runtime implementation (no torch in the agent)."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from paths import REPO_ROOT

from edgehub.agent import runtimes
from edgehub.agent.runtimes import RuntimeUnavailable, available_runtimes, onnxruntime_rt, runtime_for
from edgehub.agent.runtimes.onnxruntime_rt import choose_providers

AGENT_DIR = REPO_ROOT / "agent"


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    path = tmp_path_factory.mktemp("rt") / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(model, (torch.randn(2, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def test_onnxruntime_is_listed_with_its_version():
    import onnxruntime

    assert available_runtimes()["onnxruntime"] == onnxruntime.__version__
    assert runtime_for("onnx").name == "onnxruntime"
    assert runtime_for("ONNX").formats == ("onnx",)


def test_unknown_format_names_what_the_device_has():
    with pytest.raises(RuntimeUnavailable) as info:
        runtime_for("tensorrt")
    assert str(info.value).startswith("no runtime on this device runs tensorrt models (have: onnxruntime (onnx)")


def test_missing_onnxruntime_package_does_not_crash(monkeypatch):
    onnxruntime_rt._installed_version.cache_clear()
    monkeypatch.setattr(onnxruntime_rt.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    try:
        assert "onnxruntime" not in available_runtimes()
        with pytest.raises(RuntimeUnavailable, match=r"runs onnx models \(have: (?!onnxruntime)"):
            runtime_for("onnx")
        with pytest.raises(RuntimeUnavailable, match="not installed"):
            runtimes.RUNTIMES["onnxruntime"].version()
    finally:
        onnxruntime_rt._installed_version.cache_clear()


def test_provider_preference():
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(
        ["CPUExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider", "TensorrtExecutionProvider"]
    ) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CoreMLExecutionProvider", "CPUExecutionProvider"])[0] == "CoreMLExecutionProvider"


def test_session_specs_run_and_describe(mlp_onnx):
    import onnxruntime

    session = runtime_for("onnx").load(mlp_onnx, threads=1)
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("x", "float32", ["batch", 8])]
    assert [(s.name, s.dtype, s.shape) for s in session.outputs] == [("logits", "float32", ["batch", 4])]
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    (got,) = session.run({"x": x})
    (want,) = onnxruntime.InferenceSession(str(mlp_onnx)).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert session.describe() == {"providers": ["CPUExecutionProvider"], "threads": 1}


def test_importing_the_agent_pulls_in_no_heavy_library():
    code = (
        "import sys, edgehub.agent.benchmark, edgehub.agent.runtimes as r, edgehub.agent.bench_child\n"
        "assert r.available_runtimes()\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "heavy += [m for m in sys.modules if m.startswith(('edgehub.hub', 'edgehub.converters', 'edgehub.zoo'))]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _imported_modules(path: Path) -> set[str]:
    """Every module an agent source file imports, at any depth (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_agent_sources_import_nothing_forbidden():
    def forbidden(module: str) -> bool:
        return module.split(".")[0] in ("torch", "onnx") or module.startswith(
            ("edgehub.hub", "edgehub.converters", "edgehub.zoo"))

    offenders = sorted(
        f"{path.relative_to(AGENT_DIR)} imports {module}"
        for path in AGENT_DIR.rglob("*.py")
        for module in _imported_modules(path)
        if forbidden(module)
    )
    assert offenders == []
