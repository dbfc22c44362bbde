"""`edgehub publish` survives hostile models: evaluations run in a child process under limits.

Each hostile model (tests/support/fault_models.py) must make the publish fail with one clear line that
names the model and what happened, within the (small, test-sized) limit, leaving the registry,
the store and the work directory as they were, and no child process behind.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from db_counts import home_contents
from fault_models import good_mlp, hang, memory_hog, segfault_tflite

from edgehub.converters.errors import ConversionError
from edgehub.hub.cli import cli
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.eval_child import ENV_MEMORY, ENV_TIMEOUT, EvalLimits, EvalRunner
from edgehub.hub.publish.evaluate import EvalSpec
from edgehub.hub.publish.pipeline import PublishError, PublishOptions, publish
from edgehub.zoo.registry import Registry

TIMEOUT_S = 3  # the hang test's evaluation limit
MEMORY_MB = 1024  # the memory test's limit: above the runtime's floor, far below what the hog wants
SLACK_S = 30  # child start and publish set-up on a loaded 2-core machine

CRASHING_CHILD = """\
import ctypes, os, sys
from edgehub.hub.publish import eval_child

real, seen = eval_child._handle, []

def handle(job, cache):
    seen.append(job)
    if len(seen) == int(os.environ["EDGEHUB_TEST_CRASH_AT_JOB"]):
        ctypes.string_at(0)  # a real SIGSEGV, as from a runtime that reads a bad pointer
    return real(job, cache)

eval_child._handle = handle
sys.exit(eval_child.main())
"""


@pytest.fixture(scope="module")
def seeded(tiny_mlp, tmp_path_factory) -> Path:
    """A hub home that already holds one published model, so 'unchanged' means something."""
    home = tmp_path_factory.mktemp("isolation-home")
    result = CliRunner().invoke(cli, ["publish", str(tiny_mlp["onnx"]), "--name", "digits",
                                      "--eval", str(tiny_mlp["eval"]), "--home", str(home)])
    assert result.exit_code == 0, result.output
    return home


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory) -> Path:
    """Four samples for the fault models' [1, 8] input."""
    path = tmp_path_factory.mktemp("fault-eval") / "eval.npz"
    np.savez(path, x=np.ones((4, 8), np.float32))
    return path


def state(home: Path) -> tuple:
    work_dir = HubPaths.from_home(home).work_dir
    work = sorted(p.name for p in work_dir.iterdir()) if work_dir.exists() else []
    return home_contents(home), work


