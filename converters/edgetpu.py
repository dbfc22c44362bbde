"""Edge TPU: an op-by-op compatibility report for a full-int8 .tflite, and the compiler call.

The report applies the documented requirements of the Edge TPU compiler (coral.ai, "TensorFlow
models on the Edge TPU"): every tensor 8-bit quantized, static shapes, at most 3 dimensions
larger than 1, only the supported operations with their listed limits. The compiler maps one
contiguous segment: the first operation it cannot run, and everything after it, runs on the CPU.

`edgetpu_compiler` is only distributed from Coral's own apt repository; where it is on PATH,
`compile_for_edgetpu` runs it (`edgetpu_compiler -o OUT_DIR -s -t TIMEOUT model.tflite`) and
reads the files it writes (OUT_DIR/<stem>_edgetpu.tflite and <stem>_edgetpu.log).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from edgehub.converters.errors import ConversionError
from edgehub.converters.tflite_model import (
    OpInfo,
    TensorInfo,
    TfliteGraph,
    constant_values,
    read_tflite,
)

COMPILER_ENV = "EDGEHUB_EDGETPU_COMPILER"  # a path overriding the PATH lookup
MAX_LOG_CHARS = 20_000
SOFTMAX_MAX_ELEMENTS = 16_000
EIGHT_BIT = ("int8", "uint8")


# ---- the compatibility rules ------------------------------------------------------------------

def _no_fused_activation(op: OpInfo) -> str | None:
    if op.options.get("fusedActivationFunction", 0) != 0:
        return "fused activation functions are not supported on this operation"
    return None


def _same_dilation(op: OpInfo) -> str | None:
    if op.options.get("dilationHFactor", 1) != op.options.get("dilationWFactor", 1):
        return "dilation must be the same in x and y"
    return None


def _fully_connected(op: OpInfo) -> str | None:
    if op.options.get("weightsFormat", 0) != 0:
        return "only the default weights format is supported"
    return None


def _not_batch_axis(axis_input: int) -> Callable[[OpInfo], str | None]:
    def check(op: OpInfo) -> str | None:
        if len(op.inputs) <= axis_input:
            return None
        axes = constant_values(op.inputs[axis_input])
        if axes is None:
            return "the axis must be a compile-time constant"
        rank = len(op.inputs[0].shape)
        if any(int(a) % max(rank, 1) == 0 for a in axes.ravel()):
            return "cannot operate on the batch dimension"
        return None
    return check


def _axis_option_not_batch(op: OpInfo) -> str | None:
    if op.options.get("axis", 1) == 0:
        return "cannot operate on the batch dimension"
    return None


def _pad(op: OpInfo) -> str | None:
    paddings = constant_values(op.inputs[1]) if len(op.inputs) > 1 else None
    if paddings is None:
        return "paddings must be a compile-time constant"
    if paddings.ndim == 2 and len(paddings) and paddings[0].any():
        return "no padding in the batch dimension"
    return None


def _softmax(op: OpInfo) -> str | None:
    shape = op.inputs[0].shape
    if sum(1 for d in shape if d > 1) > 1:
        return "only 1-D inputs are supported"
    if shape and shape[-1] > SOFTMAX_MAX_ELEMENTS:
        return f"at most {SOFTMAX_MAX_ELEMENTS} elements"
    return None


def _strided_slice(op: OpInfo) -> str | None:
    strides = constant_values(op.inputs[3]) if len(op.inputs) > 3 else None
    if strides is None or (strides != 1).any():
        return "only strides of 1 are supported"
    if op.options.get("ellipsisMask", 0) or op.options.get("newAxisMask", 0):
        return "ellipsis and new-axis masks are not supported"
    return None


def _concatenation(op: OpInfo) -> str | None:
    reason = _no_fused_activation(op)
    if reason:
        return reason
    constants = [t for t in op.inputs if t.constant]
    if constants and (len(op.inputs) != 2 or any(constant_values(t) is None or constant_values(t).any()
                                                 for t in constants)):
        return "a constant input is only supported as the second of two all-zero inputs (zero padding)"
    return None


def _ok(op: OpInfo) -> str | None:
    return None


# Operation -> its documented limits (None: no limit beyond the general requirements).
SUPPORTED_OPS: dict[str, Callable[[OpInfo], str | None]] = {
    "ADD": _ok, "SUB": _ok, "MUL": _ok, "MAXIMUM": _ok, "MINIMUM": _ok, "SQUARED_DIFFERENCE": _ok,
    "LOGISTIC": _ok, "TANH": _ok, "RELU": _ok, "RELU6": _ok, "RELU_N1_TO_1": _ok, "HARD_SWISH": _ok,
    "L2_NORMALIZATION": _ok, "QUANTIZE": _ok, "RSQRT": _ok, "SLICE": _ok, "SPACE_TO_DEPTH": _ok,
    "DEPTH_TO_SPACE": _ok, "TRANSPOSE": _ok, "TRANSPOSE_CONV": _ok, "EXPAND_DIMS": _ok, "SQUEEZE": _ok,
    "RESHAPE": _ok, "RESIZE_BILINEAR": _ok, "RESIZE_NEAREST_NEIGHBOR": _ok, "PRELU": _ok, "GATHER": _ok,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": _ok,
    "AVERAGE_POOL_2D": _no_fused_activation, "MAX_POOL_2D": _no_fused_activation,
    "CONCATENATION": _concatenation, "CONV_2D": _same_dilation, "DEPTHWISE_CONV_2D": _same_dilation,
    "FULLY_CONNECTED": _fully_connected, "MEAN": _not_batch_axis(1), "SUM": _not_batch_axis(1),
    "REDUCE_MAX": _not_batch_axis(1), "REDUCE_MIN": _not_batch_axis(1), "PAD": _pad,
    "PACK": _axis_option_not_batch, "SPLIT": _not_batch_axis(0), "SOFTMAX": _softmax,
    "STRIDED_SLICE": _strided_slice,
}


def _tensor_problem(t: TensorInfo) -> str | None:
    if any(d < 0 for d in t.shape_signature):
        return f"tensor {t.name!r} has a dynamic size; the Edge TPU needs static shapes"
    if t.constant:
        if t.dtype in EIGHT_BIT or t.dtype == "int32":  # weights, biases, shape and axis operands
            return None
        return f"constant {t.name!r} is {t.dtype}; weights must be 8-bit quantized"
    if sum(1 for d in t.shape if d > 1) > 3:
        return f"tensor {t.name!r} {list(t.shape)} has more than 3 dimensions larger than 1"
    if t.dtype not in EIGHT_BIT or not t.quantized:
        return f"tensor {t.name!r} is {t.dtype}; the Edge TPU runs only 8-bit quantized tensors"
    return None


def op_problem(op: OpInfo) -> str | None:
    """Why the Edge TPU cannot run this operation, or None when it can."""
    check = SUPPORTED_OPS.get(op.name)
    if check is None:
        return f"{op.name} is not an operation the Edge TPU supports"
    # A QUANTIZE's input may be float: the Edge TPU runtime quantizes model inputs on the host.
    tensors = op.outputs if op.name == "QUANTIZE" else op.inputs + op.outputs
    for t in tensors:
        problem = _tensor_problem(t)
        if problem:
            return problem
    return check(op)


# ---- the report ---------------------------------------------------------------------------------

class OpVerdict(BaseModel):
    index: int
    op: str
    on_tpu: bool
    reason: str  # "mapped to the Edge TPU", or why it runs on the CPU


class EdgeTpuReport(BaseModel):
    ops: list[OpVerdict]
    subgraphs: int = 1

    @property
    def tpu_ops(self) -> int:
        return sum(v.on_tpu for v in self.ops)

    @property
    def first_cpu_op(self) -> OpVerdict | None:
        """The op that ends the Edge TPU segment (None if the segment runs to the end)."""
        started = False
        for v in self.ops:
            started = started or v.on_tpu
            if started and not v.on_tpu:
                return v
        return None

    def by_op(self) -> list[dict]:
        """Counts per (operation, status), in the style of the compiler's log table."""
        counts = Counter((v.op, "Mapped to Edge TPU" if v.on_tpu else v.reason) for v in self.ops)
        return [{"op": op, "count": n, "status": status} for (op, status), n in counts.items()]

    def summary(self) -> dict:
        first = self.first_cpu_op
        return {
            "ops": len(self.ops), "tpu_ops": self.tpu_ops, "cpu_ops": len(self.ops) - self.tpu_ops,
            "fully_mapped": bool(self.ops) and self.tpu_ops == len(self.ops),
            "first_cpu_op": None if first is None else f"#{first.index} {first.op}: {first.reason}",
            "by_op": self.by_op(),
        }


