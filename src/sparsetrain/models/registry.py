"""The model registry: builders register under a name; `build_model` validates arguments and builds.

A builder is `builder(input_shape, num_classes, vocab_size, **its_options) -> nn.Module`. Each model
adapts to the per-sample `input_shape` and to `num_classes`; models that accept token inputs (int64
ids, `input_shape == (seq_len,)`) take `vocab_size`, the others reject it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

_RESERVED = ("input_shape", "num_classes", "vocab_size")

Builder = Callable[..., nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under `name`.

    Args:
        name: the registry name (lower case, e.g. "resnet20").

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: if `name` is already registered.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_BUILDERS)


def model_options(name: str) -> dict[str, Any]:
    """Return the options a model accepts, with their defaults.

    Args:
        name: a registered model name.

    Returns:
        A dict from option name to default value.
    """
    builder = _lookup(name)
    return {
        param.name: param.default
        for param in inspect.signature(builder).parameters.values()
        if param.name not in _RESERVED
    }


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    vocab_size: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model for inputs of `input_shape` and `num_classes` outputs.

    Args:
        name: model name, one of `list_models()`.
        input_shape: shape of one sample, e.g. (1, 40), (3, 32, 32), or (seq_len,) for token data.
        num_classes: number of output logits.
        vocab_size: number of token ids when the inputs are int64 tokens (then `input_shape` must be
            (seq_len,)); None for real-valued inputs. `DatasetBundle.vocab_size` can be passed as is.
        **options: model-specific options, see `model_options(name)`.

    Returns:
        The model; its forward maps a (batch, *input_shape) tensor to (batch, num_classes) logits.

    Raises:
        ValueError: unknown name or option, invalid argument, or a model that cannot take these inputs.
    """
    builder = _lookup(name)
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; allowed: {sorted(allowed) or 'none'}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if vocab_size is not None:
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
            raise ValueError(f"vocab_size must be None or an int >= 1, got {vocab_size!r}")
        if len(shape) != 1:
            raise ValueError(f"token inputs (vocab_size set) need input_shape (seq_len,), got {shape}")
    return builder(shape, num_classes, vocab_size, **options)


def _lookup(name: str) -> Builder:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _BUILDERS[name]
