"""CIFAR ResNets of depth 6n+2 (ResNet-20/32/56): He et al., "Deep Residual Learning", CVPR 2016, §4.2.

A 3x3 conv with 16 filters, then three stages of n basic blocks with 16, 32 and 64 filters (the first
block of stages 2 and 3 has stride 2), global average pooling and a linear classifier. Shortcuts:
- "A" (default, as in the paper's CIFAR experiments): identity; where the shape changes, subsample by 2
  and pad the new channels with zeros, so shortcuts have no parameters. ResNet-20 has 0.27M parameters.
- "B": a 1x1 conv + batch norm projection where the shape changes, identity elsewhere.
Weights use He (Kaiming) normal initialisation. The stem takes any channel count, and the global pool
any image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models.registry import register_model
from sparsetrain.models.shapes import image_shape, reject_tokens

SHORTCUTS = ("A", "B")
CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: take every `stride`-th pixel and append zero channels up to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images."""

    def __init__(self, depth: int, input_shape: tuple[int, int, int], num_classes: int, shortcut: str = "A") -> None:
        """Build the network.

        Args:
            depth: 6n + 2 (20, 32, 44, 56, 110, ...).
            input_shape: (C, H, W).
            num_classes: number of logits.
            shortcut: "A" (zero-padding identity) or "B" (1x1 projection).

        Raises:
            ValueError: if `depth` is not 6n+2 or `shortcut` is unknown.
        """
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        in_channels = 16
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _register(name: str, depth: int) -> None:
    @register_model(name)
    def build(
        input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None, shortcut: str = "A"
    ) -> nn.Module:
        reject_tokens(name, vocab_size)
        return CifarResNet(depth, image_shape(name, input_shape), num_classes, shortcut)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016); shortcut 'A' (default) or 'B'."


for _name, _depth in CIFAR_RESNET_DEPTHS.items():
    _register(_name, _depth)
