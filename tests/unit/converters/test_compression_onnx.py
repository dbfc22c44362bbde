"""ONNX-level compression passes on small real models (scikit-learn digits): guarded int8,
4-bit weights, magnitude pruning, sensitivity analysis."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import load_onnx, onnx_artifact
from edgehub.converters.passes.base import NotApplicable, PassContext, parse_config, run_pass
from edgehub.converters.passes.onnx_prune import magnitude_masks
from edgehub.converters.sensitivity import allocate_ratios, overall_ratio, ratio_within
from edgehub.hub.publish.evaluate import run_onnx, score_outputs


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _train_mlp(x, y, outlier: float | None):
    """A 64-48-48-10 MLP on digits; with `outlier`, one hidden unit of the middle layer is scaled
    up by that factor and its outgoing weights down by it (same fp32 function, extreme activations)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 48), torch.nn.ReLU(),
                                torch.nn.Linear(48, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model.eval()
    if outlier:
        with torch.no_grad():
            hidden = model[3](model[2](model[1](model[0](xt))))
            unit = int(hidden.mean(0).argmax())  # a unit that is active, so its range matters
            model[2].weight[unit] *= outlier
            model[2].bias[unit] *= outlier
            model[4].weight[:, unit] /= outlier
    return model


def _export(model, x, path):
    from edgehub.converters.torch_export import export_onnx

    return export_onnx(model, {"x": x[:2]}, path)


@pytest.fixture(scope="module")
def mlp(digits, tmp_path_factory):
    x, y = digits
    return _export(_train_mlp(x, y, None), x, tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.fixture(scope="module")
def outlier_mlp(digits, tmp_path_factory):
    x, y = digits
    return _export(_train_mlp(x, y, 1000.0), x, tmp_path_factory.mktemp("outlier") / "outlier.onnx")


def make_ctx(tmp_path, digits, artifact):
    x, y = digits
    reference = run_onnx(artifact.path, {"x": x[1400:]})

    def score(candidate):
        return score_outputs(run_onnx(candidate.path, {"x": x[1400:]}), reference, y[1400:])["accuracy"]

    return PassContext(workdir=tmp_path / "work", calibration={"x": x[:256]}, score=score), score


# --- accuracy-guarded int8 ----------------------------------------------------------------

def test_plain_int8_breaks_the_outlier_model_and_the_guard_repairs_it(outlier_mlp, digits, tmp_path):
    ctx, score = make_ctx(tmp_path, digits, outlier_mlp)
    base = score(outlier_mlp)
    plain = run_pass("int8_static", outlier_mlp, {}, ctx)
    assert base - score(plain) > 0.01  # the construction works: plain int8 misses a 0.5-point budget

    guarded = run_pass("int8_guarded", outlier_mlp, {"max_drop": 0.005}, ctx)
    guard = guarded.notes["guard"]
    print(guard)
    assert guard["within_budget"] is True
    assert base - score(guarded) <= 0.005
    assert guard["kept_float"], "the guard must name the layers it kept in float"
    assert set(guard["kept_float"]) <= set(guard["sensitivity"])
    # Not everything went back to float: the first layer, far from the outlier, stays int8.
    assert "/0/Gemm" not in guard["kept_float"]
    ops = [n.op_type for n in load_onnx(guarded.path).graph.node]
    assert "QuantizeLinear" in ops and guarded.precision == "mixed"


def test_guard_is_not_built_when_all_int8_is_within_budget(mlp, digits, tmp_path):
    ctx, _ = make_ctx(tmp_path, digits, mlp)
    with pytest.raises(NotApplicable, match="no layer needs to stay float"):
        run_pass("int8_guarded", mlp, {"max_drop": 0.02}, ctx)


def test_guard_needs_a_score(mlp, digits, tmp_path):
    with pytest.raises(ConversionError, match="eval set"):
        run_pass("int8_guarded", mlp, {}, PassContext(workdir=tmp_path, calibration={"x": digits[0][:64]}))


# --- 4-bit weight-only ---------------------------------------------------------------------

def test_int4_rewrites_gemm_and_quantizes_weights(mlp, digits, tmp_path):
    ctx, score = make_ctx(tmp_path, digits, mlp)
    q = run_pass("int4_weight", mlp, {"block_size": 16}, ctx)
    ops = [n.op_type for n in load_onnx(q.path).graph.node]
    assert ops.count("MatMulNBits") == 3 and "Gemm" not in ops
    assert q.notes["gemm_rewritten_as_matmul"] == 3 and q.notes["quantized_layers"] == 3
    assert q.precision == "int4"
    assert q.size_bytes < 0.3 * mlp.size_bytes
    assert score(q) >= score(mlp) - 0.03


def test_int4_says_plainly_when_no_layer_is_eligible(tmp_path):
    import torch

    from edgehub.converters.torch_export import export_onnx

    convs_only = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 10, 1),
                                     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    art = export_onnx(convs_only, {"x": np.zeros((2, 1, 8, 8), np.float32)}, tmp_path / "convs.onnx")
    with pytest.raises(NotApplicable, match="no MatMul/Gemm layer.*2 convolution"):
        run_pass("int4_weight", art, {}, PassContext(workdir=tmp_path))


# --- magnitude pruning -----------------------------------------------------------------------

def test_magnitude_masks_global_threshold_and_per_layer():
    w = {"a": np.arange(1, 11, dtype=np.float32), "b": np.arange(-5, 5, dtype=np.float32) * 10}
    masks = magnitude_masks(w, sparsity=0.5)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == 10  # half of 20 weights zeroed, smallest magnitudes first
    assert masks["a"].sum() < masks["b"].sum()  # the small-valued layer loses more
    masks = magnitude_masks(w, threshold=5.5)
    assert masks["a"].sum() == 5
    masks = magnitude_masks(w, layer_sparsity={"a": 0.3})
    assert masks["a"].sum() == 7 and masks["b"].all()


def test_magnitude_prune_reaches_the_target_and_reports_what_it_buys(mlp, digits, tmp_path):
    ctx, score = make_ctx(tmp_path, digits, mlp)
    pruned = run_pass("magnitude_prune", mlp, {"sparsity": 0.6}, ctx)
    notes = pruned.notes
    assert notes["sparsity"] == pytest.approx(0.6, abs=0.005)
    assert set(notes["layers"]) == {"0.weight", "2.weight", "4.weight"}
    for layer in notes["layers"].values():
        assert 0 < layer["sparsity"] < 1 and layer["zeros"] <= layer["params"]
    # The dense file keeps its size; compressed it shrinks, and the sparse encoding estimate too.
    assert notes["gzip_bytes"] < 0.7 * notes["gzip_bytes_parent"]
    assert notes["sparse_encoding_bytes"] < 0.7 * notes["file_bytes"]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in load_onnx(pruned.path).graph.initializer}
    zeros = sum(int((weights[n] == 0).sum()) for n in notes["layers"])
    assert zeros == notes["zeros"]
    assert score(pruned) > 0.5


