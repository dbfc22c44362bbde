"""Device profiles: the built-ins, user files, and their error messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgehub.zoo.profiles import (
    BUILTIN_PROFILES,
    Profile,
    ProfileError,
    get_profile,
    load_profiles,
)

EXPECTED = {
    "x86-cpu",
    "arm64-cpu",
    "rpi4",
    "rpi5",
    "jetson-orin-nano",
    "jetson-xavier-nx",
    "jetson-nano",
    "coral-edgetpu",
    "apple-coreml",
}


def test_builtins_are_valid_and_complete() -> None:
    assert set(BUILTIN_PROFILES) == EXPECTED
    for name, profile in BUILTIN_PROFILES.items():
        assert profile.name == name
        assert Profile.model_validate(profile.model_dump()) == profile
        assert profile.formats and all(f == f.lower() for f in profile.formats)
        assert set(profile.precisions) <= {"fp32", "fp16", "int8", "int4"}
        assert profile.memory_limit_mb is None or profile.memory_limit_mb < profile.ram_mb


def test_builtin_facts() -> None:
    p = BUILTIN_PROFILES
    assert p["x86-cpu"].arch == "x86_64" and p["x86-cpu"].runtime == "onnxruntime-cpu"
    assert p["x86-cpu"].int8_scheme == "reduce_range"
    assert p["rpi4"].ram_mb == 4096 and "cortex-a72" in p["rpi4"].tags
    assert p["rpi5"].ram_mb == 8192 and "cortex-a76" in p["rpi5"].tags
    for name in ("rpi4", "rpi5", "arm64-cpu"):
        assert p[name].formats == ["onnx", "tflite"] and p[name].arch == "aarch64"
    orin = p["jetson-orin-nano"]
    assert (orin.runtime, orin.ram_mb, orin.int8_scheme) == ("tensorrt", 8192, "s8s8-symmetric")
    assert orin.precisions == ["fp32", "fp16", "int8"]
    assert "int8" not in p["jetson-nano"].precisions and p["jetson-nano"].ram_mb == 4096
    coral = p["coral-edgetpu"]
    assert coral.precisions == ["int8"] and coral.ram_mb == 1024
    assert set(coral.formats) == {"tflite", "edgetpu"} and "edgetpu" in coral.accelerators
    assert p["apple-coreml"].formats == ["coreml"]
    assert p["apple-coreml"].precisions == ["fp16", "int8", "int4"]


def test_unknown_profile_message() -> None:
    with pytest.raises(ProfileError) as info:
        get_profile("rpi9")
    message = str(info.value)
    assert message.startswith("unknown profile 'rpi9'; known: apple-coreml, arm64-cpu, ")
    assert message.endswith("(see `edgehub profiles list`)")
    assert get_profile("rpi5") is BUILTIN_PROFILES["rpi5"]


def test_toml_user_profiles_with_extends(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(
        """
[[profiles]]
name = "rpi5-kiosk"
extends = "rpi5"
description = "Pi 5 in the lobby kiosk, shares RAM with a browser"
memory_limit_mb = 1024
tags = ["kiosk"]

[[profiles]]
name = "kiosk-lite"
extends = "rpi5-kiosk"
formats = ["TFLite"]

[[profiles]]
name = "n100"
runtime = "onnxruntime-cpu"
arch = "x86_64"
ram_mb = 16384
formats = ["onnx"]
precisions = ["fp32", "int8"]
int8_scheme = "u8s8"
"""
    )
    profiles = load_profiles(path)
    assert EXPECTED < set(profiles)
    kiosk = get_profile("rpi5-kiosk", profiles)
    base = BUILTIN_PROFILES["rpi5"]
    assert kiosk.memory_limit_mb == 1024 and kiosk.tags == ["kiosk"]
    assert (kiosk.ram_mb, kiosk.formats, kiosk.runtime) == (base.ram_mb, base.formats, base.runtime)
    assert profiles["kiosk-lite"].formats == ["tflite"]  # normalised to lower case
    assert profiles["kiosk-lite"].memory_limit_mb == 1024
    assert profiles["n100"].int8_scheme == "u8s8" and profiles["n100"].accelerators == []
    assert load_profiles() == BUILTIN_PROFILES  # built-ins untouched


def test_toml_table_form(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[profiles.orin-agx]\nextends = "jetson-orin-nano"\nram_mb = 32768\n')
    profiles = load_profiles(path)
    assert profiles["orin-agx"].ram_mb == 32768
    assert profiles["orin-agx"].int8_scheme == "s8s8-symmetric"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[[profiles]\nname=", "not valid TOML"),
        ('title = "x"\n', "top-level 'profiles'"),
        ("profiles = 3\n", "must be a list or a table"),
        ('[[profiles]]\ndescription = "no name"\n', "with a string 'name'"),
        ('[[profiles]]\nname = "a"\nextends = "rpi9"\n', "extends unknown profile 'rpi9'"),
        ('[[profiles]]\nname = "a"\nextends = "rpi5"\nprecision = ["fp32"]\n', "precision"),
        ('[[profiles]]\nname = "a"\nextends = "rpi5"\nram_mb = "lots"\n', "ram_mb"),
        ('[[profiles]]\nname = "a"\nextends = "rpi5"\nint8_scheme = "fast"\n', "int8_scheme"),
        ('[[profiles]]\nname = "a"\nruntime = "x"\n', "arch"),
        ('[[profiles]]\nname = "a"\nextends = "rpi5"\n[[profiles]]\nname = "a"\nextends = "rpi4"\n',
         "defined twice"),
        ('[[profiles]]\nname = "Bad Name"\nextends = "rpi5"\n', "name"),
    ],
)
def test_bad_file_gives_one_line_error(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(content)
    with pytest.raises(ProfileError) as info:
        load_profiles(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_missing_or_unsupported_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "nope.toml")
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ProfileError, match="use .toml or .yaml"):
        load_profiles(tmp_path / "p.json")


def test_yaml_profiles(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  - name: rpi5-lab\n    extends: rpi5\n    ram_mb: 4096\n")
    if importlib.util.find_spec("yaml") is None:
        with pytest.raises(ProfileError, match="PyYAML"):
            load_profiles(path)
    else:
        assert load_profiles(path)["rpi5-lab"].ram_mb == 4096
