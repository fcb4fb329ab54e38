"""Fully connected networks: `mlp` (any hidden sizes) and `lenet300` (LeNet-300-100).

LeNet-300-100: LeCun et al. 1998, the MLP of Han et al. 2015 and Frankle & Carbin 2019 (266,610
parameters on 28x28 inputs with 10 classes). Real-valued inputs of any shape are flattened; token inputs
(int64 ids, `vocab_size` given) are embedded with `nn.Embedding` and the embeddings concatenated, which
equals a linear layer on the concatenated one-hot codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sparsetrain.models.registry import register_model


class MLP(nn.Module):
    """Flatten (or embed and flatten), then Linear-ReLU layers, then a linear classifier."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: Sequence[int],
        vocab_size: int | None = None,
        embed_dim: int = 128,
    ) -> None:
        """Build the network.

        Args:
            input_shape: per-sample shape; (seq_len,) when `vocab_size` is given.
            num_classes: number of logits.
            hidden: widths of the hidden layers (may be empty: a linear classifier).
            vocab_size: number of token ids, or None for real-valued inputs.
            embed_dim: embedding width per token (token inputs only).

        Raises:
            ValueError: if a width is not a positive int.
        """
        super().__init__()
        widths = list(hidden)
        if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}")
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        self.embedding = nn.Embedding(vocab_size, embed_dim) if vocab_size is not None else None
        in_features = math.prod(input_shape) * (embed_dim if vocab_size is not None else 1)
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        return self.layers(x.flatten(1))


@register_model("mlp")
def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None,
    hidden: Sequence[int] = (300, 100),
    embed_dim: int = 128,
) -> nn.Module:
    """An MLP on flattened inputs, or on concatenated token embeddings for token data.

    Args:
        hidden: hidden-layer widths (default (300, 100)).
        embed_dim: per-token embedding width for token inputs (default 128).
    """
    return MLP(input_shape, num_classes, hidden, vocab_size, embed_dim)


@register_model("lenet300")
def build_lenet300(input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None) -> nn.Module:
    """LeNet-300-100: the MLP with hidden widths (300, 100) and ReLU."""
    return MLP(input_shape, num_classes, (300, 100), vocab_size)
