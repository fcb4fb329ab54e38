"""VGG-16 and VGG-19 with batch norm, CIFAR style (Simonyan & Zisserman, ICLR 2015, configs D and E).

Each 3x3 conv (padding 1) is followed by batch norm and ReLU; "M" is a 2x2 max pool. CIFAR style means
one linear classifier on the 512 final channels instead of the three 4096-wide ImageNet layers (as in
the VGG used by SNIP, GraSP and GraNet's CIFAR runs): 14.7M (VGG-16) and 20.0M (VGG-19) parameters with
10 classes. For inputs smaller than 32x32 a pool that would shrink a side below 1 is skipped; a global
average pool before the classifier makes any input size work (it is the identity for 32x32 inputs).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from sparsetrain.models.registry import register_image_model

VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """Conv-BN-ReLU feature stack, global average pool, linear classifier."""

    def __init__(self, name: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
        """Build the network.

        Args:
            name: "vgg16" or "vgg19".
            input_shape: (C, H, W).
            num_classes: number of logits.
        """
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for item in VGG_CONFIGS[name]:
            if item == "M":
                if min(height, width) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    height, width = height // 2, width // 2
                continue
            channels = int(item)
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


for _name in VGG_CONFIGS:
    register_image_model(_name, partial(VGG, _name),
                         f"VGG-{_name[3:]} with batch norm, CIFAR style, for (C, H, W) images.")
