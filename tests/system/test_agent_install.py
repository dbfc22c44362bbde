"""The agent installs and runs without the hub's dependencies (torch, onnx, SQLAlchemy, ...)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from paths import REPO_ROOT

REPO = REPO_ROOT
HUB_ONLY = ("torch", "onnx", "onnxscript", "onnxslim", "sqlalchemy", "sklearn", "torch_pruning", "psycopg")

# Runs in a child interpreter: imports of hub-side packages fail, as on a device. `strict` also
# blocks edgehub's own hub-side modules (the agent must not even import them).
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
STRICT = {strict!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        hub_side = STRICT and (name.startswith(("edgehub.converters", "edgehub.zoo")) or (
            name.startswith("edgehub.hub.") and not name.startswith("edgehub.hub.cli")))
        if name.split(".")[0] in BLOCKED or hub_side:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: agent-only install)", name=name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str, strict: bool = True) -> subprocess.CompletedProcess:
    prelude = BLOCKER.format(blocked=HUB_ONLY, strict=strict)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_agent_modules_import_without_hub_dependencies():
    proc = run_blocked("""
        import edgehub.agent.daemon, edgehub.agent.cli, edgehub.agent.benchmark, edgehub.agent.bench_child
        import edgehub.agent.download, edgehub.agent.serving, edgehub.agent.reconciler
        from edgehub.agent.runtimes import available_runtimes
        assert "onnxruntime" in available_runtimes()
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cli_runs_agent_commands_and_names_the_missing_extra():
    proc = run_blocked("""
        import sys
        from click.testing import CliRunner
        from edgehub.hub.cli import cli
        help_result = CliRunner().invoke(cli, ["agent", "run", "--help"])
        assert help_result.exit_code == 0, help_result.output
        missing = CliRunner().invoke(cli, ["agent", "run", "--config", "nope.toml"])
        assert missing.exit_code != 0 and "nope.toml" in missing.output, missing.output
        publish = CliRunner().invoke(cli, ["publish", "m.onnx", "--name", "m", "--eval", "e.npz"])
        print(publish.exit_code, publish.stderr)
    """, strict=False)
    assert proc.returncode == 0, proc.stderr
    code, _, output = proc.stdout.partition(" ")
    assert code == "1" and "pip install 'edgehub[hub]'" in output and "Traceback" not in output
