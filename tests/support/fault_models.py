"""Model files built on purpose for the fault tests: a good one, and ones that break the runtime.

Every builder writes a real model file that the real runtime loads (or fails to): ONNX graphs
built with onnx.helper, a TFLite flatbuffer built with LiteRT's own schema.

    good_mlp        a small MLP, with reference inputs/outputs (the agent checks agreement)
    custom_op       an op from a domain no runtime knows ("com.example.crash::Boom")
    hang            a Loop with a 2**62 trip count: runs until the benchmark's time limit
    memory_hog      a Loop that doubles a tensor each turn: allocates past any memory limit
    segfault_tflite a graph input backed by a constant (read-only, memory-mapped) buffer: LiteRT
                    writes the input into it and the process dies with SIGSEGV
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def good_mlp(path: Path, hidden: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """An MLP 16 -> hidden -> 8 and its references (`<path>.refs.npz`: input.x, output.logits)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, hidden)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 8)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    _save(helper.make_model(graph, opset_imports=OPSET), path)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    logits = np.maximum(x @ w1, 0) @ w2
    refs = path.with_suffix(".refs.npz")
    with open(refs, "wb") as fh:
        np.savez(fh, **{"input.x": x, "output.logits": logits})
    return path, refs


def custom_op(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Boom", ["x"], ["logits"], domain="com.example.crash")], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("com.example.crash", 1)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())  # the checker rightly refuses it; the device gets it anyway
    return path


def _loop_model(path: Path, name: str, trip_count: int, body: onnx.GraphProto, start: np.ndarray) -> Path:
    nodes = [
        helper.make_node("Constant", [], ["M"], value=numpy_helper.from_array(np.array(trip_count, np.int64), "Mv")),
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "cv")),
        helper.make_node("Constant", [], ["v0"], value=numpy_helper.from_array(start, "v0v")),
        helper.make_node("Loop", ["M", "cond", "v0"], ["v_final"], body=body),
        helper.make_node("ReduceSum", ["v_final"], ["s"], keepdims=1),
        helper.make_node("Add", ["x", "s"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def _loop_body(name: str, step: list[onnx.NodeProto]) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), *step], name,
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])


def hang(path: Path) -> Path:
    """2**62 turns of v = v + 1: never finishes in any time budget."""
    one = helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array([1.0], np.float32), "onev"))
    body = _loop_body("spin", [one, helper.make_node("Add", ["v_in", "one"], ["v_out"])])
    return _loop_model(path, "hang", 2**62, body, np.zeros(1, np.float32))


def memory_hog(path: Path) -> Path:
    """v = concat(v, v) forty times from 1 MiB: 1 TiB if nothing stops it."""
    body = _loop_body("double", [helper.make_node("Concat", ["v_in", "v_in"], ["v_out"], axis=0)])
    return _loop_model(path, "memory_hog", 40, body, np.ones(1 << 18, np.float32))


def segfault_tflite(path: Path) -> Path:
    """RELU whose graph input is a tensor with a constant buffer. LiteRT memory-maps the model
    read-only; setting the input writes into the mapping: SIGSEGV, in any LiteRT build."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version = 3
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    model.operatorCodes = [code]
    constant = schema.BufferT()
    constant.data = [0] * 32
    model.buffers = [schema.BufferT(), constant, schema.BufferT()]

    def tensor(name: str, buffer: int):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, 8], schema.TensorType.FLOAT32, buffer, name
        return t

    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    subgraph = schema.SubGraphT()
    subgraph.tensors = [tensor("x", 1), tensor("logits", 2)]
    subgraph.operators, subgraph.inputs, subgraph.outputs, subgraph.name = [op], [0], [1], "main"
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path
