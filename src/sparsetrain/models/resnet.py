"""ResNet-18 and ResNet-50 (He et al., CVPR 2016, Table 1), adapted to small images.

Four stages of 64, 128, 256, 512 filters (x4 output channels for the bottleneck blocks of ResNet-50),
batch norm, projection shortcuts (1x1 conv + BN, option B) where the shape changes, global average pool
and a linear classifier. In bottlenecks the stride sits on the 3x3 conv ("ResNet v1.5", as torchvision).
Stems:
- "cifar": a 3x3 stride-1 conv and no max pool, the common CIFAR adaptation (as in the ResNet-50 of the
  GraNet and RigL CIFAR experiments): ResNet-18 has 11.17M and ResNet-50 23.52M parameters with 10 classes;
- "imagenet": the original 7x7 stride-2 conv and 3x3 stride-2 max pool.
The default (`stem=None`) picks "imagenet" for inputs of at least 128 pixels a side, otherwise "cifar".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models.registry import register_model
from sparsetrain.models.shapes import image_shape, reject_tokens

STEMS = ("cifar", "imagenet")
IMAGENET_STEM_MIN_SIZE = 128


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; output channels = planes."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, each with batch norm; output channels = 4 * planes."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _projection(in_channels, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """Stem, four residual stages, global average pool, linear classifier."""

    def __init__(
        self, name: str, input_shape: tuple[int, int, int], num_classes: int, stem: str | None = None
    ) -> None:
        """Build the network.

        Args:
            name: "resnet18" or "resnet50".
            input_shape: (C, H, W).
            num_classes: number of logits.
            stem: "cifar", "imagenet", or None to choose by input size.

        Raises:
            ValueError: if `stem` is unknown.
        """
        super().__init__()
        channels, height, width = input_shape
        if stem is None:
            stem = "imagenet" if min(height, width) >= IMAGENET_STEM_MIN_SIZE else "cifar"
        if stem not in STEMS:
            raise ValueError(f"stem must be None or one of {STEMS}, got {stem!r}")
        block, counts = RESNET_LAYOUTS[name]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        stages = []
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            blocks = []
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block(in_channels, planes, stride))
                in_channels = planes * block.expansion  # type: ignore[attr-defined]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _register(name: str) -> None:
    @register_model(name)
    def build(
        input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None, stem: str | None = None
    ) -> nn.Module:
        reject_tokens(name, vocab_size)
        return ResNet(name, image_shape(name, input_shape), num_classes, stem)

    build.__doc__ = f"ResNet-{name[6:]} for (C, H, W) images; stem 'cifar', 'imagenet' or None (by size)."


for _name in RESNET_LAYOUTS:
    _register(_name)