def test_magnitude_prune_config_takes_one_target():
    with pytest.raises(ConversionError, match="one of sparsity, threshold"):
        parse_config("magnitude_prune", {"sparsity": 0.5, "threshold": 0.1})
    assert parse_config("magnitude_prune", {}).sparsity == 0.5


def test_magnitude_prune_threshold_and_named_layers(mlp, tmp_path):
    ctx = PassContext(workdir=tmp_path)
    by_threshold = run_pass("magnitude_prune", mlp, {"threshold": 0.05}, ctx)
    assert 0 < by_threshold.notes["sparsity"] < 1
    one_layer = run_pass("magnitude_prune", mlp, {"layer_sparsity": {"2.weight": 0.8}}, ctx)
    layers = one_layer.notes["layers"]
    assert layers["2.weight"]["sparsity"] == pytest.approx(0.8, abs=0.01) and layers["0.weight"]["sparsity"] < 0.01
    by_node = run_pass("magnitude_prune", mlp, {"layer_sparsity": {"/4/Gemm": 0.5}}, ctx)  # node names work too
    assert by_node.notes["layers"]["4.weight"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConversionError, match="no prunable layer named nope"):
        run_pass("magnitude_prune", mlp, {"layer_sparsity": {"nope": 0.5}}, ctx)


# --- sensitivity analysis --------------------------------------------------------------------

def test_allocation_spares_the_sensitive_layer():
    table = {"robust": {0.5: 0.0, 0.9: 0.01}, "fragile": {0.5: 0.2, 0.9: 0.6}}
    sizes = {"robust": 1000, "fragile": 1000}
    ratios = allocate_ratios(table, sizes, target=0.5)
    assert ratios["robust"] > ratios["fragile"]
    assert overall_ratio(ratios, sizes) == pytest.approx(0.5, abs=0.01)
    # Unreachable targets give every layer its largest measured ratio.
    assert allocate_ratios(table, sizes, target=0.95) == {"robust": 0.9, "fragile": 0.9}


def test_ratio_within_interpolates_and_ignores_noise():
    assert ratio_within({0.5: 0.1}, 0.05) == pytest.approx(0.25, abs=0.01)
    # A noisy lower drop at a higher ratio does not make that ratio acceptable.
    assert ratio_within({0.3: 0.2, 0.6: 0.0}, 0.1) == pytest.approx(0.15, abs=0.01)


def test_sensitivity_prune_measures_every_layer_and_hits_the_target(mlp, digits, tmp_path):
    ctx, score = make_ctx(tmp_path, digits, mlp)
    pruned = run_pass("sensitivity_prune", mlp, {"target_sparsity": 0.6, "ratios": [0.5, 0.9]}, ctx)
    notes = pruned.notes
    assert set(notes["sensitivity"]) == {"/0/Gemm", "/2/Gemm", "/4/Gemm"}  # named by their nodes
    assert all(set(row) == {"0.5", "0.9"} for row in notes["sensitivity"].values())
    assert notes["sparsity"] == pytest.approx(0.6, abs=0.02)
    assert set(notes["layer_ratios"]) == set(notes["sensitivity"])
    for layer, ratio in notes["layer_ratios"].items():
        assert notes["layers"][layer]["sparsity"] == pytest.approx(ratio, abs=0.01)
    assert score(pruned) > 0.5


def test_pruning_an_int8_model_is_refused(mlp, digits, tmp_path):
    ctx, _ = make_ctx(tmp_path, digits, mlp)
    q = run_pass("int8_dynamic", mlp, {}, ctx)
    with pytest.raises(ConversionError, match="needs an fp32 model"):
        run_pass("magnitude_prune", q, {}, ctx)
    assert onnx_artifact(mlp.path).precision == "fp32"
