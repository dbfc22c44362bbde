"""Replace standard k x k convolutions by depthwise + pointwise pairs, initialised by a low-rank
factorisation of the original weights.

A k x k convolution W (out, in, k, k) becomes a depthwise k x k convolution D (in, 1, k, k)
followed by a pointwise 1 x 1 convolution P (out, in). Per input channel i the slice
W[:, i] (out x k*k) is replaced by its best rank-1 approximation P[:, i] D[i]^T (the leading
singular triple), so the pair starts as close to the original as a separable pair can be;
distillation from the original model then recovers the rest.
"""

from __future__ import annotations

from typing import Any


def eligible(conv: Any, min_in_channels: int) -> bool:
    import torch

    return (isinstance(conv, torch.nn.Conv2d) and conv.groups == 1 and conv.kernel_size[0] * conv.kernel_size[1] > 1
            and conv.in_channels >= min_in_channels and conv.padding_mode == "zeros")


def separable_from(conv: Any) -> Any:
    """A depthwise + pointwise nn.Sequential approximating `conv` (rank-1 per input channel)."""
    import torch
    from torch import nn

    cin, cout = conv.in_channels, conv.out_channels
    kh, kw = conv.kernel_size
    depthwise = nn.Conv2d(cin, cin, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                          dilation=conv.dilation, groups=cin, bias=False)
    pointwise = nn.Conv2d(cin, cout, 1, bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.detach().double()  # (out, in, kh, kw)
        per_input = w.permute(1, 0, 2, 3).reshape(cin, cout, kh * kw)  # (in, out, k*k)
        u, s, vh = torch.linalg.svd(per_input, full_matrices=False)
        scale = s[:, 0].sqrt()
        depthwise.weight.copy_((vh[:, 0, :] * scale[:, None]).reshape(cin, 1, kh, kw).float())
        pointwise.weight.copy_((u[:, :, 0] * scale[:, None]).t().reshape(cout, cin, 1, 1).float())
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    return nn.Sequential(depthwise, pointwise)


def replace_convolutions(model: Any, min_in_channels: int = 4) -> list[dict]:
    """Swap every eligible convolution in `model` (in place); returns what was replaced."""
    replaced: list[dict] = []
    targets = [(name, m) for name, m in model.named_modules() if eligible(m, min_in_channels)]
    for name, conv in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        before = conv.weight.numel()
        pair = separable_from(conv)
        setattr(parent, attr, pair)
        after = sum(p.numel() for p in pair.parameters() if p.dim() > 1)
        replaced.append({"layer": name, "kernel": list(conv.kernel_size), "in": conv.in_channels,
                         "out": conv.out_channels, "weights_before": before, "weights_after": after})
    return replaced
