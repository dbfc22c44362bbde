"""How close one model's outputs are to another's, fitting what the output is: top-1 agreement
only for class scores, cosine (and absolute errors) for everything. Used by the hub's evaluation,
the int8 passes' trials and the agent's on-device reference check, so all three judge alike."""

from __future__ import annotations

import numpy as np

# Output names that say "this is not a class score", whatever its shape (sentence encoders and
# feature extractors export [N, D] outputs that look like logits).
EMBEDDING_NAMES = ("embed", "hidden", "pool", "feature", "vector", "encod")


def is_classifier(output: np.ndarray, name: str = "") -> bool:
    """Class scores: one row per sample with several columns, and not named like an embedding."""
    return output.ndim == 2 and output.shape[1] > 1 and not any(k in name.lower() for k in EMBEDDING_NAMES)


def top1(output: np.ndarray) -> np.ndarray:
    return output.reshape(len(output), -1, output.shape[-1]).argmax(-1) if output.ndim > 2 else output.argmax(-1)


# A top-1 flip between classes whose reference scores lie within 2% of that sample's score range
# is a near-tie: any rounding flips some of those. An ARM int8 kernel rounds differently from the
# x86 one the references came from (logits moved by up to 0.24 on the arm64 test), and on
# EfficientNet-Lite1 with photo crops, where 19% of the crops have their top two within 2%, fp32
# itself fed the crops moved by one 8-bit pixel step agrees with its own answers on only 0.970
# (0.997 counting near-ties). A variant that computes wrongly flips clear decisions too: ONNX
# Runtime's per-channel int8 of that net scores 0.93 even counting near-ties, litert-torch's
# default int8 0.83. Used by the on-device check and, as `near_tie_agreement`, by the hub's gate.
NEAR_TIE = 0.02


def agreement(out: np.ndarray, ref: np.ndarray, tie: float = 0.0) -> float:
    """Share of samples whose top-1 class is the reference's. With `tie` > 0, a sample also agrees
    when the reference scores the chosen class within `tie` times its own score range of its top."""
    same = top1(out) == top1(ref)
    if tie <= 0:
        return float(same.mean())
    classes = ref.shape[-1]
    r = ref.reshape(-1, classes).astype(np.float64)
    chosen = top1(out).reshape(-1)
    scores = r[np.arange(len(r)), chosen]
    near = scores >= r.max(1) - tie * (r.max(1) - r.min(1))
    return float((same.reshape(-1) | near).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine between the flattened outputs."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    # Two all-zero rows agree perfectly; one zero row against a non-zero one does not.
    sims = np.where(den > 0, num / np.where(den > 0, den, 1),
                    np.where(np.abs(a2).sum(1) + np.abs(b2).sum(1) == 0, 1.0, 0.0))
    return float(sims.mean())
