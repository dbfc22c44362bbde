"""The training loop shared by the passes that train: fine-tuning and knowledge distillation.

Distillation loss (Hinton et al.): alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - alpha) * cross-entropy with the labels. Without augmentation the teacher's logits are
computed once over the training set (they never change), which halves the cost per epoch; with
it (augment.py) the teacher scores every augmented batch the student sees. With a teacher, an
unlabeled transfer set (TrainingSet.unlabeled) joins the training set, each of its samples
learning the distillation term alone: the teacher's outputs on images it never trained on say
more than its near-one-hot outputs on the images it fitted.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import TrainingSet, TrainProgress
from edgehub.converters.torch_passes.augment import Augment, augment_batch, check_augmentable

UNLABELED = -1  # the label of a transfer-set sample (no label: the teacher's outputs only)


@dataclass
class TrainSettings:
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 0
    temperature: float = 4.0  # distillation only
    alpha: float = 0.7  # weight of the distillation term; 1 - alpha goes to the labels
    augment: Augment = "none"  # random shifts (and flips) of image inputs, a fresh draw every batch


def set_threads() -> None:
    import torch

    # The hub shares its machine; two threads keep training from starving everything else.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _tensors(arrays: dict[str, np.ndarray], idx) -> list:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in arrays.values()]


def predict_logits(model: Any, inputs: dict[str, np.ndarray], batch_size: int = 512) -> np.ndarray:
    import torch

    model.eval()
    n = len(next(iter(inputs.values())))
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out.append(model(*_tensors(inputs, slice(start, start + batch_size))).float().numpy())
    return np.concatenate(out)


def accuracy(model: Any, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    return float((predict_logits(model, inputs).argmax(1) == labels).mean())


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels), averaged over
    the batch; a sample labelled -1 (from the unlabeled transfer set) has the distillation term
    alone, at full weight: the teacher is all there is to learn from on it."""
    import torch
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="none", log_target=True).sum(dim=1) * temperature ** 2
    hard = F.cross_entropy(student_logits, labels, ignore_index=UNLABELED, reduction="none")
    labelled = labels != UNLABELED
    per_sample = torch.where(labelled, alpha * soft + (1 - alpha) * hard, soft)
    return per_sample.mean()


def _with_unlabeled(data: TrainingSet) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The training inputs followed by the unlabeled ones, and the labels padded with UNLABELED."""
    labels = data.labels.astype(np.int64)
    if not data.unlabeled_size:
        return data.inputs, labels
    if set(data.unlabeled) != set(data.inputs):
        raise ConversionError(f"the unlabeled set has inputs {sorted(data.unlabeled)}, "
                              f"the training set {sorted(data.inputs)}")
    for k, v in data.inputs.items():
        if data.unlabeled[k].shape[1:] != v.shape[1:]:
            raise ConversionError(f"the unlabeled set's {k!r} has samples of shape {list(data.unlabeled[k].shape[1:])}, "
                                  f"the training set's {list(v.shape[1:])}")
    inputs = {k: np.concatenate([v, data.unlabeled[k].astype(v.dtype)]) for k, v in data.inputs.items()}
    return inputs, np.concatenate([labels, np.full(data.unlabeled_size, UNLABELED, np.int64)])


def onednn_can_train(model: Any) -> bool:
    """Whether oneDNN may run this model's backward pass. In torch 2.13 (oneDNN 3.12) the AVX2
    kernel for the weight gradient of a 1x1 convolution never returns for some channel counts
    that are not multiples of 8 (seen on an AVX2-only AMD EPYC: a distilled ResNet student with an
    8->17 and a 17->35 shortcut hung in its second step; with multiples of 8 the same run takes
    1.3 s). Such models train on PyTorch's own kernels, 2.3-4x slower here, and finish."""
    import torch

    return all(m.in_channels % 8 == 0 and m.out_channels % 8 == 0 for m in model.modules()
               if isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1))


def fit(model: Any, data: TrainingSet, settings: TrainSettings, *, teacher: Any | None = None,
        task: str = "fine-tune", on_progress: Callable[[TrainProgress], None] = lambda p: None) -> dict:
    """Train `model` in place (Adam, cosine learning rate); with a teacher, distil from it.

    Returns what happened: epochs, final training loss, validation accuracy, seconds.
    """
    import torch

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn_can_train(model)
    try:
        return _fit(model, data, settings, teacher=teacher, task=task, on_progress=on_progress)
    finally:
        torch.backends.mkldnn.enabled = before


def _fit(model: Any, data: TrainingSet, settings: TrainSettings, *, teacher: Any | None,
         task: str, on_progress: Callable[[TrainProgress], None]) -> dict:
    import torch
    import torch.nn.functional as F

    set_threads()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    # The unlabeled transfer set only means something with a teacher to score it.
    inputs, labels = _with_unlabeled(data) if teacher is not None else (data.inputs, data.labels.astype(np.int64))
    n = len(labels)
    check_augmentable(inputs, settings.augment)
    augmenting = settings.augment != "none"
    teacher_logits = predict_logits(teacher, inputs) if teacher is not None and not augmenting else None
    if teacher is not None:
        teacher.eval()
    steps = math.ceil(n / settings.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps * settings.epochs))
    started = time.perf_counter()
    loss_avg = float("nan")
    val_accuracy: float | None = None
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = rng.permutation(n)
        total, seen = 0.0, 0
        for step in range(1, steps + 1):
            idx = order[(step - 1) * settings.batch_size: step * settings.batch_size]
            target = torch.from_numpy(labels[idx])
            if augmenting:
                images = next(iter(inputs.values()))
                batch = [torch.from_numpy(augment_batch(images[idx], settings.augment, rng))]
            else:
                batch = _tensors(inputs, idx)
            logits = model(*batch)
            if teacher is not None:
                if teacher_logits is not None:
                    soft_targets = torch.from_numpy(teacher_logits[idx])
                else:
                    with torch.no_grad():
                        soft_targets = teacher(*batch).float()
                loss = distillation_loss(logits, soft_targets, target, settings.temperature, settings.alpha)
            else:
                loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.item()) * len(idx)
            seen += len(idx)
            loss_avg = total / seen
            on_progress(TrainProgress(task, epoch, settings.epochs, step, steps, loss_avg, val_accuracy))
        if len(data.val_labels):
            val_accuracy = accuracy(model, data.val_inputs, data.val_labels)
            on_progress(TrainProgress(task, epoch, settings.epochs, steps, steps, loss_avg, val_accuracy))
    model.eval()
    return {"task": task, "epochs": settings.epochs, "samples": int((labels != UNLABELED).sum()),
            "unlabeled_samples": int((labels == UNLABELED).sum()), "augment": settings.augment,
            "final_loss": round(loss_avg, 5),
            "val_accuracy": None if val_accuracy is None else round(val_accuracy, 5),
            "seconds": round(time.perf_counter() - started, 2)}
