"""The agent tells an emulated ARM CPU from real hardware (its timings are labelled so)."""

from __future__ import annotations

import platform

from edgehub.agent.hardware import emulation, hardware

X86_HOST = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\n"
RASPBERRY_PI_5 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n" \
                 "CPU architecture: 8\nCPU part\t: 0xd0b\n"


def test_aarch64_with_an_x86_cpuinfo_is_emulated(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(X86_HOST)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert emulation(info) == "qemu-user (aarch64 on x86_64)"
    info.write_text(RASPBERRY_PI_5)
    assert emulation(info) is None
    assert emulation(tmp_path / "missing") is None  # unreadable: not claimed either way


def test_x86_is_never_called_emulated(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(X86_HOST)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert emulation(info) is None


def test_this_machine_reports_its_real_hardware():
    found = hardware()
    assert found.arch == platform.machine() and found.cores >= 1
    assert found.emulated is None or found.arch.startswith(("aarch64", "arm"))
