"""Structured channel pruning with torch-pruning, down to a target share of MACs or parameters.

torch-pruning builds a dependency graph of the model, so channels removed from one layer are
removed from every layer coupled to it (residual adds, depthwise convolutions, batch norms):
the pruned module is an ordinary smaller module, and its exported ONNX has fewer channels.
"""

from __future__ import annotations

from typing import Any, Literal

from edgehub.converters.errors import ConversionError
from edgehub.converters.torch_passes.cost import conv_widths, macs_and_params

Metric = Literal["macs", "params"]


def output_layers(model: Any, example: tuple) -> list:
    """Layers whose outputs are the model's outputs (the classifier): never pruned."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    last = linears[-1:] if linears else convs[-1:]
    return last


def prune_to_ratio(model: Any, example: tuple, target: float, metric: Metric = "macs", *,
                   uniform: bool = True, round_to: int | None = 8, max_channel_ratio: float = 0.9,
                   steps: int = 40) -> dict:
    """Prune `model` in place until its MACs (or params) are at most `target` x the original.

    `uniform` prunes every layer by the same share (a narrower copy of the network); otherwise
    channels compete globally by their L2 magnitude. Pruning goes in small steps and stops at
    the first step that reaches the target. `round_to` keeps channel counts multiples of it:
    CPU kernels work in blocks of 8 or 16 channels, and ragged counts can make a pruned model
    slower than the original despite fewer MACs. Returns before/after figures and widths.
    """
    import torch_pruning as tp

    if not 0 < target < 1:
        raise ConversionError(f"target ratio must be between 0 and 1, got {target}")
    macs0, params0 = macs_and_params(model, example)
    widths0 = conv_widths(model)
    pruner = tp.pruner.MetaPruner(
        model, example[0] if len(example) == 1 else example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=max_channel_ratio, iterative_steps=steps,
        global_pruning=not uniform, ignored_layers=output_layers(model, example), round_to=round_to,
    )
    reached = False
    macs, params = macs0, params0
    for _ in range(steps):
        pruner.step()
        macs, params = macs_and_params(model, example)
        if (macs / macs0 if metric == "macs" else params / params0) <= target:
            reached = True
            break
    if not reached:
        hint = f"; channel counts are kept multiples of round_to={round_to}: lower it" if round_to else ""
        raise ConversionError(f"could not prune to {target:.2f}x {metric} (stopped at "
                              f"{(macs / macs0 if metric == 'macs' else params / params0):.2f}x{hint})")
    widths = conv_widths(model)
    return {
        "metric": metric, "target_ratio": target,
        "macs_before": macs0, "macs_after": macs, "macs_ratio": round(macs / macs0, 4),
        "params_before": params0, "params_after": params, "params_ratio": round(params / params0, 4),
        "channels": {name: [widths0[name], widths[name]] for name in widths if name in widths0
                     and widths0[name] != widths[name]},
    }
