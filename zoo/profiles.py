"""Device profiles: what a class of device runs, so the hub knows which variants to build."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgehub.zoo.config_files import read_toml_or_yaml

Int8Scheme = Literal["u8s8", "reduce_range", "u8u8", "s8s8-symmetric"]


class ProfileError(ValueError):
    """An unknown profile name or an invalid profiles file (the message is one line)."""


def _lower_unique(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        value = value.strip().lower()
        if not value:
            raise ValueError("empty entry")
        if value not in out:
            out.append(value)
    return out


class Profile(BaseModel):
    """One class of device: its runtime, hardware facts, and which formats/precisions it takes."""

    # extra="forbid": a typo in a user profile ("precision = ...") is an error, not ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    description: str = ""
    runtime: str  # "onnxruntime-cpu", "tensorrt", "litert", "litert-edgetpu", "coreml", ...
    arch: str  # as platform.machine() reports it: "x86_64", "aarch64", "arm64" (macOS)
    ram_mb: int = Field(gt=0)
    accelerators: list[str] = Field(default_factory=list)
    formats: list[str] = Field(min_length=1)  # "onnx", "tflite", "edgetpu", "coreml"
    precisions: list[str] = Field(min_length=1)  # "fp32", "fp16", "int8", "int4"
    memory_limit_mb: int | None = Field(default=None, gt=0)  # default per-candidate limit
    # Which int8 kernel scheme ONNX Runtime / TensorRT need on this device: x86 without VNNI
    # saturates U8S8 (hence reduce_range), TensorRT only takes symmetric s8s8 QDQ.
    int8_scheme: Int8Scheme = "reduce_range"
    tags: list[str] = Field(default_factory=list)
    # The agent runtimes such a device is expected to report (edgehub.agent.runtimes names), best
    # first; informative: what a device can run is what its agent reports.
    runtimes: list[str] = Field(default_factory=list)
    # Engine builds on the device (TensorRT): workspace memory and NVDLA cores available.
    tensorrt_workspace_mb: int | None = Field(default=None, gt=0)
    dla_cores: int = Field(default=0, ge=0)
    # A (variant, settings) pair that asks for an accelerator provider and gets less than this
    # share of the graph onto it is flagged and not chosen (None: no floor).
    min_accelerator_coverage: float | None = Field(default=None, ge=0, le=1)
    # Core ML: the oldest OS the packages must load on (mlprogram + palettes need macOS 13 / iOS 16).
    coreml_target: str | None = None

    @field_validator("formats", "precisions")
    @classmethod
    def _normalise(cls, values: list[str]) -> list[str]:
        return _lower_unique(values)


# Facts from the vendors' spec sheets; memory_limit_mb leaves room for the OS and the agent.
_BUILTINS = [
    Profile(
        name="x86-cpu",
        description="Generic x86_64 machine, ONNX Runtime on the CPU",
        runtime="onnxruntime-cpu",
        arch="x86_64",
        ram_mb=8192,
        formats=["onnx"],
        precisions=["fp32", "fp16", "int8"],
        memory_limit_mb=4096,
        int8_scheme="reduce_range",  # safe without VNNI; VNNI machines lose nothing but range
        tags=["cpu", "x86"],
        runtimes=["onnxruntime"],
    ),
    Profile(
        name="arm64-cpu",
        description="Generic 64-bit ARM Linux board, ONNX Runtime CPU or LiteRT with XNNPACK",
        runtime="onnxruntime-cpu",
        arch="aarch64",
        ram_mb=4096,
        formats=["onnx", "tflite"],
        precisions=["fp32", "fp16", "int8"],
        memory_limit_mb=2048,
        int8_scheme="u8s8",  # the U8S8 saturation problem is x86-only; ARM kernels are exact
        tags=["cpu", "arm64"],
        runtimes=["onnxruntime", "litert"],
    ),
    Profile(
        name="rpi4",
        description="Raspberry Pi 4 Model B, 4x Cortex-A72 @ 1.5-1.8 GHz, 4 GB",
        runtime="onnxruntime-cpu",
        arch="aarch64",
        ram_mb=4096,
        formats=["onnx", "tflite"],
        # Cortex-A72 (ARMv8.0) has no fp16 arithmetic: fp16 variants save size, not time.
        precisions=["fp32", "fp16", "int8"],
        memory_limit_mb=1536,
        int8_scheme="u8s8",
        tags=["cpu", "arm64", "raspberry-pi", "cortex-a72"],
        runtimes=["onnxruntime", "litert"],
    ),
    Profile(
        name="rpi5",
        description="Raspberry Pi 5, 4x Cortex-A76 @ 2.4 GHz, 8 GB",
        runtime="onnxruntime-cpu",
        arch="aarch64",
        ram_mb=8192,
        formats=["onnx", "tflite"],
        precisions=["fp32", "fp16", "int8"],
        memory_limit_mb=3072,
        int8_scheme="u8s8",
        tags=["cpu", "arm64", "raspberry-pi", "cortex-a76", "dotprod", "fp16-arith"],
        runtimes=["onnxruntime", "litert"],
    ),
    Profile(
        name="jetson-orin-nano",
        description="Jetson Orin Nano 8 GB: 6x Cortex-A78AE, 1024-core Ampere GPU (sm_87)",
        runtime="tensorrt",
        arch="aarch64",
        ram_mb=8192,  # shared between CPU and GPU
        accelerators=["gpu-ampere-sm87"],
        formats=["onnx", "tensorrt"],
        precisions=["fp32", "fp16", "int8"],
        memory_limit_mb=3072,
        int8_scheme="s8s8-symmetric",
        tags=["gpu", "jetson", "cuda"],
        runtimes=["tensorrt", "onnxruntime"],  # JetPack 6: TensorRT 10
        tensorrt_workspace_mb=1024,
    ),
    Profile(
        name="jetson-xavier-nx",
        description="Jetson Xavier NX 8 GB: 6x Carmel, 384-core Volta GPU (sm_72), 2x NVDLA",
        runtime="tensorrt",
        arch="aarch64",
        ram_mb=8192,
        accelerators=["gpu-volta-sm72", "nvdla"],
        formats=["onnx", "tensorrt"],
        precisions=["fp32", "fp16", "int8"],
        memory_limit_mb=3072,
        int8_scheme="s8s8-symmetric",
        tags=["gpu", "jetson", "cuda"],
        runtimes=["tensorrt", "onnxruntime"],  # JetPack 5: TensorRT 8.5
        tensorrt_workspace_mb=1024,
        dla_cores=2,
    ),
    Profile(
        name="jetson-nano",
        description="Jetson Nano 4 GB: 4x Cortex-A57, 128-core Maxwell GPU (sm_53), TensorRT",
        runtime="tensorrt",
        arch="aarch64",
        ram_mb=4096,
        accelerators=["gpu-maxwell-sm53"],
        formats=["onnx", "tensorrt"],
        precisions=["fp32", "fp16"],  # Maxwell has no fast int8 path in TensorRT
        memory_limit_mb=1536,
        int8_scheme="s8s8-symmetric",
        tags=["gpu", "jetson", "cuda"],
        runtimes=["tensorrt", "onnxruntime"],  # JetPack 4.6: TensorRT 8.2 (no I/O-tensor API)
        tensorrt_workspace_mb=512,
    ),
    Profile(
        name="coral-edgetpu",
        description="Coral Dev Board: NXP i.MX 8M (4x Cortex-A53), 1 GB, Edge TPU (4 TOPS int8)",
        runtime="litert-edgetpu",
        arch="aarch64",
        ram_mb=1024,
        accelerators=["edgetpu"],
        formats=["tflite", "edgetpu"],
        precisions=["int8"],  # the Edge TPU runs only fully int8-quantized graphs
        memory_limit_mb=512,
        int8_scheme="u8s8",  # for any ONNX int8 run on its ARM CPU; TFLite has its own scheme
        tags=["tpu", "coral", "arm64"],
        runtimes=["edgetpu", "litert"],
    ),
    Profile(
        name="apple-coreml",
        description="Apple silicon Mac (M1 or later): Core ML on CPU, GPU and Neural Engine",
        runtime="coreml",
        arch="arm64",  # what platform.machine() reports on macOS
        ram_mb=8192,
        accelerators=["apple-gpu", "apple-neural-engine"],
        formats=["coreml"],
        precisions=["fp16", "int8", "int4"],
        memory_limit_mb=4096,
        int8_scheme="u8s8",  # only used if ONNX int8 is ever run on its ARM CPU
        tags=["apple", "arm64", "ane"],
        runtimes=["coreml", "onnxruntime"],
        coreml_target="macOS13",
    ),
]

BUILTIN_PROFILES: dict[str, Profile] = {p.name: p for p in _BUILTINS}


def _entries(path: Path, data: Any) -> list[dict[str, Any]]:
    """Normalise `profiles = [...]` or `[profiles.<name>]` into a list of dicts with a name."""
    if not isinstance(data, dict) or "profiles" not in data:
        raise ProfileError(f"{path}: expected a top-level 'profiles' list or table")
    raw = data["profiles"]
    if isinstance(raw, dict):
        entries = []
        for name, body in raw.items():
            if not isinstance(body, dict):
                raise ProfileError(f"{path}: profile {name!r} must be a table")
            if "name" in body and body["name"] != name:
                raise ProfileError(
                    f"{path}: profile {name!r} has a different name {body['name']!r}"
                )
            entries.append({**body, "name": name})
        return entries
    if isinstance(raw, list):
        for index, body in enumerate(raw):
            if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                raise ProfileError(
                    f"{path}: profiles[{index}] must be a table with a string 'name'"
                )
        return [dict(body) for body in raw]
    raise ProfileError(f"{path}: 'profiles' must be a list or a table, not {type(raw).__name__}")


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(loc) for loc in err["loc"]) or "profile"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Built-in profiles plus those in `path` (TOML, or YAML when PyYAML is installed).

    A user profile may say `extends = "<name>"` to start from a built-in (or an earlier
    profile in the same file) and override only some fields. A user profile with a built-in's
    name replaces it.
    """
    profiles = dict(BUILTIN_PROFILES)
    if path is None:
        return profiles
    path = Path(path)
    seen: set[str] = set()
    for body in _entries(path, read_toml_or_yaml(path, "profiles", ProfileError)):
        name = body["name"]
        if name in seen:
            raise ProfileError(f"{path}: profile {name!r} is defined twice")
        seen.add(name)
        fields = dict(body)
        base_name = fields.pop("extends", None)
        if base_name is not None:
            if base_name not in profiles:
                raise ProfileError(
                    f"{path}: profile {name!r} extends unknown profile {base_name!r}; "
                    f"known: {', '.join(sorted(profiles))}"
                )
            fields = {**profiles[base_name].model_dump(), **fields}
        try:
            profiles[name] = Profile(**fields)
        except ValidationError as exc:
            raise ProfileError(f"{path}: profile {name!r}: {_one_line(exc)}") from exc
    return profiles


def get_profile(name: str, profiles: dict[str, Profile] | None = None) -> Profile:
    """Look a profile up by name; the error lists the known names."""
    profiles = BUILTIN_PROFILES if profiles is None else profiles
    try:
        return profiles[name]
    except KeyError:
        raise ProfileError(
            f"unknown profile {name!r}; known: {', '.join(sorted(profiles))} "
            "(see `edgehub profiles list`)"
        ) from None


__all__ = [
    "BUILTIN_PROFILES",
    "Int8Scheme",
    "Profile",
    "ProfileError",
    "get_profile",
    "load_profiles",
]