def edgetpu_op_report(model: TfliteGraph | Path) -> EdgeTpuReport:
    """Which operations the Edge TPU compiler will map, and for the others, why not."""
    graph = model if isinstance(model, TfliteGraph) else read_tflite(Path(model))
    verdicts: list[OpVerdict] = []
    segment = "before"  # before the TPU segment, in it, or after it
    blocker: OpInfo | None = None
    for op in graph.ops:
        problem = op_problem(op)
        if graph.subgraphs > 1 and problem is None:
            problem = "the model has more than one subgraph, which the compiler does not map"
        if segment == "after":
            reason = problem or (f"runs on the CPU because it follows #{blocker.index} {blocker.name}: "
                                 "the compiler maps one contiguous segment only")
            verdicts.append(OpVerdict(index=op.index, op=op.name, on_tpu=False, reason=reason))
            continue
        if problem is None:
            segment = "in"
            verdicts.append(OpVerdict(index=op.index, op=op.name, on_tpu=True, reason="mapped to the Edge TPU"))
        else:
            if segment == "in":
                segment, blocker = "after", op
            verdicts.append(OpVerdict(index=op.index, op=op.name, on_tpu=False, reason=problem))
    return EdgeTpuReport(ops=verdicts, subgraphs=graph.subgraphs)


