"""Metrics that fit the output, through `edgehub publish`: a task metric of the publisher's own
(--metric, run in the evaluation child) scores the variants and feeds the gate; an embedding model
gets cosine and errors, never a top-1 agreement over its dimensions; bad metrics fail in one line
and register nothing."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from edgehub.hub.cli import cli


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def metric_module(tmp_path, monkeypatch):
    """A module of task metrics in the working directory, where the evaluation child imports it."""
    (tmp_path / "task_metrics.py").write_text(textwrap.dedent('''
        import numpy as np

        def top2(outputs, data):
            """Share of samples whose label is among the two highest scores."""
            top = np.argsort(outputs[0], axis=1)[:, -2:]
            return float((top == data["y"][:, None]).any(axis=1).mean())

        def weighted(outputs, data):
            """Accuracy weighted by a per-sample weight array of the eval file."""
            hit = outputs[0].argmax(1) == data["y"]
            return float((hit * data["w"]).sum() / data["w"].sum())

        def broken(outputs, data):
            raise KeyError("boxes")

        def not_a_number(outputs, data):
            return float("nan")
    '''))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_task_metric_scores_every_variant_and_its_drop_is_recorded(tiny_mlp, hub_home, metric_module):
    code, out, err = run_cli("publish", str(tiny_mlp["onnx"]), "--name", "digits-task", "--eval", str(tiny_mlp["eval"]),
                             "--metric", "task_metrics:top2", "--json")
    assert code == 0, err
    variants = {v["label"]: v for v in json.loads(out)["variants"]}
    fp32 = variants["fp32"]["metrics"]
    expected = float((np.argsort(_outputs_fp32(tiny_mlp), axis=1)[:, -2:] == tiny_mlp["y"][:, None]).any(1).mean())
    assert fp32["task"] == pytest.approx(expected, abs=1e-6) and fp32["task_drop"] == 0.0
    for v in variants.values():
        assert v["metrics"]["task_drop"] == pytest.approx(fp32["task"] - v["metrics"]["task"], abs=1e-5)
    static = variants["int8-static"]["recipe"][-1]["notes"]
    assert static.get("eval_before_rounding", {}).get("unit") in (None, "task")


def _outputs_fp32(model):
    from edgehub.hub.publish.evaluate import run_onnx

    return run_onnx(model["onnx"], {"x": model["x"]})[0]


def test_targets_other_than_labels_reach_the_metric(tiny_mlp, hub_home, metric_module):
    weights = np.linspace(0.1, 1.0, len(tiny_mlp["y"])).astype(np.float32)
    np.savez(metric_module / "weighted.npz", x=tiny_mlp["x"], y=tiny_mlp["y"], w=weights)
    code, out, err = run_cli("publish", str(tiny_mlp["onnx"]), "--name", "digits-weighted",
                             "--eval", str(metric_module / "weighted.npz"), "--metric", "task_metrics:weighted", "--json")
    assert code == 0, err
    fp32 = {v["label"]: v for v in json.loads(out)["variants"]}["fp32"]["metrics"]
    hit = _outputs_fp32(tiny_mlp).argmax(1) == tiny_mlp["y"]
    assert fp32["task"] == pytest.approx(float((hit * weights).sum() / weights.sum()), abs=1e-5)
    # Without a metric, an unknown key is still an error, as before.
    code, _, err = run_cli("publish", str(tiny_mlp["onnx"]), "--name", "digits-weighted-2",
                           "--eval", str(metric_module / "weighted.npz"))
    assert code == 1 and "unknown key(s) w" in err


@pytest.mark.parametrize(("metric", "message"), [
    ("task_metrics", "expected 'package.module:function'"),
    ("no_such_module:f", "cannot import no_such_module"),
    ("task_metrics:missing", "task_metrics has no missing"),
    ("task_metrics:broken", "failed: KeyError"),
    ("task_metrics:not_a_number", "not a finite number"),
])
def test_a_bad_metric_is_one_line_and_registers_nothing(tiny_mlp, hub_home, metric_module, metric, message):
    code, _, err = run_cli("publish", str(tiny_mlp["onnx"]), "--name", "digits-bad", "--eval", str(tiny_mlp["eval"]),
                           "--metric", metric, "--json")  # --json: the progress display leaves no line behind
    assert code == 1 and message in err, err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run_cli("zoo", "list", "--json")
    assert "digits-bad" not in out


def test_an_embedding_model_is_scored_by_cosine_not_top1(tmp_path, hub_home):
    import torch

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 48)).eval()
    x = np.random.default_rng(0).normal(size=(200, 32)).astype(np.float32)
    torch.onnx.export(encoder, (torch.from_numpy(x[:2]),), str(tmp_path / "enc.onnx"), input_names=["x"],
                      output_names=["sentence_embedding"], dynamic_axes={"x": {0: "n"}, "sentence_embedding": {0: "n"}},
                      opset_version=17, dynamo=False)
    np.savez(tmp_path / "enc.npz", x=x)
    code, out, err = run_cli("publish", str(tmp_path / "enc.onnx"), "--name", "encoder", "--eval", str(tmp_path / "enc.npz"),
                             "--json")
    assert code == 0, err
    for v in json.loads(out)["variants"]:
        metrics = v["metrics"]
        assert metrics["agreement"] is None, v["label"]
        assert metrics["cosine"] > 0.95 and metrics["max_abs_error"] >= metrics["mean_abs_error"] >= 0
