"""Wide residual networks for small images: WRN-d-k (Zagoruyko & Komodakis, *Wide Residual Networks*, BMVC 2016).

A 3x3 conv of 16 channels, then three groups of ``n = (d - 4) / 6`` pre-activation basic blocks (BN-ReLU-conv3x3,
BN-ReLU-conv3x3) of ``16k``, ``32k`` and ``64k`` channels, the second and third starting with stride 2; a block
whose channels change takes a 1x1 convolution of its pre-activated input as its shortcut. Then BN-ReLU, a global
average pool and a linear classifier. No dropout. This is the network of RigL's CIFAR-10 experiments (Evci et
al., ICML 2020, WideResNet-22-2: 1.1M parameters with 10 classes; official code google-research/rigl,
``rigl/cifar_resnet/resnet_model.py``, the same layout). Convolutions are initialised with Kaiming normal (fan-in),
as the library's CIFAR ResNets; the official TensorFlow code uses its default Glorot uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models.registry import register_model
from sparsetrain.models.shapes import image_shape, reject_tokens


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (a 1x1 conv of the pre-activated input when needed)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                         if in_channels != out_channels or stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-width for (C, H, W) images."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, depth: int = 22, width: int = 2) -> None:
        """Build the network.

        Args:
            input_shape: (C, H, W).
            num_classes: number of logits.
            depth: 6n + 4 (10, 16, 22, 28, ...).
            width: the widening factor k.

        Raises:
            ValueError: ``depth`` is not 6n + 4 with n >= 1, or ``width`` is not a positive int.
        """
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth={depth!r} is not allowed: a wide ResNet has depth 6n + 4 (10, 16, 22, 28, ...)")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width={width!r} is not allowed: the widening factor is an int >= 1")
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_channels = 16
        for group, channels in enumerate((16 * width, 32 * width, 64 * width)):
            layers = []
            for index in range(blocks):
                layers.append(PreActBlock(in_channels, channels, 2 if group > 0 and index == 0 else 1))
                in_channels = channels
            groups.append(nn.Sequential(*layers))
        self.group1, self.group2, self.group3 = groups
        self.bn = nn.BatchNorm2d(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.group3(self.group2(self.group1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn")
def build_wrn(input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None, depth: int = 22,
              width: int = 2) -> nn.Module:
    """Wide ResNet WRN-depth-width (Zagoruyko & Komodakis 2016); default WRN-22-2, RigL's CIFAR-10 network.

    Args:
        depth: 6n + 4 (default 22).
        width: the widening factor (default 2).
    """
    reject_tokens("wrn", vocab_size)
    return WideResNet(image_shape("wrn", input_shape), num_classes, depth, width)