# ---- the compiler ---------------------------------------------------------------------------------

class CompileResult(BaseModel):
    model_path: Path
    log_path: Path
    log_text: str
    compiler_version: str | None
    tpu_ops: int | None
    cpu_ops: int | None
    subgraphs: int | None
    operations: list[dict]  # the log's table: {"op", "count", "status"}
    stdout_tail: str


def find_edgetpu_compiler() -> Path | None:
    """$EDGEHUB_EDGETPU_COMPILER, else `edgetpu_compiler` on PATH."""
    override = os.environ.get(COMPILER_ENV)
    if override:
        return Path(override) if Path(override).is_file() and os.access(override, os.X_OK) else None
    found = shutil.which("edgetpu_compiler")
    return Path(found) if found else None


def _number(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def parse_compiler_output(stdout: str) -> dict:
    version = re.search(r"Edge TPU Compiler version\s+(\S+)", stdout)
    return {
        "compiler_version": version.group(1) if version else None,
        "tpu_ops": _number(r"Number of operations that will run on Edge TPU:\s*(\d+)", stdout),
        "cpu_ops": _number(r"Number of operations that will run on CPU:\s*(\d+)", stdout),
        "subgraphs": _number(r"Number of Edge TPU subgraphs:\s*(\d+)", stdout),
    }


def parse_compiler_log(text: str) -> list[dict]:
    """The 'Operator  Count  Status' table of <stem>_edgetpu.log."""
    rows, in_table = [], False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        match = re.match(r"^\s*([A-Z0-9_:\-]+)\s+(\d+)\s+(\S.*?)\s*$", line) if in_table else None
        if match:
            rows.append({"op": match.group(1), "count": int(match.group(2)), "status": match.group(3)})
    return rows


def compile_for_edgetpu(model: Path, out_dir: Path, *, compiler: Path | None = None, timeout_s: int = 180,
                        min_runtime_version: int | None = None) -> CompileResult:
    """Run edgetpu_compiler on a full-int8 .tflite; ConversionError with its reason if it fails."""
    compiler = compiler or find_edgetpu_compiler()
    if compiler is None:
        raise ConversionError("edgetpu_compiler is not on PATH (it comes from Coral's apt repository)")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(compiler), "-o", str(out_dir), "-s", "-t", str(timeout_s)]
    if min_runtime_version is not None:
        command += ["-m", str(min_runtime_version)]
    command.append(str(model))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 30, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"edgetpu_compiler did not finish within {timeout_s + 30} s") from None
    except OSError as exc:
        raise ConversionError(f"cannot run {compiler}: {exc.strerror or exc}") from None
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        last = [line for line in output.splitlines() if line.strip()][-3:]
        raise ConversionError(f"edgetpu_compiler failed (exit {done.returncode}): {' | '.join(last) or 'no output'}")
    stem = Path(model).stem
    compiled, log = out_dir / f"{stem}_edgetpu.tflite", out_dir / f"{stem}_edgetpu.log"
    missing = [p.name for p in (compiled, log) if not p.is_file()]
    if missing:
        raise ConversionError(f"edgetpu_compiler reported success but wrote no {', '.join(missing)} in {out_dir}")
    log_text = log.read_text(errors="replace")[:MAX_LOG_CHARS]
    return CompileResult(model_path=compiled, log_path=log, log_text=log_text,
                         operations=parse_compiler_log(log_text), stdout_tail=output[-4000:],
                         **parse_compiler_output(output))
