"""Input-shape checks shared by the model builders, and the dummy forward that sizes classifier heads."""

from __future__ import annotations

import torch
from torch import nn


def reject_tokens(model: str, vocab_size: int | None) -> None:
    """Raise if a model that only takes real-valued inputs is asked to take tokens.

    Args:
        model: model name, for the message.
        vocab_size: the vocab_size passed to build_model.

    Raises:
        ValueError: if `vocab_size` is not None.
    """
    if vocab_size is not None:
        raise ValueError(
            f"model {model!r} takes real-valued inputs, not tokens (vocab_size={vocab_size}); "
            "use 'mlp' or 'gpt' for token data"
        )


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return (C, H, W), or raise if `input_shape` is not an image shape.

    Args:
        model: model name, for the message.
        input_shape: per-sample shape.

    Returns:
        The shape as (channels, height, width).

    Raises:
        ValueError: if `input_shape` does not have three entries.
    """
    if len(input_shape) != 3:
        raise ValueError(f"model {model!r} needs image inputs (C, H, W), got input_shape {input_shape}")
    channels, height, width = input_shape
    return channels, height, width


def sequence_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Return (C, L) for a 1-D signal; a bare (L,) is read as one channel.

    Args:
        model: model name, for the message.
        input_shape: per-sample shape.

    Returns:
        The shape as (channels, length).

    Raises:
        ValueError: if `input_shape` has more than two entries.
    """
    if len(input_shape) == 1:
        return 1, input_shape[0]
    if len(input_shape) != 2:
        raise ValueError(f"model {model!r} needs 1-D signals (C, L) or (L,), got input_shape {input_shape}")
    channels, length = input_shape
    return channels, length


def output_features(model: str, module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features per sample that `module` outputs for one input of `input_shape`.

    Runs one zero sample through `module` in eval mode (so batch norm accepts a batch of one) and
    restores the previous mode.

    Args:
        model: model name, for the message.
        module: the feature extractor.
        input_shape: per-sample input shape.

    Returns:
        The number of output elements per sample.

    Raises:
        ValueError: if the input is too small for the module (an empty or invalid intermediate size).
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_shape))
    except RuntimeError as error:
        raise ValueError(f"input_shape {input_shape} is too small for model {model!r}: {error}") from error
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise ValueError(f"input_shape {input_shape} is too small for model {model!r}")
    return int(out[0].numel())
