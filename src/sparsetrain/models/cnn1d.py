"""A small 1-D CNN for MNIST-1D: the "ConvBase" model of Greydanus & Kobak's MNIST-1D code.

Three Conv1d layers of `channels` (25) filters with ReLU: kernel 5 / stride 2 / padding 1, then kernel 3 /
stride 2 / padding 1 twice; then one linear classifier on the flattened maps (25 x 5 = 125 features for
length-40 signals; 5,210 parameters with 10 classes). The linear width is measured with a dummy forward,
so any signal length >= 3 and any channel count work.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.models.registry import register_model
from sparsetrain.models.shapes import output_features, reject_tokens, sequence_shape


class CNN1d(nn.Module):
    """Conv1d stack and a linear classifier; accepts (batch, C, L) or (batch, L) inputs."""

    def __init__(self, input_shape: tuple[int, int], num_classes: int, channels: int = 25) -> None:
        """Build the network.

        Args:
            input_shape: (C, L).
            num_classes: number of logits.
            channels: filters per conv layer.

        Raises:
            ValueError: if `channels` is not a positive int or the signal is too short.
        """
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.in_channels = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv1d(input_shape[0], channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Linear(output_features("cnn1d", self.features, input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (batch, L) for one-channel signals given without the channel axis
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


@register_model("cnn1d")
def build_cnn1d(
    input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None, channels: int = 25
) -> nn.Module:
    """The MNIST-1D 1-D CNN for signals (C, L) or (L,).

    Args:
        channels: filters per conv layer (default 25).
    """
    reject_tokens("cnn1d", vocab_size)
    return CNN1d(sequence_shape("cnn1d", input_shape), num_classes, channels)
