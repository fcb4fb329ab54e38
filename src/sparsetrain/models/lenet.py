"""LeNet-5 in two forms: the classic (LeCun et al. 1998) and Caffe's "LeNet-5-Caffe" used by SNIP/GraSP.

- "lecun": conv 6@5x5 - ReLU - maxpool 2 - conv 16@5x5 - ReLU - maxpool 2 - FC 120 - FC 84 - FC classes,
  ReLU between FC layers. Deviation from 1998 (tanh, subsampling, partial C3 connections): ReLU, max
  pooling, full connections, as in common reimplementations. Inputs smaller than 32 pixels get padding 2
  on the first conv, so 28x28 MNIST yields the classic 16x5x5 feature map.
- "caffe": conv 20@5x5 - maxpool - conv 50@5x5 - maxpool - FC 500 - ReLU - FC classes, as in Caffe's
  MNIST example (no ReLU after the convs); 431,080 parameters on 28x28 inputs with 10 classes
  (Lee et al., SNIP, ICLR 2019, Table 1).
The flattened size is measured with a dummy forward, so any image size large enough works.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.models.registry import register_model
from sparsetrain.models.shapes import image_shape, output_features, reject_tokens

LENET5_VARIANTS = ("lecun", "caffe")


class LeNet5(nn.Module):
    """Convolutional features, flatten, fully connected classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, variant: str = "lecun") -> None:
        """Build the network.

        Args:
            input_shape: (C, H, W).
            num_classes: number of logits.
            variant: "lecun" or "caffe" (see the module docstring).

        Raises:
            ValueError: unknown variant or an input too small.
        """
        super().__init__()
        channels, height, width = input_shape
        if variant == "lecun":
            padding = 2 if min(height, width) < 32 else 0
            self.features = nn.Sequential(
                nn.Conv2d(channels, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            )
            flat = output_features("lenet5", self.features, input_shape)
            self.classifier = nn.Sequential(
                nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
            )
        elif variant == "caffe":
            self.features = nn.Sequential(
                nn.Conv2d(channels, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2)
            )
            flat = output_features("lenet5", self.features, input_shape)
            self.classifier = nn.Sequential(nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes))
        else:
            raise ValueError(f"variant must be one of {LENET5_VARIANTS}, got {variant!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("lenet5")
def build_lenet5(
    input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None, variant: str = "lecun"
) -> nn.Module:
    """LeNet-5 for images of any channel count and size (>= about 12 pixels).

    Args:
        variant: "lecun" (6-16-120-84, default) or "caffe" (20-50-500).
    """
    reject_tokens("lenet5", vocab_size)
    return LeNet5(image_shape("lenet5", input_shape), num_classes, variant)
