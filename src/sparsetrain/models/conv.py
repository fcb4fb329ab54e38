"""Conv-2, Conv-4 and Conv-6: the VGG-like CIFAR networks of Frankle & Carbin, ICLR 2019 (Figure 2).

Conv-2: 64, 64, pool. Conv-4: adds 128, 128, pool. Conv-6: adds 256, 256, pool. Every conv is 3x3 with
padding 1 and ReLU, pools are 2x2 max; then FC 256 - ReLU - FC 256 - ReLU - FC classes. No batch norm
or dropout (the paper's dropout experiments are not reproduced here). On 3x32x32 inputs with 10 classes
they have 4.30M, 2.43M and 2.26M parameters. The first FC's width is measured with a dummy forward.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from sparsetrain.models.registry import register_image_model
from sparsetrain.models.shapes import output_features

CONV_WIDTHS = {"conv2": (64,), "conv4": (64, 128), "conv6": (64, 128, 256)}


class ConvNet(nn.Module):
    """Pairs of 3x3 convs, each pair followed by a max pool, then a 3-layer fully connected head."""

    def __init__(self, name: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
        """Build the network.

        Args:
            name: "conv2", "conv4" or "conv6".
            input_shape: (C, H, W).
            num_classes: number of logits.
        """
        super().__init__()
        in_channels = input_shape[0]
        layers: list[nn.Module] = []
        for width in CONV_WIDTHS[name]:
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        flat = output_features(name, self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


for _name in CONV_WIDTHS:
    register_image_model(_name, partial(ConvNet, _name),
                         f"{_name[:4].capitalize()}-{_name[4:]} of Frankle & Carbin 2019 for (C, H, W) images.")
