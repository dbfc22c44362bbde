"""A tiny CPU training loop, accuracy evaluation and a synthetic text task for the examples.

Inputs are numpy arrays. ``x`` is either one array (image models: ``model(x)``) or a tuple of
arrays fed to the model positionally (multi-input models such as
:class:`~edgehub.hub.examples.nets.TinyTextClassifier`: ``model(input_ids, attention_mask)``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

__all__ = ["evaluate_accuracy", "make_synthetic_text", "train_classifier"]

Inputs = Union[np.ndarray, Sequence[np.ndarray]]


def _as_tuple(x: Inputs) -> tuple[np.ndarray, ...]:
    return (x,) if isinstance(x, np.ndarray) else tuple(x)


def _set_threads() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _batch(arrays: tuple[np.ndarray, ...], idx: np.ndarray | slice) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in arrays]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: Inputs, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``(x, y)``, in eval mode without gradients.

    The model's previous train/eval mode is restored afterwards.
    """
    xs = _as_tuple(x)
    n = len(y)
    if n == 0:
        raise ValueError("evaluate_accuracy needs at least one sample")
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            logits = model(*_batch(xs, sl))
            correct += int((logits.argmax(dim=1).numpy() == y[sl]).sum())
    finally:
        model.train(was_training)
    return correct / n


def train_classifier(
    model: nn.Module,
    x: Inputs,
    y: np.ndarray,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 2e-3,
    val: tuple[Inputs, np.ndarray] | None = None,
    seed: int = 0,
    progress: bool = True,
    console: "Console | None" = None,
) -> dict:
    """Train ``model`` in place on CPU with Adam and cross-entropy.

    Shuffles with ``seed`` each epoch (``torch.manual_seed(seed)`` is set too, which covers
    dropout). Sets ``torch.set_num_threads(min(2, os.cpu_count()))`` (process-wide). With
    ``progress`` a rich progress bar shows the running loss and, at the end of each epoch,
    the validation accuracy. The model is left in eval mode.

    Returns ``{"epochs", "final_loss", "val_accuracy", "seconds"}``: ``final_loss`` is the mean
    training loss over the last epoch, ``val_accuracy`` the accuracy on ``val`` after the last
    epoch (``None`` without ``val``), ``seconds`` the wall time of the training loop.
    """
    _set_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xs = _as_tuple(x)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if n == 0 or any(len(a) != n for a in xs):
        raise ValueError("x and y must be non-empty and have the same number of samples")
    steps_per_epoch = (n + batch_size - 1) // batch_size

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    final_loss = float("nan")
    val_accuracy: float | None = None
    t0 = time.perf_counter()

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[val]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, console=console) as bar:
        for epoch in range(epochs):
            task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch, loss=float("nan"), val="")
            model.train()
            order = rng.permutation(n)
            total, seen = 0.0, 0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                *inputs, target = _batch((*xs, y), idx)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(*inputs), target)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                bar.update(task, advance=1, loss=total / seen)
            final_loss = total / seen
            if val is not None:
                val_accuracy = evaluate_accuracy(model, val[0], np.asarray(val[1]))
                bar.update(task, val=f"val acc {val_accuracy:.4f}")
    model.eval()
    return {
        "epochs": epochs,
        "final_loss": final_loss,
        "val_accuracy": val_accuracy,
        "seconds": time.perf_counter() - t0,
    }


def make_synthetic_text(
    n: int,
    vocab: int = 1000,
    max_len: int = 32,
    num_classes: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SYNTHETIC, learnable text-classification set (not real language) for the text examples.

    Token id 0 is padding; ids ``1..vocab-1`` are split into ``num_classes`` contiguous ranges.
    Each sample has a random length in ``[max(1, max_len // 4), max_len]``; a strict majority
    of its tokens is drawn from the range of its class and the rest uniformly from all ranges,
    in random order, so the label is exactly the range that dominates the unpadded tokens.
    Padding is at the end.

    Returns ``(input_ids, attention_mask, y)``: int64 ``(n, max_len)``, int64 ``(n, max_len)``
    (1 = token, 0 = padding) and int64 ``(n,)``.
    """
    if vocab - 1 < num_classes:
        raise ValueError("vocab must leave at least one token id per class besides padding")
    rng = np.random.default_rng(seed)
    edges = np.linspace(1, vocab, num_classes + 1).astype(np.int64)  # range c = [edges[c], edges[c+1])
    y = rng.integers(0, num_classes, size=n, dtype=np.int64)
    lengths = rng.integers(max(1, max_len // 4), max_len + 1, size=n)
    input_ids = np.zeros((n, max_len), dtype=np.int64)
    attention_mask = np.zeros((n, max_len), dtype=np.int64)
    for i in range(n):
        length, c = int(lengths[i]), int(y[i])
        n_major = length // 2 + 1  # strict majority
        major = rng.integers(edges[c], edges[c + 1], size=n_major)
        noise = rng.integers(1, vocab, size=length - n_major)
        tokens = np.concatenate([major, noise])
        rng.shuffle(tokens)
        input_ids[i, :length] = tokens
        attention_mask[i, :length] = 1
    return input_ids, attention_mask, y
