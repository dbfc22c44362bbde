"""The pieces of static int8 (converters/int8/) on a small net with the structure int8 finds hard
(depthwise 3x3 + ReLU6, a badly scaled channel), trained on scikit-learn's digits: equalization
keeps the function, rounding by optimisation lands on the quantizer's grid and lowers the layer
error, the int8 network edits, the uint8 weight floor, held-back scoring, and the search's notes."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from depthwise_models import depthwise_net
from onnx import numpy_helper

from edgehub.converters.errors import ConversionError
from edgehub.converters.int8.bias_floor import uint8_weight_overrides, weight_floor
from edgehub.converters.int8.calibration import compute_ranges
from edgehub.converters.int8.equalization import absorb_biases, equalize, find_pairs
from edgehub.converters.int8.float_layers import keep_float
from edgehub.converters.int8.holdout import HoldoutScorer, split
from edgehub.converters.int8.ort_log import OrtLog
from edgehub.converters.int8.ort_quantize import pre_process, quantize_from_ranges
from edgehub.converters.int8.qdq_network import Int8Network
from edgehub.converters.int8.rounding import (
    LayerShape,
    Moments,
    accumulate,
    layer_shapes,
    optimise_rounding,
    round_weights,
)
from edgehub.converters.int8.small_layers import SmallLayer, candidates, choose, layer_weights
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import PassContext, run_pass
from edgehub.converters.passes.onnx_guarded_int8 import fewest_float_layers
from edgehub.hub.publish.evaluate import run_onnx
from edgehub.protocol.metrics import cosine


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    work = tmp_path_factory.mktemp("depthwise")
    artifact, x, y = depthwise_net(work)
    pre = pre_process(artifact.path, work / "pre.onnx")
    return artifact, pre, x, y


def _run(path_or_model, x):
    if isinstance(path_or_model, onnx.ModelProto):  # an edited graph: run as written (float_layers.py)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(path_or_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    return run_onnx(path_or_model, {"x": x})[0]


def _quantize(graph, x, tmp_path, name, scheme="u8s8", method="minmax"):
    ranges = compute_ranges(graph, {"x": x}, method, tmp_path / f"{name}.json")
    out = tmp_path / f"{name}.onnx"
    quantize_from_ranges(graph, out, ranges, scheme, method, per_channel=True, nodes_to_exclude=[], op_types=None)
    return out, ranges


# --- cross-layer equalization ------------------------------------------------------------------

def test_equalization_keeps_the_function_and_evens_the_channel_ranges(net, tmp_path):
    _, pre, x, _ = net
    model = onnx.load(str(pre))
    pairs, skipped = find_pairs(model)
    assert len(pairs) >= 2, skipped
    inits = {i.name: i for i in model.graph.initializer}

    def spread(conv):  # widest channel's weight range over the narrowest's
        r = np.abs(numpy_helper.to_array(inits[conv.input[1]]))
        r = r.reshape(len(r), -1).max(1)
        return r.max() / max(r.min(), 1e-12)

    wide = max((p[0] for p in pairs), key=spread)
    before = spread(wide)
    report = equalize(model)
    inits = {i.name: i for i in model.graph.initializer}
    assert report.relu6_rewritten >= 1  # ReLU6 rewritten exactly as Relu + Min(6 / s)
    assert spread(wide) < before / 4  # the 40x wider channel was brought in
    np.testing.assert_allclose(_run(model, x[:64]), _run(pre, x[:64]), rtol=1e-4, atol=1e-4)


def test_bias_absorption_is_exact_where_it_applies(net):
    _, pre, x, _ = net
    model = onnx.load(str(pre))
    pairs, _ = find_pairs(model)
    relu_pairs = [p for p in pairs if p[1] is not None and p[1].op_type == "Relu"]
    assert relu_pairs, "the test net has a conv -> Relu -> 1x1 conv pair"
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for conv1, _, _ in relu_pairs:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(conv1.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}), strict=True))
    minima = {c.output[0]: got[c.output[0]].min(axis=(0, 2, 3)) for c, _, _ in relu_pairs}
    absorbed = absorb_biases(model, minima, relu_pairs)
    np.testing.assert_allclose(_run(model, x), _run(pre, x), rtol=1e-4, atol=1e-4)
    assert isinstance(absorbed, list)


def test_a_graph_without_conv_pairs_is_left_alone(tmp_path):
    import torch

    from edgehub.converters.torch_export import export_onnx

    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    art = export_onnx(mlp, {"x": np.zeros((2, 8), np.float32)}, tmp_path / "mlp.onnx")
    pairs, _ = find_pairs(onnx.load(str(art.path)))
    assert pairs == []


# --- rounding by optimisation ------------------------------------------------------------------

def test_round_weights_stays_on_the_grid_and_lowers_the_layer_error():
    rng = np.random.default_rng(0)
    shape = LayerShape("n", "x", "w", "dense", kernel=(1, 1), channels=16)
    x = rng.normal(size=(512, 16)) @ rng.normal(size=(16, 16))  # correlated inputs: nearest is not optimal
    moments: dict[str, Moments] = {}
    accumulate(moments, shape, x.reshape(512, 16, 1, 1).astype(np.float32))
    w = rng.normal(size=(8, 16, 1, 1)).astype(np.float32)
    rounded = round_weights(w, shape, moments["n"], qmax=127)
    scale = np.abs(w).reshape(8, -1).max(1) / 127
    steps = rounded.weights.reshape(8, -1) / scale[:, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the int8 grid
    np.testing.assert_allclose(np.abs(rounded.weights).reshape(8, -1).max(1), scale * 127, rtol=1e-6)  # same scale
    assert rounded.after < rounded.before
    nearest = np.round(w.reshape(8, -1) / scale[:, None]) * scale[:, None]
    err = lambda v: np.mean((x @ (v - w.reshape(8, -1)).T) ** 2)  # noqa: E731
    assert err(rounded.weights.reshape(8, -1)) < err(nearest)



def test_a_5x5_depthwise_kernel_is_rounded_by_greedy_descent_per_channel():
    # 25 weights per channel are too many to try every subset (2^25): each channel descends on its
    # own second moment instead (EfficientNet's 5x5 depthwise layers used to keep nearest rounding).
    rng = np.random.default_rng(1)
    shape = LayerShape("dw", "x", "w", "depthwise", kernel=(5, 5), pads=(2, 2, 2, 2), channels=6)
    base = rng.normal(size=(16, 6, 12, 12))
    x = (base + np.roll(base, 1, axis=3)).astype(np.float32)  # neighbouring pixels correlated
    moments: dict[str, Moments] = {}
    accumulate(moments, shape, x)
    w = rng.normal(size=(6, 1, 5, 5)).astype(np.float32)
    rounded = round_weights(w, shape, moments["dw"], qmax=127)
    scale = np.abs(w).reshape(6, -1).max(1) / 127
    steps = rounded.weights.reshape(6, -1) / scale[:, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(steps - w.reshape(6, -1) / scale[:, None]).max() <= 1.0 + 1e-6  # one step at most
    assert rounded.after < rounded.before
    assert not np.allclose(rounded.weights.reshape(6, -1), np.round(w.reshape(6, -1) / scale[:, None]) * scale[:, None])

def test_the_quantizer_reproduces_rounded_weights_exactly(net, tmp_path):
    _, pre, x, _ = net
    model = onnx.load(str(pre))
    optimise_rounding(model, {"x": x[:64]}, qmax=127)
    rounded = tmp_path / "rounded.onnx"
    onnx.save(model, str(rounded))
    qdq, _ = _quantize(rounded, x[:128], tmp_path, "q")
    network = onnx.load(str(qdq))
    producers = {o: n for n in network.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in network.graph.initializer}
    float_w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for shape in layer_shapes(model)[0]:
        node = next(n for n in network.graph.node if n.name == shape.node)
        dq = producers[node.input[1]]
        q, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]]
        deq = q * scale.reshape(-1, *([1] * (q.ndim - 1))) if scale.size > 1 else q * scale
        np.testing.assert_allclose(deq, float_w[shape.weight], rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked >= 4


def test_sequential_rounding_against_the_int8_network_beats_nearest(net, tmp_path):
    _, pre, x, _ = net
    calib, held = x[:256], x[1400:1600]
    reference = _run(pre, held)
    nearest, ranges = _quantize(pre, calib, tmp_path, "nearest")
    model = onnx.load(str(pre))
    report = optimise_rounding(model, {"x": calib[:64]}, qmax=127, int8=Int8Network(onnx.load(str(nearest))))
    assert report.from_int8_inputs and report.layers and not report.timed_out
    assert report.biases_corrected >= 1
    rounded = tmp_path / "rounded.onnx"
    onnx.save(model, str(rounded))
    out = tmp_path / "rounded-q.onnx"
    quantize_from_ranges(rounded, out, ranges, "u8s8", "minmax", per_channel=True, nodes_to_exclude=[], op_types=None)
    assert cosine(_run(out, held), reference) > cosine(_run(nearest, held), reference)


def test_rounding_stops_at_its_time_budget_and_says_so(net):
    _, pre, x, _ = net
    model = onnx.load(str(pre))
    report = optimise_rounding(model, {"x": x[:16]}, qmax=127, time_budget_s=1e-9)
    assert report.timed_out and report.skipped and not report.layers
    assert report.notes()["timed_out"] is True


def test_int8_network_writes_weights_back_exactly(net, tmp_path):
    _, pre, x, _ = net
    qdq, _ = _quantize(pre, x[:64], tmp_path, "w")
    network = Int8Network(onnx.load(str(qdq)))
    node = next(n for n in network.model.graph.node if n.op_type == "Conv")
    found = network._dequantized(node.input[1])
    init, scale, _, _ = found
    steps = scale.reshape(-1, 1, 1, 1)
    halved = numpy_helper.to_array(init).astype(np.int64) // 2  # new values on the same grid
    network.write(node.name, (halved * steps).astype(np.float32), None)
    np.testing.assert_array_equal(numpy_helper.to_array(network._dequantized(node.input[1])[0]), halved)


# --- layers kept float -------------------------------------------------------------------------

def test_keeping_a_layer_float_brings_the_output_closer_and_removes_its_int8_weights(net, tmp_path):
    _, pre, x, _ = net
    qdq, _ = _quantize(pre, x[:128], tmp_path, "k")
    network, fp32 = onnx.load(str(qdq)), onnx.load(str(pre))
    held = x[1400:1600]
    reference = _run(pre, held)
    convs = [n.name for n in network.graph.node if n.op_type in ("Conv", "Gemm")]
    every = keep_float(network, fp32, set(convs))
    assert cosine(_run(every, held), reference) > cosine(_run(onnx.load(str(qdq)), held), reference)
    one = keep_float(network, fp32, {convs[0]})
    node = next(n for n in one.graph.node if n.name == convs[0])
    assert node.input[1].endswith("__float")
    names = {i.name for i in one.graph.initializer}
    assert not any(n.startswith(node.input[1].removesuffix("__float")) and n.endswith("_quantized") for n in names)
    onnx.checker.check_model(one)


def test_small_layers_are_chosen_by_gain_per_byte_within_the_budget():
    layers = [SmallLayer("stem", 100), SmallLayer("dw", 1000), SmallLayer("pw", 10_000), SmallLayer("tiny", 10)]
    assert [layer.node for layer in candidates(layers, budget_bytes=3_000)] == ["stem", "dw", "tiny"]
    gains = {"stem": 1e-3, "dw": 2e-3, "tiny": 1e-6, "pw": 5e-3}
    # stem: 1e-3 per 300 bytes beats dw's 2e-3 per 3000; tiny is under the noise floor; pw does not fit.
    assert choose(gains, layers, budget_bytes=3_300) == ["stem", "dw"]
    assert choose(gains, layers, budget_bytes=3_000) == ["stem"]
    assert choose({"stem": -1e-3}, layers, budget_bytes=1e9) == []


def test_layer_weights_reads_the_quantized_layers_of_the_network(net, tmp_path):
    _, pre, x, _ = net
    qdq, _ = _quantize(pre, x[:128], tmp_path, "w")
    network, fp32 = onnx.load(str(qdq)), onnx.load(str(pre))
    found = {layer.node: layer.weights for layer in layer_weights(network, fp32)}
    inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    convs = [n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")]
    assert found == {n.name: inits[n.input[1]].size for n in convs}


def test_fewest_float_layers_bisects_to_the_shortest_prefix():
    calls = []

    def within(prefix):
        calls.append(len(prefix))
        return len(prefix) >= 3

    kept, ok = fewest_float_layers(list("abcdefgh"), within)
    assert kept == ["a", "b", "c"] and ok and len(calls) <= 5
    kept, ok = fewest_float_layers(list("ab"), lambda prefix: False)
    assert kept == ["a", "b"] and not ok
    assert fewest_float_layers([], lambda p: True) == ([], False)


# --- uint8 weight floor ------------------------------------------------------------------------

def test_weight_floor_widens_only_channels_whose_bias_would_overflow():
    w = np.array([[1e-9, -1e-9], [0.5, -0.5]])
    rmin, rmax, count = weight_floor(w, np.array([3.0, 3.0]), input_scale=1e-3)
    assert count == 1
    assert rmax[1] == 0.5 and rmin[1] == -0.5
    assert (rmax[0] - rmin[0]) / 255 * 1e-3 * (2**31 - 1) >= 3.0


def test_u8u8_with_a_near_dead_channel_stores_its_bias_exactly(tmp_path):
    import torch

    from edgehub.converters.torch_export import export_onnx

    conv = torch.nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        conv.weight[0] = 1e-12  # a channel the network barely uses ...
        conv.bias[0] = 5.0  # ... with a bias that is not tiny
    art = export_onnx(torch.nn.Sequential(conv).eval(), {"x": np.ones((2, 2, 4, 4), np.float32)}, tmp_path / "c.onnx")
    x = np.random.default_rng(0).normal(size=(32, 2, 4, 4)).astype(np.float32)
    ranges = compute_ranges(art.path, {"x": x}, "minmax", tmp_path / "r.json")
    overrides, widened = uint8_weight_overrides(art.path, ranges)
    assert sum(widened.values()) == 1
    log = OrtLog()
    with log:
        quantize_from_ranges(art.path, tmp_path / "q.onnx", ranges, "u8u8", "minmax", per_channel=True,
                             nodes_to_exclude=[], op_types=None, weight_overrides=overrides)
    assert not any("exceeds the range of a int32" in key for key in log.summary())
    out = _run(tmp_path / "q.onnx", x)
    np.testing.assert_allclose(out[:, 0], 5.0, atol=0.05)  # the bias, not a clipped int32


def test_ort_log_captures_quantizer_warnings_and_restores_handlers():
    root = logging.getLogger()
    before = list(root.handlers)
    log = OrtLog()
    with log:
        logging.warning("Quantized bias `a/b` exceeds the range of a int32. The bias scale is too small.")
        logging.warning("Quantized bias `c/d` exceeds the range of a int32. The bias scale is too small.")
    assert root.handlers == before
    (key, entry), = log.summary().items()
    assert entry["count"] == 2 and entry["examples"] == ["a/b", "c/d"]


# --- held-back scoring -------------------------------------------------------------------------

def test_split_holds_back_a_share_unless_too_few():
    data = {"x": np.arange(100)}
    parts = split(data)
    assert parts.separate and parts.sizes == (75, 25)
    assert not np.intersect1d(parts.calibrate["x"], parts.held["x"]).size
    small = split({"x": np.arange(20)})
    assert not small.separate and small.sizes == (20, 20)


def test_holdout_scorer_gives_agreement_only_for_class_scores(net):
    _, pre, x, _ = net
    scorer = HoldoutScorer(pre, {"x": x[:32]})
    score = scorer(pre)
    assert score.cosine == pytest.approx(1.0) and score.agreement == 1.0 and score.drop() == pytest.approx(0.0)
    embedding = HoldoutScorer(pre, {"x": x[:32]}, output_name="sentence_embedding")
    assert embedding(pre).agreement is None


# --- the search, through the pass ----------------------------------------------------------------

def _ctx(tmp_path, x, score=None):
    return PassContext(workdir=tmp_path / "work", calibration={"x": x[:256]}, score=score, score_unit="agreement")


def test_int8_static_records_every_trial_and_why_each_step_was_kept(net, tmp_path):
    artifact, pre, x, _ = net
    q = run_pass("int8_static", artifact, {"rounding": "optimized"}, _ctx(tmp_path, x))
    notes = q.notes
    assert notes["scheme"] in ("u8s8", "reduce_range", "u8u8")
    assert notes["calibrate_method"] in ("minmax", "percentile", "entropy")
    assert {t["method"] for t in notes["trials"]} == {"minmax", "percentile", "entropy"}
    assert set(notes["scheme_scores"]) == {"u8s8", "reduce_range", "u8u8"}
    assert notes["held_back_samples"] == 64 and notes["calibration_samples"] == 192
    assert notes["equalization"]["pairs"] >= 1 and "kept" in notes["equalization"]
    assert "kept" in notes["bias_correction"] or "why" in notes["bias_correction"]
    if notes["scheme"] == "u8u8":  # which scheme wins varies with the ONNX Runtime release
        assert notes["rounding"] == {"chosen": "nearest", "why": "u8u8 weights are not on a symmetric grid"}
        notes = run_pass("int8_static", artifact, {"rounding": "optimized", "scheme": "u8s8"},
                         _ctx(tmp_path / "u8s8", x)).notes
    assert notes["rounding"]["layers"] >= 4
    assert notes["held_back"]["cosine"] == max(t["cosine"] for t in notes["trials"]
                                               if t["scheme"] != "u8u8" or t["cosine"] == notes["held_back"]["cosine"])
    reference = _run(pre, x[1400:])
    assert cosine(_run(q.path, x[1400:]), reference) > 0.99


def test_int8_static_keeps_small_layers_float_only_when_they_score_better(net, tmp_path):
    artifact, pre, x, _ = net
    config = {"calibrate_method": "minmax", "scheme": "u8s8", "rounding": "nearest"}
    q = run_pass("int8_static", artifact, {**config, "small_layers_share": 0.5}, _ctx(tmp_path, x))
    notes = q.notes["small_layers_float"]
    assert notes["scanned"] >= 2 and notes["budget_bytes"] > 0
    before = [t for t in q.notes["trials"] if "small layers float" not in t["steps"]][-1]
    if notes["kept"]:
        assert q.notes["steps"][-1] == "small layers float" and notes["layers"]
        assert notes["cosine"] > before["cosine"] and set(notes["layers"]) == set(notes["gains"])
        graph = onnx.load(str(q.path)).graph
        float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        floats = {n.name for n in graph.node if n.name in notes["layers"] and n.input[1] in float_weights}
        assert floats == set(notes["layers"])  # their weights are float initializers, not dequantized int8
    else:
        assert "small layers float" not in q.notes["steps"] and notes["why"]
    off = run_pass("int8_static", artifact, {**config, "small_layers": "off"}, _ctx(tmp_path / "off", x))
    assert off.notes["small_layers_float"] == {"kept": False, "why": "small_layers off"}
    none = run_pass("int8_static", artifact, {**config, "small_layers_share": 0.0}, _ctx(tmp_path / "none", x))
    assert none.notes["small_layers_float"] == {"kept": False, "why": "no layer small enough"}


def test_int8_static_skips_rounding_when_the_cheap_steps_are_within_budget(net, tmp_path):
    artifact, _, x, _ = net
    q = run_pass("int8_static", artifact, {"max_drop": 1.0, "calibrate_method": "minmax"}, _ctx(tmp_path, x))
    assert q.notes["rounding"] == {"chosen": "nearest", "why": "the result so far is within the budget"}


def test_a_calibration_method_that_fails_falls_back_and_says_so(net, tmp_path, monkeypatch):
    import edgehub.converters.int8.search as search

    real = search.compute_ranges

    def broken(graph, data, method, out, **kw):
        if method == "entropy":
            raise ConversionError("entropy calibration failed (too few samples)")
        return real(graph, data, method, out, **kw)

    monkeypatch.setattr(search, "compute_ranges", broken)
    artifact, _, x, _ = net
    q = run_pass("int8_static", artifact, {"equalize": "off", "bias_correction": "off", "rounding": "nearest"},
                 _ctx(tmp_path, x))
    assert "entropy" in q.notes["calibration_failed"] and q.notes["calibrate_method"] != "entropy"


def test_the_guard_says_when_the_budget_is_out_of_reach(net, tmp_path):
    """A budget of 0 cannot be met (activations stay int8): no variant the gate would reject is
    built, and the reason gives the figures. Meeting a budget is tested on the outlier MLP
    (test_compression_onnx.py)."""
    from edgehub.converters.passes.base import NotApplicable

    artifact, pre, x, _ = net
    held = x[1400:]
    reference = _run(pre, held)

    def score(candidate):  # cosine: the gate's measure for outputs without labels
        return cosine(_run(candidate.path, held), reference)

    ctx = _ctx(tmp_path, x, score)
    with pytest.raises(NotApplicable, match=r"keeping \d+ of 5 layers float \(\d\.\d\dx the int8 file\).*not built"):
        run_pass("int8_guarded", artifact, {"max_drop": 0.0, "rounding": "nearest", "bias_correction": "off",
                                            "max_float_share": 1.0}, ctx)


def test_the_guard_is_not_built_when_all_int8_is_within_budget(net, tmp_path):
    from edgehub.converters.passes.base import NotApplicable

    artifact, pre, x, _ = net
    ctx = _ctx(tmp_path, x, lambda c: 1.0)
    with pytest.raises(NotApplicable, match="within the budget"):
        run_pass("int8_guarded", artifact, {"max_drop": 0.5}, ctx)


def test_int8_static_needs_an_fp32_model(net, tmp_path):
    artifact, _, x, _ = net
    q = run_pass("int8_static", artifact, {"rounding": "nearest", "equalize": "off", "bias_correction": "off",
                                           "calibrate_method": "minmax", "scheme": "u8s8"}, _ctx(tmp_path, x))
    with pytest.raises(ConversionError, match="needs an fp32 model"):
        run_pass("int8_static", onnx_artifact(q.path, precision="int8"), {}, _ctx(tmp_path, x))


# --- dynamic int8 ------------------------------------------------------------------------------

def test_dynamic_int8_is_not_built_for_a_convolutional_graph(net, tmp_path):
    from edgehub.converters.passes.base import NotApplicable

    artifact, _, x, _ = net
    with pytest.raises(NotApplicable, match="of the weights are convolutions"):
        run_pass("int8_dynamic", artifact, {}, _ctx(tmp_path, x))


def test_dynamic_int8_measures_reduce_range_on_held_back_samples(tmp_path):
    import torch

    from edgehub.converters.torch_export import export_onnx

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()
    x = np.random.default_rng(0).normal(size=(128, 32)).astype(np.float32)
    art = export_onnx(mlp, {"x": x[:2]}, tmp_path / "mlp.onnx")
    q = run_pass("int8_dynamic", art, {}, PassContext(workdir=tmp_path / "w", calibration={"x": x}))
    notes = q.notes
    assert notes["per_channel"] is True and isinstance(notes["reduce_range"], bool)
    assert set(notes["held_back"]) == {"true", "false"}
    chosen = notes["held_back"][str(notes["reduce_range"]).lower()]["cosine"]
    assert chosen == max(t["cosine"] for t in notes["held_back"].values())
    fixed = run_pass("int8_dynamic", art, {"reduce_range": True}, PassContext(workdir=tmp_path / "f"))
    assert fixed.notes["reduce_range"] is True and "held_back" not in fixed.notes
