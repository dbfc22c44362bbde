"""Facts about the device the agent runs on, reported in its state."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from edgehub.protocol.messages import Hardware


def ram_mb() -> int:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return int(pages * page_size / (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return 0


def accelerators() -> list[str]:
    found = []
    if Path("/dev/apex_0").exists():
        found.append("edgetpu-pcie")
    if Path("/dev/nvhost-ctrl-gpu").exists() or Path("/dev/nvidia0").exists():
        found.append("nvidia-gpu")
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        found.append("apple-neural-engine")
    return found


def emulation(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """What emulates this ARM CPU, or None on real hardware: under qemu user-mode emulation the
    machine says aarch64 while /proc/cpuinfo is the x86 host's (a real ARM CPU lists its
    implementer and part, never an x86 vendor_id)."""
    machine = platform.machine().lower()
    if not machine.startswith(("aarch64", "arm")):
        return None
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    if re.search(r"^vendor_id\s*:\s*(GenuineIntel|AuthenticAMD)", text, re.MULTILINE):
        return f"qemu-user ({machine} on x86_64)"
    return None


def hardware() -> Hardware:
    return Hardware(arch=platform.machine() or "unknown", cores=os.cpu_count() or 1,
                    ram_mb=max(ram_mb(), 1), accelerators=accelerators(), emulated=emulation())
