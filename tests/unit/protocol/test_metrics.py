"""Output metrics shared by the hub's evaluation, the int8 trials and the device check."""

import numpy as np
import pytest

from edgehub.protocol.metrics import NEAR_TIE, agreement, cosine, is_classifier


def test_strict_agreement_counts_every_flip():
    ref = np.array([[0.0, 10.0, 9.99], [5.0, 0.0, 0.0]])
    out = np.array([[0.0, 9.99, 10.0], [5.0, 0.0, 0.0]])
    assert agreement(out, ref) == 0.5


def test_the_device_check_forgives_near_ties_but_not_clear_flips():
    ref = np.array([[0.0, 10.0, 9.9], [0.0, 10.0, 5.0], [3.0, 1.0, 0.0]])
    near = np.array([[0.0, 9.9, 10.0], [0.0, 10.0, 5.0], [3.0, 1.0, 0.0]])  # 9.9 is within 2% of 10's range
    clear = np.array([[0.0, 10.0, 9.9], [0.0, 5.0, 10.0], [3.0, 1.0, 0.0]])  # 5.0 is half the range away
    assert agreement(near, ref, tie=NEAR_TIE) == 1.0 and agreement(near, ref) == pytest.approx(2 / 3)
    assert agreement(clear, ref, tie=NEAR_TIE) == pytest.approx(2 / 3)


def test_a_permuted_output_fails_the_device_check():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 10))
    wrong = ref[:, rng.permutation(10)]
    assert agreement(wrong, ref, tie=NEAR_TIE) == agreement(wrong, ref) < 0.5 and cosine(wrong, ref) < 0.5


def test_near_ties_per_position_for_outputs_with_positions():
    ref = np.zeros((2, 3, 4))
    ref[..., 0] = 1.0
    ref[0, 0, 1] = 0.995  # a near-tie at one position of the first sample
    out = ref.copy()
    out[0, 0, 1] = 1.5
    assert agreement(out, ref) == pytest.approx(5 / 6) and agreement(out, ref, tie=NEAR_TIE) == 1.0


def test_classifier_outputs_are_told_from_embeddings():
    scores = np.zeros((4, 10))
    assert is_classifier(scores) and not is_classifier(scores, "sentence_embedding")
    assert not is_classifier(np.zeros((4,)))
