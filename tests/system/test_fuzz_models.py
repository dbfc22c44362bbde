"""Hostile model uploads: `edgehub publish` with malformed ONNX and TFLite files, absurd shapes,
external-data paths that point outside the model's folder, unknown ops. Each must end in one
clear error line with a non-zero exit, and leave the registry and the artifact store exactly as
they were. Part of it is property-based (hypothesis): random bytes, truncations, absurd dims.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from db_counts import home_contents
from fault_models import custom_op, good_mlp, segfault_tflite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper

from edgehub.hub.cli import cli


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A hub home holding one published model, and that model's file and eval set."""
    root = tmp_path_factory.mktemp("fuzz-models")
    model, _ = good_mlp(root / "good.onnx")
    eval_path = root / "eval.npz"
    np.savez(eval_path, x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    home = root / "home"
    result = CliRunner().invoke(cli, ["publish", str(model), "--name", "good", "--eval", str(eval_path),
                                      "--home", str(home), "--no-deploy"])
    assert result.exit_code == 0, result.output
    return home, model, eval_path, root


def _state(home):
    return home_contents(home)


def publish_refused(home, eval_path, source) -> str:
    """Publish `source`; it must fail with one clear line and change nothing."""
    before = _state(home)
    result = CliRunner().invoke(cli, ["publish", str(source), "--name", "hostile", "--eval", str(eval_path),
                                      "--home", str(home), "--no-deploy"])
    assert result.exit_code == 1, (result.exit_code, result.output[-800:], result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) < 600, result.stderr[-800:]
    message = errors[0]
    assert _state(home) == before, "a refused upload changed the registry or the store"
    return message


def _mlp_with(root, name: str, mutate) -> str:
    model = onnx.load(str(root / "good.onnx"))
    mutate(model)
    path = root / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


# ---- known hostile cases, one each -------------------------------------------------------------

def test_malformed_files(home):
    home, model, eval_path, root = home
    data = model.read_bytes()
    cases = {
        "empty.onnx": b"",
        "half.onnx": data[: len(data) // 2],
        "text.onnx": b"definitely not a model\n" * 10,
        "tensor.onnx": numpy_helper.from_array(np.ones(4, np.float32), "t").SerializeToString(),
        "model.tflite": segfault_tflite(root / "crash.tflite").read_bytes(),  # a TFLite file, and a hostile one
        "zip.onnx": b"PK\x03\x04" + bytes(200),
    }
    for name, content in cases.items():
        path = root / name
        path.write_bytes(content)
        message = publish_refused(home, eval_path, path)
        assert name in message, message


def test_absurd_shapes_and_graphs(home):
    home, model, eval_path, root = home

    def dim(value):
        def mutate(m):
            m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = value
        return mutate

    def huge_initializer(m):  # claims 4 TiB of weights, holds none
        tensor = TensorProto(name="w1", data_type=TensorProto.FLOAT)
        tensor.dims.extend([1 << 20, 1 << 20])
        m.graph.initializer[0].CopyFrom(tensor)

    def external_outside(location):
        def mutate(m):
            tensor = m.graph.initializer[0]
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            tensor.external_data.add(key="location", value=location)
        return mutate

    def no_inputs(m):
        del m.graph.input[:]

    cases = {"dim-2e40": dim(1 << 40), "dim-neg": dim(-7), "dim-2e24": dim((1 << 24) + 1),
             "huge-initializer": huge_initializer, "ext-traversal": external_outside("../../../../etc/passwd"),
             "ext-absolute": external_outside("/etc/passwd"), "no-inputs": no_inputs}
    for name, mutate in cases.items():
        message = publish_refused(home, eval_path, _mlp_with(root, name, mutate))
        assert name in message or "absurd" in message or "checker" in message, (name, message)


@pytest.mark.parametrize("case", ["custom-op", "opset-999"])
def test_models_the_runtime_cannot_load(home, case):
    home, model, eval_path, root = home
    if case == "custom-op":
        source = custom_op(root / "custom.onnx")
    else:
        source = _mlp_with(root, case, lambda m: m.opset_import[0].__setattr__("version", 999))
    before = _state(home)
    try:
        publish_refused(home, eval_path, source)
    finally:
        assert _state(home) == before  # whatever the message, nothing was registered


# ---- properties ---------------------------------------------------------------------------------

MODELS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@MODELS
@given(data=st.data())
def test_random_bytes_and_truncations_are_refused_cleanly(home, data):
    home, model, eval_path, root = home
    original = model.read_bytes()
    content = data.draw(st.one_of(st.binary(max_size=4000),
                                  st.integers(0, len(original) - 1).map(lambda n: original[:n])))
    path = root / "fuzzed.onnx"
    path.write_bytes(content)
    publish_refused(home, eval_path, path)


ABSURD = st.sampled_from([-1, -(1 << 40), (1 << 24) + 1, 1 << 32, 1 << 62, (1 << 63) - 1])


@MODELS
@given(dims=st.lists(ABSURD, min_size=1, max_size=2), output=st.booleans())
def test_absurd_dimensions_anywhere_are_refused_cleanly(home, dims, output):
    home, model, eval_path, root = home

    def mutate(m):
        value = (m.graph.output if output else m.graph.input)[0]
        shape = value.type.tensor_type.shape
        for d, v in zip(shape.dim, dims):
            d.Clear()
            d.dim_value = v
    publish_refused(home, eval_path, _mlp_with(root, "absurd", mutate))
