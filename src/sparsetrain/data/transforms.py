"""Tensor transforms: per-channel normalisation of raw pixels and the standard CIFAR train augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def normalise_pixels(
    pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 255.0
) -> torch.Tensor:
    """Turn raw (N, C, H, W) pixels into float32 `(pixels / scale - mean) / std`, per channel.

    Args:
        pixels: array of shape (N, C, H, W) (any numeric dtype).
        mean: per-channel mean of the scaled pixels (length C).
        std: per-channel standard deviation of the scaled pixels (length C).
        scale: divisor that brings the raw values to [0, 1].

    Returns:
        A float32 tensor of the same shape.

    Raises:
        ValueError: if `pixels` is not 4-D or mean/std do not have one entry per channel.
    """
    if pixels.ndim != 4:
        raise ValueError(f"pixels must have shape (N, C, H, W), got {pixels.shape}")
    channels = pixels.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} entries, got {len(mean)} and {len(std)}")
    out = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32).div_(scale)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
    return out.sub_(mean_t).div_(std_t)


def channel_stats(pixels: np.ndarray, scale: float = 255.0) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of `pixels / scale` over (N, H, W).

    Args:
        pixels: array of shape (N, C, H, W).
        scale: divisor that brings the raw values to [0, 1].

    Returns:
        (mean, std), each a list with one float per channel; a zero std is replaced by 1.
    """
    data = pixels.astype(np.float64) / scale
    mean = data.mean(axis=(0, 2, 3))
    std = data.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)
    return [float(m) for m in mean], [float(s) for s in std]


class RandomCropFlip:
    """Random crop after padding, then a random horizontal flip, on one (C, H, W) tensor.

    The standard CIFAR augmentation (He et al. 2016, §4.2: pad 4, random 32x32 crop, horizontal flip).
    Inputs here are already normalised, so the padding uses `fill` per channel, which should be the
    normalised value of a black pixel, `-mean / std`, to match padding the raw image with zeros.
    Randomness comes from torch's global generator (DataLoader seeds it per worker).
    """

    def __init__(self, padding: int = 4, fill: Sequence[float] | None = None) -> None:
        """Create the transform.

        Args:
            padding: pixels of padding on each side before cropping back to the input size.
            fill: per-channel padding value (normalised black); None pads with zeros.

        Raises:
            ValueError: if `padding` is negative.
        """
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding
        self.fill = None if fill is None else torch.tensor(list(fill), dtype=torch.float32)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        channels, height, width = image.shape
        pad = self.padding
        span = 2 * pad + 1
        # One draw encodes the crop offset and the flip: this runs once per sample, and each call to
        # torch's generator costs more than the arithmetic.
        code = int(torch.randint(0, span * span * 2, ()).item())
        flip, offset = code % 2, code // 2
        top, left = divmod(offset, span)
        if pad > 0:
            padded = image.new_empty(channels, height + span - 1, width + span - 1)
            padded[:] = 0.0 if self.fill is None else self.fill.to(image.dtype).view(channels, 1, 1)
            padded[:, pad : pad + height, pad : pad + width] = image
            image = padded[:, top : top + height, left : left + width]
        return image.flip(-1) if flip else image
