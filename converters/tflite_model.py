"""Reading .tflite files: their graph (ops in execution order, tensors, quantization), their
input/output specs, and running them with LiteRT for evaluation on the hub.

The graph is read from the flatbuffer with the schema module that ships with ai-edge-litert, so
no interpreter (and no delegate) is involved: what is listed is what the file holds.

Quantized I/O: a full-int8 model takes and returns int8 tensors with a scale and zero point.
edgehub presents such tensors as float32 everywhere (artifact specs, the agent's sessions,
evaluation here): floats are quantized on the way in and dequantized on the way out with the
model's own parameters, so reference outputs, eval sets and applications need no change. The
raw types and parameters are kept in the artifact's notes ("io_quantization").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgehub.converters.artifact import Artifact, TensorSpec
from edgehub.converters.errors import ConversionError
from edgehub.protocol.formats import TFLITE

TFLITE_IDENTIFIER = b"TFL3"

# schema TensorType -> numpy dtype name
_DTYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "str", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 15: "uint32",
    16: "uint16", 17: "int4", 18: "bfloat16", 19: "int2",
}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # -1 marks a dynamic dimension
    constant: bool  # backed by data in the file (weights, biases, shape operands)
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    data: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def quantized(self) -> bool:
        return bool(self.scale)


@dataclass(frozen=True)
class OpInfo:
    index: int  # position in execution order
    name: str  # builtin operator name ("CONV_2D"), or "CUSTOM:<code>"
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    options: dict


@dataclass(frozen=True)
class TfliteGraph:
    ops: tuple[OpInfo, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    subgraphs: int


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _options(op) -> dict:
    """The builtin options as a plain dict (field name -> value), numbers and lists only."""
    opts = op.builtinOptions
    if opts is None:
        return {}
    out = {}
    for key, value in vars(opts).items():
        if isinstance(value, (int, float, bool)):
            out[key] = value
        elif isinstance(value, (list, np.ndarray)):
            out[key] = [int(v) for v in value]
    return out


def read_tflite(path: Path) -> TfliteGraph:
    """Parse the main subgraph of a .tflite file; ConversionError for anything else."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise ConversionError(f"{path.name}: not a TFLite model (no TFL3 identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as exc:  # flatbuffers raises assorted errors on corrupt input
        raise ConversionError(f"{path.name}: corrupt TFLite flatbuffer ({type(exc).__name__})") from None
    if not model.subgraphs:
        raise ConversionError(f"{path.name}: TFLite model has no subgraph")
    names = _builtin_names()
    graph = model.subgraphs[0]
    buffers = model.buffers or []

    def tensor(i: int) -> TensorInfo:
        t = graph.tensors[i]
        data = buffers[t.buffer].data if 0 < t.buffer < len(buffers) else None
        constant = data is not None and len(data) > 0
        q = t.quantization
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
        return TensorInfo(
            index=i, name=(t.name.decode() if isinstance(t.name, bytes) else t.name) or f"tensor{i}",
            dtype=_DTYPES.get(t.type, f"type{t.type}"), shape=shape, shape_signature=signature,
            constant=constant,
            scale=tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else (),
            zero_point=tuple(int(z) for z in q.zeroPoint) if q is not None and q.zeroPoint is not None else (),
            data=np.asarray(data, dtype=np.uint8) if constant else None,
        )

    ops = []
    for position, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            name = f"CUSTOM:{custom}"
        ops.append(OpInfo(
            index=position, name=name,
            inputs=tuple(tensor(i) for i in (op.inputs if op.inputs is not None else ()) if i >= 0),
            outputs=tuple(tensor(i) for i in (op.outputs if op.outputs is not None else ())),
            options=_options(op),
        ))
    return TfliteGraph(
        ops=tuple(ops),
        inputs=tuple(tensor(i) for i in graph.inputs),
        outputs=tuple(tensor(i) for i in graph.outputs),
        subgraphs=len(model.subgraphs),
    )


def constant_values(t: TensorInfo) -> np.ndarray | None:
    """A constant tensor's values (e.g. the strides operand of STRIDED_SLICE)."""
    if t.data is None or t.dtype in ("str", "int4", "int2", "bfloat16"):
        return None
    return np.frombuffer(t.data.tobytes(), dtype=np.dtype(t.dtype)).reshape(t.shape or (-1,))


# ---- specs ---------------------------------------------------------------------------------------

def _signature_names(path: Path) -> tuple[list[str], list[str]] | None:
    """The serving signature's input/output names in tensor order, when the file has one."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return None
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_index_in = {d["index"]: name for name, d in runner.get_input_details().items()}
    by_index_out = {d["index"]: name for name, d in runner.get_output_details().items()}
    details_in = interpreter.get_input_details()
    details_out = interpreter.get_output_details()
    names_in = [by_index_in.get(d["index"], d["name"]) for d in details_in]
    names_out = [by_index_out.get(d["index"], d["name"]) for d in details_out]
    return names_in, names_out


def _float_view(t: TensorInfo) -> str:
    return "float32" if t.quantized and t.dtype in ("int8", "uint8", "int16") else t.dtype


def _shape(t: TensorInfo) -> list[int | str]:
    return [d if d >= 0 else ("batch" if i == 0 else f"dim{i}") for i, d in enumerate(t.shape_signature)]


def tflite_specs(path: Path, graph: TfliteGraph | None = None) -> tuple[list[TensorSpec], list[TensorSpec], dict]:
    """Input and output specs (float view of quantized I/O) and the I/O quantization notes."""
    graph = graph or read_tflite(path)
    names = _signature_names(path)
    in_names = names[0] if names else [t.name for t in graph.inputs]
    out_names = names[1] if names else [t.name for t in graph.outputs]
    io_quant: dict[str, dict] = {}
    inputs, outputs = [], []
    for specs, tensors, labels in ((inputs, graph.inputs, in_names), (outputs, graph.outputs, out_names)):
        for t, label in zip(tensors, labels):
            specs.append(TensorSpec(name=label, dtype=_float_view(t), shape=_shape(t)))
            if _float_view(t) != t.dtype:
                io_quant[label] = {"dtype": t.dtype, "scale": t.scale[0], "zero_point": t.zero_point[0]}
    return inputs, outputs, io_quant


def tflite_artifact(path: Path, precision: str, notes: dict | None = None) -> Artifact:
    """Describe a .tflite file as an Artifact (parsing it on the way)."""
    inputs, outputs, io_quant = tflite_specs(path)
    notes = dict(notes or {})
    if io_quant:
        notes["io_quantization"] = io_quant
    return Artifact(path=Path(path), format=TFLITE, precision=precision, inputs=inputs, outputs=outputs,
                    notes=notes)


# ---- running (hub-side evaluation) ------------------------------------------------------------------

def quantize(array: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    """Float -> int with the tensor's affine parameters, rounded and saturated."""
    info = np.iinfo(np.dtype(dtype))
    q = np.round(np.asarray(array, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(array, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def run_tflite(path: Path, inputs: dict[str, np.ndarray], threads: int = 0,
               layout: dict[str, list[int]] | None = None) -> list[np.ndarray]:
    """All outputs over all samples (first axis), one sample per invoke for fixed-batch models.

    `inputs` are keyed by the source model's input names (matched by position when the names
    differ); `layout` maps an input name to the axis permutation from the source layout to the
    variant's (channels-last I/O: [0, 2, 3, 1]), as recorded in the tflite pass's notes.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
    interpreter.allocate_tensors()
    in_details, out_details = interpreter.get_input_details(), interpreter.get_output_details()
    arrays = list(inputs.values())
    if len(arrays) != len(in_details):
        raise ConversionError(f"{Path(path).name} takes {len(in_details)} inputs, got {len(arrays)}")
    if layout:
        arrays = [np.transpose(a, layout[n]) if n in layout else a
                  for n, a in zip(inputs, arrays)]
    n = len(arrays[0])
    batch = int(in_details[0]["shape"][0]) if len(in_details[0]["shape"]) else 1
    step = batch if batch > 0 else n
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, step):
        count = min(step, n - start)
        for detail, array in zip(in_details, arrays):
            part = array[start:start + count]
            if count < step:  # pad the last chunk of a fixed-batch model
                part = np.concatenate([part, np.repeat(part[-1:], step - count, axis=0)])
            scale, zero_point = detail["quantization"]
            if scale and np.dtype(detail["dtype"]).kind in "iu" and part.dtype.kind == "f":
                part = quantize(part, np.dtype(detail["dtype"]).name, scale, zero_point)
            interpreter.set_tensor(detail["index"], np.ascontiguousarray(part, dtype=detail["dtype"]))
        interpreter.invoke()
        outs = []
        for detail in out_details:
            out = interpreter.get_tensor(detail["index"])[:count]
            scale, zero_point = detail["quantization"]
            outs.append(dequantize(out, scale, zero_point) if scale else out.copy())
        chunks.append(outs)
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(out_details))]
