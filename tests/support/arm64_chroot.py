"""Run edgehub's agent code on aarch64 under qemu user-mode emulation, in the Debian arm64 root file
system that deploy/arm64/rootfs.sh builds (aarch64 CPython with the aarch64 wheels of the agent's
dependencies from PyPI).

The live source is used, not a copy: the checkout and the test's own directory are bind-mounted
at their own paths inside the root file system (in a private mount namespace, gone when the
process ends), and a folder of symlinks makes them the `edgehub` namespace package there.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from paths import REPO_ROOT

ROOT = Path(os.environ.get("EDGEHUB_ARM64_ROOT", "/var/tmp/edgehub-arm64"))
PYTHON = "/opt/edgehub/bin/python"
# tflite-runtime 2.14 with numpy < 2, no LiteRT or ONNX Runtime: an older board's stack (rootfs.sh).
TFLITE_PYTHON = "/opt/edgehub-tflite/bin/python"
PARTS = ("agent", "converters", "hub", "protocol", "zoo")


def unavailable(python: str = PYTHON) -> str | None:
    """Why the emulated arm64 runs (with `python`) cannot happen here, or None."""
    if not (ROOT / python.lstrip("/")).exists():
        return f"no arm64 root file system at {ROOT} (build it with deploy/arm64/rootfs.sh)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-aarch64 is not registered with binfmt_misc (deploy/arm64/rootfs.sh registers it)"
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) for the private mounts"
    return None


def source_tree(workdir: Path) -> Path:
    """A PYTHONPATH entry under `workdir` that maps edgehub.<part> onto the checkout's folders."""
    ns = workdir / "edgehub-src"
    (ns / "edgehub").mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        link = ns / "edgehub" / part
        if not link.exists():
            link.symlink_to(REPO_ROOT / part)
    return ns


def command(args: list[str], workdir: Path, env: dict[str, str] | None = None, python: str = PYTHON) -> list[str]:
    """argv that runs `python args...` on aarch64 with the live source and `workdir` visible.

    --kill-child: when this process is killed, the emulated one (PID 1 of its own PID namespace)
    and everything it started go with it. unshare ignores SIGTERM while it waits: stop it with
    SIGKILL.
    """
    workdir = workdir.resolve()
    pythonpath = source_tree(workdir)
    # No /sys: the host's CPU topology there (x86) makes cpuinfo in the aarch64 ONNX Runtime crash
    # under emulation (seen: SIGSEGV at import); without it, it falls back with a warning.
    mounts: list[str] = []
    for host in (REPO_ROOT.resolve(), workdir):
        mounts += [f"mkdir -p {shlex.quote(f'{ROOT}{host}')}",
                   f"mount --bind {shlex.quote(str(host))} {shlex.quote(f'{ROOT}{host}')}"]
    variables = {"PYTHONPATH": str(pythonpath), "HOME": "/root", "ORT_DISABLE_TELEMETRY": "1",
                 "PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})}
    inner = " ".join(["exec chroot", shlex.quote(str(ROOT)), "/usr/bin/env", "-i",
                      *(shlex.quote(f"{k}={v}") for k, v in variables.items()),
                      python, *map(shlex.quote, args)])
    script = " && ".join([*mounts, inner])
    return ["unshare", "--mount", "--propagation", "private", "--fork", "--pid", f"--mount-proc={ROOT}/proc",
            "--kill-child", "sh", "-c", script]
