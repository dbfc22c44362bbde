"""The wheel a user installs ships what the tests test: built from this checkout, it holds every
module of every part, and installed into fresh virtual environments (the agent extra alone, then
the hub extra) every module that extra promises imports there.

A device's environment gets no torch, onnx or SQLAlchemy; the hub's gets no LiteRT converter or
coremltools (their passes import them when they run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from paths import REPO_ROOT

PARTS = ("agent", "converters", "hub", "protocol", "zoo")
# Imported only where their optional runtime is installed (a Jetson's TensorRT).
NEEDS_OPTIONAL = ("edgehub.agent.runtimes.tensorrt_engine",)

IMPORT_ALL = """
import importlib, pkgutil, sys
failed = []
for part in sys.argv[1].split(","):
    package = importlib.import_module("edgehub." + part)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__") or info.name in sys.argv[2].split(","):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed) or "all imported")
"""


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: the fresh venv must import the installed wheel only."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PIP_NO_INPUT": "1"}


def source_modules() -> set[str]:
    found = set()
    for part in PARTS:
        for path in (REPO_ROOT / part).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add("edgehub/" + path.relative_to(REPO_ROOT).as_posix())
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(out), str(REPO_ROOT)], capture_output=True, text=True, timeout=600,
                           cwd=out, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert build.returncode == 0, build.stderr[-2000:]
    (found,) = out.glob("edgehub-*.whl")
    return found


def fresh_venv(where: Path, requirement: str, *extra: str) -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *extra, requirement], capture_output=True,
                             text=True, timeout=900, cwd=where, env=clean_env())
    assert install.returncode == 0, install.stderr[-2000:]
    return python


def import_everything(python: Path, parts: tuple[str, ...]) -> str:
    proc = subprocess.run([str(python), "-c", IMPORT_ALL, ",".join(parts), ",".join(NEEDS_OPTIONAL)],
                          capture_output=True, text=True, timeout=300, cwd=python.parents[1], env=clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.slow
def test_the_wheel_holds_every_module(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.endswith(".py")}
    missing = source_modules() - shipped
    assert not missing, f"not in the wheel: {sorted(missing)[:10]}"
    assert not any(n.startswith(("tests/", "bench/", "hub/", "agent/")) for n in shipped)


@pytest.mark.slow
def test_the_agent_extra_imports_every_agent_and_protocol_module(wheel, tmp_path):
    python = fresh_venv(tmp_path / "agent-venv", f"{wheel}[agent]")
    check = subprocess.run([str(python), "-c", textwrap.dedent("""
        import importlib.util
        print([n for n in ("torch", "onnx", "sqlalchemy", "sklearn") if importlib.util.find_spec(n)])
    """)], capture_output=True, text=True, timeout=60, env=clean_env())
    assert check.stdout.strip() == "[]", check.stdout + check.stderr
    assert import_everything(python, ("protocol", "agent")) == "all imported"
    helped = subprocess.run([str(python.parent / "edgehub"), "agent", "run", "--help"], capture_output=True,
                            text=True, timeout=60, env=clean_env())
    assert helped.returncode == 0 and "--config" in helped.stdout


@pytest.mark.slow
def test_the_hub_extra_imports_every_module(wheel, tmp_path):
    python = fresh_venv(tmp_path / "hub-venv", f"{wheel}[hub]", "torch==2.13.0")
    assert import_everything(python, PARTS) == "all imported"