def children() -> set[int]:
    """This process's child processes, zombies included (an unreaped child is left behind too)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the command name, which is in parentheses and may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.add(int(entry.name))
    return found


def publish_fails(home: Path, *args: str, limit_s: float) -> str:
    """Run `edgehub publish`; it must fail within limit_s with one 'error:' line and change nothing."""
    before, before_children = state(home), children()
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["publish", *args, "--home", str(home)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error:"), message
    assert elapsed < limit_s, f"publish took {elapsed:.1f} s to fail: {message}"
    assert state(home) == before, "a failed publish changed the registry, the store or left its workdir"
    assert children() - before_children == set(), "an evaluation child was left behind"
    return message


def test_hanging_model_times_out(seeded, small_eval, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TIMEOUT, str(TIMEOUT_S))
    model = hang(tmp_path / "hang.onnx")
    message = publish_fails(seeded, str(model), "--name", "hang", "--eval", str(small_eval),
                            limit_s=TIMEOUT_S + SLACK_S)
    assert "hang.onnx" in message and f"timed out after {TIMEOUT_S} s" in message
    assert ENV_TIMEOUT in message  # says how to raise the limit


def test_memory_hog_runs_out_of_memory(seeded, small_eval, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MEMORY, str(MEMORY_MB))
    monkeypatch.setenv(ENV_TIMEOUT, "60")  # were the limit not enforced, fail rather than swap for ever
    model = memory_hog(tmp_path / "hog.onnx")
    message = publish_fails(seeded, str(model), "--name", "hog", "--eval", str(small_eval), limit_s=60)
    assert "hog.onnx" in message and f"ran out of memory (limit {MEMORY_MB} MB" in message


def test_limits_from_publish_options(seeded, small_eval, tmp_path):
    """The options take precedence over the environment; a failure is a PublishError, no commit."""
    model = hang(tmp_path / "spin.onnx")
    paths = HubPaths.from_home(seeded)
    before, before_children = state(seeded), children()
    registry = Registry(paths.db_url)
    started = time.monotonic()
    try:
        with pytest.raises(PublishError, match=r"spin: source \(spin.onnx\): evaluation timed out after 2 s"):
            publish(PublishOptions(source=str(model), name="spin", eval_path=small_eval, eval_timeout_s=2,
                                   eval_memory_mb=MEMORY_MB), paths, registry)
    finally:
        registry.close()
    assert time.monotonic() - started < 2 + SLACK_S
    assert state(seeded) == before and children() - before_children == set()


def test_crash_in_a_variant_evaluation(seeded, tiny_mlp, tmp_path, monkeypatch):
    """The child dies of SIGSEGV evaluating the third model (after the source and fp32 went
    well): the publish fails naming that model; nothing of the earlier variants is committed."""
    script = tmp_path / "crashing_child.py"
    script.write_text(CRASHING_CHILD)
    monkeypatch.setattr("edgehub.hub.publish.eval_child.CHILD_COMMAND", [sys.executable, str(script)])
    monkeypatch.setenv("EDGEHUB_TEST_CRASH_AT_JOB", "3")
    message = publish_fails(seeded, str(tiny_mlp["onnx"]), "--name", "crashy", "--eval", str(tiny_mlp["eval"]),
                            limit_s=SLACK_S)
    assert "crashy: fp16 (" in message and "crashed (signal 11, SIGSEGV)" in message


def test_real_runtime_segfault_is_reported_and_the_runner_recovers(tmp_path):
    """LiteRT itself dies of SIGSEGV on this model; the runner reports it and starts a new child."""
    pytest.importorskip("ai_edge_litert")
    crash = segfault_tflite(tmp_path / "segv.tflite")
    good, refs = good_mlp(tmp_path / "good.onnx")
    before = children()
    with EvalRunner(tmp_path / "work", EvalLimits(timeout_s=60, memory_mb=MEMORY_MB), "m") as runner:
        runner.set_inputs({"x": np.ones((1, 8), np.float32)})
        crashed = r"m: tflite-fp32 \(segv.tflite\): the runtime crashed \(signal 11, SIGSEGV\)"
        with pytest.raises(ConversionError, match=crashed):
            runner.run(crash, EvalSpec("tflite"), "tflite-fp32")
        with np.load(refs) as npz:
            runner.set_inputs({"x": npz["input.x"]})
            expected = npz["output.logits"]
        np.testing.assert_allclose(runner.run(good, EvalSpec("onnx"), "fp32")[0], expected, rtol=1e-4, atol=1e-5)
    assert children() - before == set()


def test_bad_limit_in_the_environment_is_one_clear_line(seeded, tiny_mlp, monkeypatch):
    monkeypatch.setenv(ENV_TIMEOUT, "soon")
    message = publish_fails(seeded, str(tiny_mlp["onnx"]), "--name", "x", "--eval", str(tiny_mlp["eval"]),
                            limit_s=SLACK_S)
    assert f"{ENV_TIMEOUT}='soon' is not a number" in message


def test_limits_from_the_command_line(seeded, small_eval, tmp_path):
    """`edgehub publish --eval-timeout S` bounds the evaluation like the environment variable does."""
    model = hang(tmp_path / "hang.onnx")
    message = publish_fails(seeded, str(model), "--name", "hang", "--eval", str(small_eval),
                            "--eval-timeout", str(TIMEOUT_S), limit_s=TIMEOUT_S + SLACK_S)
    assert f"timed out after {TIMEOUT_S} s" in message
    bad = CliRunner().invoke(cli, ["publish", str(model), "--name", "hang", "--eval", str(small_eval),
                                   "--eval-memory", "10", "--home", str(seeded)])
    assert bad.exit_code == 2 and "--eval-memory" in bad.output
