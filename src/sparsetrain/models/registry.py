"""The model registry: builders register under a name; `build_model` validates arguments and builds.

A builder is `builder(input_shape, num_classes, vocab_size, **its_options) -> nn.Module`. Each model
adapts to the per-sample `input_shape` and to `num_classes`; models that accept token inputs (int64
ids, `input_shape == (seq_len,)`) take `vocab_size`, the others reject it.

A user's own model is named `package.module:factory` (see :func:`is_factory`). The contract of a factory:
`factory(input_shape, num_classes, **options) -> nn.Module`, called with the per-sample input shape as a tuple of
ints and the number of classes as the built-in models are, the model options (`--model-option`) as keywords, and
`vocab_size=<int>` as a keyword too when the dataset holds token ids. The module is imported by name: it must be
importable from the current directory or from `PYTHONPATH`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from sparsetrain.models.shapes import image_shape, reject_tokens
from sparsetrain.registry import Registry

_FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")

#: How a user's factory is written where a model name is expected.
FACTORY_FORM = "package.module:factory"

Builder = Callable[..., nn.Module]
_BUILDERS: Registry[Builder] = Registry("model", reserved=("input_shape", "num_classes", "vocab_size"),
                                        alternative=f", or a user's {FACTORY_FORM}")


def is_factory(name: str) -> bool:
    """Whether ``name`` names a user's model factory, ``package.module:factory`` (dotted Python identifiers)."""
    return isinstance(name, str) and _FACTORY.fullmatch(name) is not None


def load_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that ``package.module:factory`` names, imported from the current directory or ``PYTHONPATH``.

    Raises:
        ValueError: not of that form, a module that cannot be imported, no such attribute, or not callable (one
            line each, naming the model).
    """
    if not is_factory(name):
        raise ValueError(f"model {name!r} is not allowed: a user's model is named {FACTORY_FORM}")
    module_name, _, attribute = name.partition(":")
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:  # the console script's sys.path starts at its own directory, not the current one
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything on import
        detail = " ".join(str(exc).split())
        raise ValueError(f"model {name!r}: cannot import module {module_name!r} ({type(exc).__name__}: {detail}); "
                         "it must be importable from the current directory or PYTHONPATH") from None
    finally:
        if added:
            sys.path.remove(here)
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model {name!r}: module {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"model {name!r}: {attribute!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under `name` ("resnet20"); ValueError if the name is taken."""
    return _BUILDERS.register(name)


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return _BUILDERS.names()


def model_options(name: str) -> dict[str, Any]:
    """Return the options the model `name` accepts, with their defaults; ValueError for an unknown name."""
    return _BUILDERS.options(name)


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
        name: model name, one of `list_models()`, or a user's factory as `package.module:factory` (see the
            module docstring for its contract).
        input_shape: shape of one sample, e.g. (1, 40), (3, 32, 32), or (seq_len,) for token data.
        num_classes: number of output logits.
        vocab_size: number of token ids when the inputs are int64 tokens (then `input_shape` must be
            (seq_len,)); None for real-valued inputs. `DatasetBundle.vocab_size` can be passed as is.
        **options: model-specific options, see `model_options(name)`.

    Returns:
        The model; its forward maps a (batch, *input_shape) tensor to (batch, num_classes) logits.

    Raises:
        ValueError: unknown name or option, invalid argument, a model that cannot take these inputs, or a
            factory that cannot be imported or does not return a module.
    """
    if not is_factory(name):
        _BUILDERS.check_options(name, options)
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
    if is_factory(name):
        return _build_from_factory(name, shape, num_classes, vocab_size, options)
    return _BUILDERS.get(name)(shape, num_classes, vocab_size, **options)


def register_image_model(name: str, build: Callable[[tuple[int, int, int], int], nn.Module], doc: str) -> None:
    """Register `name` as a model for (C, H, W) images with no options of its own.

    The registered builder refuses token inputs and inputs that are not (C, H, W) images, one line each naming
    the model, then returns ``build(input_shape, num_classes)``.

    Args:
        name: the registry name.
        build: makes the model from the (C, H, W) input shape and the number of classes.
        doc: the builder's docstring (one line, shown where models are listed).

    Raises:
        ValueError: if `name` is already registered.
    """

    def builder(input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None) -> nn.Module:
        reject_tokens(name, vocab_size)
        return build(image_shape(name, input_shape), num_classes)

    builder.__doc__ = doc
    register_model(name)(builder)


def _build_from_factory(name: str, shape: tuple[int, ...], num_classes: int, vocab_size: int | None,
                        options: dict[str, Any]) -> nn.Module:
    """``factory(input_shape, num_classes, **options[, vocab_size=...])``, checked to give a module."""
    factory = load_factory(name)
    kwargs = dict(options) if vocab_size is None else {**options, "vocab_size": vocab_size}
    try:
        inspect.signature(factory).bind(shape, num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"model {name!r} cannot be called as factory(input_shape, num_classes"
                         f"{''.join(f', {k}=...' for k in kwargs)}): {exc}") from None
    except ValueError:  # no signature to inspect (a builtin): let the call decide
        pass
    model = factory(shape, num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model
