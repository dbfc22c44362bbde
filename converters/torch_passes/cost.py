"""Parameters and multiply-accumulates of a PyTorch module (counted by torch-pruning's tracer)."""

from __future__ import annotations

from typing import Any


def macs_and_params(model: Any, example: tuple) -> tuple[int, int]:
    """(MACs for one sample, parameter count); `example` is a tuple of input tensors."""
    import torch
    import torch_pruning as tp

    example = tuple(t[:1] for t in example)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example[0] if len(example) == 1 else example)
    finally:
        model.train(was_training)
    return int(macs), int(params)


def conv_widths(model: Any) -> dict[str, int]:
    """Output channels of every convolution and hidden linear layer, by module name."""
    import torch

    return {name: (m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
