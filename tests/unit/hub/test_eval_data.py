"""Eval, calibration and training sets (.npz) bound to a model's inputs, on scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from edgehub.hub.publish.eval_data import (
    EvalSetError,
    bind_eval_set,
    bind_training_set,
    example_batch,
    load_npz,
)
from edgehub.protocol.manifest import TensorSpec

IMAGE = [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])]


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.reshape(-1, 1, 8, 8), d.target


def test_the_single_input_may_be_called_x_and_labels_y(digits, tmp_path):
    x, y = digits
    np.savez(tmp_path / "eval.npz", x=x, y=y)  # float64 in the file: cast to the model's float32
    bound = bind_eval_set(load_npz(tmp_path / "eval.npz"), IMAGE, "eval.npz")
    assert bound.size == len(y) == 1797
    assert bound.inputs["image"].dtype == np.float32 and bound.inputs["image"].flags.c_contiguous
    assert bound.labels.dtype == np.int64 and (bound.labels == y).all()
    assert bound.head(5)["image"].shape == (5, 1, 8, 8)


@pytest.mark.parametrize("arrays, message", [
    ({"z": np.zeros((4, 1, 8, 8))}, "missing key(s) image (or 'x'); the model's inputs are image and the file has z"),
    ({"x": np.zeros((4, 1, 8, 8)), "extra": np.zeros(4)}, "unknown key(s) extra"),
    ({"x": np.zeros((4, 8, 8))}, "'image' has shape [4, 8, 8], the model wants ['batch', 1, 8, 8]"),
    ({"x": np.zeros((4, 1, 8, 9))}, "'image' has shape [4, 1, 8, 9]"),
    ({"x": np.zeros((0, 1, 8, 8))}, "no samples"),
    ({"x": np.zeros((4, 1, 8, 8)), "y": np.zeros(3, np.int64)}, "'y' must be 4 integer labels, got shape [3]"),
    ({"x": np.zeros((4, 1, 8, 8)), "y": np.zeros(4)}, "'y' must hold integer class labels, got float64"),
])
def test_sets_that_do_not_fit_name_what_is_wrong(arrays, message):
    with pytest.raises(EvalSetError) as caught:
        bind_eval_set(arrays, IMAGE, "eval.npz")
    assert str(caught.value).startswith("eval.npz: ") and message in str(caught.value)


def test_a_float_array_for_an_integer_input_is_refused():
    ids = [TensorSpec(name="ids", dtype="int64", shape=["batch", 16])]
    assert bind_eval_set({"x": np.arange(32, dtype=np.int32).reshape(2, 16)}, ids, "s").inputs["ids"].dtype == np.int64
    with pytest.raises(EvalSetError, match="'ids' is float64, the model wants int64"):
        bind_eval_set({"x": np.zeros((2, 16))}, ids, "s")


def test_unreadable_files(tmp_path):
    with pytest.raises(EvalSetError, match="no such file"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(EvalSetError, match="bad.npz: not a readable .npz file"):
        load_npz(tmp_path / "bad.npz")


def test_training_sets_hold_out_a_shuffled_validation_slice(digits):
    x, y = digits
    data = bind_training_set({"x": x, "y": y}, IMAGE, "train.npz")
    assert len(data.labels) + len(data.val_labels) == 1797 and len(data.val_labels) == 179
    assert len(set(data.val_labels.tolist())) == 10  # shuffled: every class in the held-out slice
    with pytest.raises(EvalSetError, match="needs integer labels 'y'"):
        bind_training_set({"x": x}, IMAGE, "train.npz")
    with pytest.raises(EvalSetError, match="1 sample"):
        bind_training_set({"x": x[:1], "y": y[:1]}, IMAGE, "train.npz")


def test_example_batch_for_export(digits):
    x, _ = digits
    batch = example_batch({"x": x, "y": np.zeros(len(x))}, ["image"], "eval.npz")
    assert batch["image"].shape == (2, 1, 8, 8) and batch["image"].dtype == np.float32
    with pytest.raises(EvalSetError, match="missing key.*forward"):
        example_batch({"x": x}, ["a", "b"], "eval.npz")


def test_scores_count_near_ties_for_the_gate_and_keep_the_exact_agreement():
    import numpy as np

    from edgehub.hub.publish.evaluate import primary_score, score_outputs

    ref = np.array([[5.0, 4.95, 0.0], [5.0, 0.0, 1.0], [0.0, 3.0, 9.0]], dtype=np.float32)
    out = np.array([[4.9, 5.0, 0.0], [5.0, 0.0, 1.0], [9.0, 3.0, 0.0]], dtype=np.float32)  # a near-tie, a clear flip
    metrics = score_outputs([out], [ref], labels=None)
    assert metrics["agreement"] == round(1 / 3, 6) and metrics["near_tie_agreement"] == round(2 / 3, 6)
    assert primary_score(metrics) == (round(2 / 3, 6), "near_tie_agreement")
    labelled = score_outputs([out], [ref], labels=np.array([0, 0, 2]))
    assert primary_score(labelled) == (round(1 / 3, 6), "accuracy")  # labels win over agreement
    embedding = score_outputs([out], [ref], labels=None, output_name="sentence_embedding")
    assert embedding["agreement"] is None and embedding["near_tie_agreement"] is None
    assert primary_score(embedding)[1] == "cosine"
