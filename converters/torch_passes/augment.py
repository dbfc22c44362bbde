"""Label-preserving image augmentation for the training passes: random shifts and flips.

Distillation gains most when the teacher is asked about inputs the student has not seen before
(Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and consistent"): with a
fixed training set the teacher's outputs on it are close to the labels, and the distillation term
adds little. With augmentation the teacher scores each augmented batch as the student sees it.
Hand-written because it is a few lines of numpy on (N, C, H, W) arrays; torchvision is not
installable beside this torch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgehub.converters.errors import ConversionError

Augment = Literal["none", "shift", "shift-flip"]


def check_augmentable(inputs: dict[str, np.ndarray], augment: Augment) -> None:
    """Augmentation needs one image input (N, C, H, W); say so plainly otherwise."""
    if augment == "none":
        return
    shapes = {name: a.shape for name, a in inputs.items()}
    if len(inputs) != 1 or next(iter(inputs.values())).ndim != 4:
        raise ConversionError(f"augment={augment!r} needs a single image input of shape (N, C, H, W); "
                         f"the training set has {shapes}")


def augment_batch(x: np.ndarray, augment: Augment, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """A shifted (zero padded, up to `max_shift` pixels each way) and, with "shift-flip", randomly
    mirrored copy of the (N, C, H, W) batch `x`; each image gets its own draw."""
    if augment == "none":
        return x
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    dy = rng.integers(0, 2 * max_shift + 1, n)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    if augment == "shift-flip":
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, :, :, ::-1]
    return out
