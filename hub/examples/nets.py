"""Small PyTorch architectures for examples and tests (no torchvision).

All image models take ``(N, 1, 28, 28)`` float inputs (Fashion-MNIST) and return ``(N, num_classes)``
logits. :class:`TinyTextClassifier` takes ``(input_ids, attention_mask)``, both int64 ``(N, T)``.

The factories (:func:`small_cnn`, :func:`resnet_small`, :func:`mobilenet_small`,
:func:`tiny_text_classifier`) return fresh, untrained modules and can be named as
``"edgehub.hub.examples.nets:small_cnn"`` style ``module:factory`` strings.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "MobileNetSmall",
    "ResNetSmall",
    "SmallCNN",
    "TinyTextClassifier",
    "count_params",
    "mobilenet_small",
    "resnet_small",
    "small_cnn",
    "tiny_text_classifier",
]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class SmallCNN(nn.Module):
    """Two conv blocks (conv3x3-BN-ReLU-maxpool2) then FC(hidden)-ReLU-FC.

    With the default ``width=16``: 16 and 32 channels, a 64-unit hidden layer, ~106k params
    (most of them in the first FC layer).
    """

    def __init__(self, width: int = 16, num_classes: int = 10, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else 4 * width
        self.features = nn.Sequential(
            *_conv_bn(1, width), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 28 -> 14
            *_conv_bn(width, 2 * width), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 conv (with the block's stride) + BN when the
    stride or channel count changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Small ResNet: conv3x3 stem, 3 stages of BasicBlocks (width, 2*width, 4*width channels;
    stages 2 and 3 downsample with stride 2 and a 1x1 conv shortcut), global average pool, linear.

    Spatial sizes for 28x28 inputs: 28 -> 28 -> 14 -> 7.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, blocks: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise (groups=C)-BN-ReLU6, 1x1 project-BN
    (linear bottleneck); residual add when stride is 1 and channels match."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, k=1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, k=3, stride=stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, k=1)
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetSmall(nn.Module):
    """Small MobileNet-v2 style net: conv3x3 stem, inverted residual blocks (depthwise 3x3 +
    pointwise 1x1 convs, BN, ReLU6), a 1x1 conv head, global average pool, linear.

    Spatial sizes for 28x28 inputs: 28 -> 14 -> 7.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, expand: int = 4, head: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv_bn(1, w), nn.ReLU6(inplace=True))
        # (cin, cout, stride, expansion)
        config = [
            (w, w, 1, 1),
            (w, 2 * w, 2, expand),
            (2 * w, 2 * w, 1, expand),
            (2 * w, 4 * w, 2, expand),
            (4 * w, 4 * w, 1, expand),
        ]
        self.blocks = nn.Sequential(*[InvertedResidual(ci, co, s, t) for ci, co, s, t in config])
        self.head = nn.Sequential(*_conv_bn(4 * w, head * w, k=1), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyTextClassifier(nn.Module):
    """Token embedding + learned positional embedding + ``nn.TransformerEncoder`` (batch_first)
    + masked mean pooling + linear head.

    ``forward(input_ids, attention_mask)``: both int64 ``(N, T)`` with ``T <= max_len``;
    ``attention_mask`` is 1 for real tokens and 0 for padding (used as the encoder's key padding
    mask and for the pooling). Every row should have at least one real token. Token id 0 is
    the padding id. Exports to ONNX with ``torch.onnx.export(..., dynamo=False, opset_version=17)``.
    """

    def __init__(
        self,
        vocab: int = 1000,
        dim: int = 32,
        heads: int = 2,
        layers: int = 1,
        max_len: int = 32,
        num_classes: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True
        )
        # No nested tensors: they are an eval-time fast path that neither ONNX nor most
        # converters understand.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        h = self.embed(input_ids) + self.pos(positions)
        keep = attention_mask.to(h.dtype).unsqueeze(-1)  # (N, T, 1)
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(self.norm(pooled))


def small_cnn(**kwargs) -> SmallCNN:
    """A fresh :class:`SmallCNN` (width 16, 10 classes unless overridden)."""
    return SmallCNN(**kwargs)


def resnet_small(**kwargs) -> ResNetSmall:
    """A fresh :class:`ResNetSmall` (width 16, 10 classes unless overridden)."""
    return ResNetSmall(**kwargs)


def mobilenet_small(**kwargs) -> MobileNetSmall:
    """A fresh :class:`MobileNetSmall` (width 16, 10 classes unless overridden)."""
    return MobileNetSmall(**kwargs)


def tiny_text_classifier(**kwargs) -> TinyTextClassifier:
    """A fresh :class:`TinyTextClassifier` (vocab 1000, dim 32, 2 heads, 1 layer, max_len 32, 4 classes)."""
    return TinyTextClassifier(**kwargs)
