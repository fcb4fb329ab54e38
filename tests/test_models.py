"""Tests for sparsetrain.models: every registered model's shapes, gradients, known parameter counts,
input adaptation and the errors for combinations that make no sense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsetrain.data import get_dataset
from sparsetrain.models import build_model, list_models, model_options

NUM_CLASSES = 10

# A representative (small) input per model; models with global pooling get small images to stay fast.
REPRESENTATIVE_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (1, 40),
    "lenet300": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "conv2": (3, 16, 16),
    "conv4": (3, 16, 16),
    "conv6": (3, 16, 16),
    "cnn1d": (1, 40),
    "resnet20": (3, 16, 16),
    "resnet32": (3, 8, 8),
    "resnet56": (3, 8, 8),
    "vgg16": (3, 8, 8),
    "vgg19": (3, 8, 8),
    "resnet18": (3, 8, 8),
    "resnet50": (3, 8, 8),
    "wrn": (3, 8, 8),
    "gpt": (2, 12),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return build_model("resnet50", (3, 32, 32), NUM_CLASSES)


def test_every_registered_model_is_covered() -> None:
    assert set(list_models()) == set(REPRESENTATIVE_SHAPES)


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE_SHAPES))
def test_forward_shape_and_backward_reaches_every_parameter(name: str, request: pytest.FixtureRequest) -> None:
    torch.manual_seed(0)
    shape = REPRESENTATIVE_SHAPES[name]
    if name == "resnet50":  # the biggest model is built once per module
        model = request.getfixturevalue("resnet50").train()
        model.zero_grad(set_to_none=True)
    else:
        model = build_model(name, shape, NUM_CLASSES)
        assert model.training  # sizing the head with a dummy forward must not leave eval mode on
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, NUM_CLASSES - 1])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "shape", "num_classes", "options", "expected"),
    [
        ("lenet300", (1, 28, 28), 10, {}, 266_610),  # LeNet-300-100
        ("mlp", (1, 28, 28), 10, {}, 266_610),
        ("lenet5", (1, 28, 28), 10, {"variant": "caffe"}, 431_080),  # SNIP, Table 1
        ("lenet5", (1, 28, 28), 10, {}, 61_706),
        ("lenet5", (1, 32, 32), 10, {}, 61_706),  # padding keeps the 16x5x5 map on 28x28
        ("resnet20", (3, 32, 32), 10, {}, 269_722),  # He et al.: 0.27M
        ("resnet32", (3, 32, 32), 10, {}, 464_154),  # 0.46M
        ("resnet56", (3, 32, 32), 10, {}, 853_018),  # 0.85M
        ("resnet20", (3, 32, 32), 10, {"shortcut": "B"}, 269_722 + 2_752),  # two 1x1 projections + BN
        ("conv2", (3, 32, 32), 10, {}, 4_301_642),  # Frankle & Carbin: 4.3M
        ("conv4", (3, 32, 32), 10, {}, 2_425_930),  # 2.4M
        ("cnn1d", (1, 40), 10, {}, 5_210),
        ("vgg16", (3, 32, 32), 10, {}, 14_728_266),
        ("resnet18", (3, 32, 32), 10, {}, 11_173_962),
        ("resnet18", (3, 224, 224), 1000, {}, 11_689_512),  # torchvision's ImageNet ResNet-18
        ("wrn", (3, 32, 32), 10, {}, 1_079_642),  # WRN-22-2, RigL's CIFAR-10 network: 1.1M
        ("wrn", (3, 32, 32), 10, {"depth": 40, "width": 4}, 8_949_210),  # Zagoruyko & Komodakis, Table: 8.9M
        ("wrn", (3, 32, 32), 10, {"depth": 16, "width": 8}, 10_961_370),  # 11.0M
    ],
)
def test_known_parameter_counts(name: str, shape, num_classes: int, options: dict, expected: int) -> None:
    assert n_params(build_model(name, shape, num_classes, **options)) == expected


def test_resnet50_parameter_count_and_forward(resnet50: nn.Module) -> None:
    assert n_params(resnet50) == 23_520_842  # CIFAR-stem ResNet-50, about 23.5M
    assert isinstance(resnet50.conv1, nn.Conv2d) and resnet50.conv1.kernel_size == (3, 3)
    resnet50.eval()
    with torch.no_grad():
        assert resnet50(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet_stem_follows_input_size() -> None:
    assert build_model("resnet18", (3, 224, 224), 5).conv1.kernel_size == (7, 7)
    assert build_model("resnet18", (3, 224, 224), 5, stem="cifar").conv1.kernel_size == (3, 3)
    assert build_model("resnet18", (3, 64, 64), 5).conv1.kernel_size == (3, 3)


def test_convnets_adapt_to_channels_sizes_and_classes() -> None:
    cases = (("conv2", (1, 28, 28)), ("conv6", (1, 8, 8)), ("lenet5", (4, 40, 36)), ("resnet20", (1, 28, 28)))
    for name, shape in cases:
        model = build_model(name, shape, 3)
        assert model(torch.randn(2, *shape)).shape == (2, 3)
    # Global pooling: the parameter count does not depend on the image size, pools are skipped on 8x8.
    assert n_params(build_model("vgg19", (3, 8, 8), 10)) == n_params(build_model("vgg19", (3, 64, 64), 10))


def test_cnn1d_takes_signals_with_or_without_channel_axis() -> None:
    model = build_model("cnn1d", (40,), 10)
    x = torch.randn(3, 40)
    assert torch.equal(model(x), model(x.unsqueeze(1)))
    assert build_model("cnn1d", (2, 100), 4)(torch.randn(1, 2, 100)).shape == (1, 4)


def test_token_models_on_modular_arithmetic() -> None:
    bundle = get_dataset("modular", p=7, train_fraction=0.6, val_fraction=0.0, seed=0)
    x, y = bundle.train.inputs, bundle.train.targets
    cases = (("gpt", {"n_layer": 1, "d_model": 32, "n_head": 4}), ("mlp", {"hidden": (64,), "embed_dim": 16}))
    for name, options in cases:
        torch.manual_seed(0)
        model = build_model(name, bundle.input_shape, bundle.num_classes, vocab_size=bundle.vocab_size, **options)
        assert isinstance(model.embedding if name == "mlp" else model.embed, nn.Embedding)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):  # both fit in about 20 steps
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
        assert accuracy == 1.0, f"{name} did not fit the {len(y)} training pairs (accuracy {accuracy})"


def test_gpt_is_causal_and_state_dict_round_trips() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", (5,), 3, vocab_size=11, n_layer=2, d_model=16, n_head=2).eval()
    tokens = torch.randint(0, 11, (4, 5))
    # The causal mask is not saved, so state_dicts stay plain parameters and batch-norm-free buffers.
    assert "causal_mask" not in model.state_dict()
    fresh = build_model("gpt", (5,), 3, vocab_size=11, n_layer=2, d_model=16, n_head=2).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(tokens), model(tokens))
    # Reading only the last position of a causal model: every token still influences it.
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 11
    assert not torch.allclose(model(changed), model(tokens))
    # Causality: the hidden state at position 1 ignores tokens after it.
    hidden = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o))
    model(tokens)
    first = hidden["h"][:, :2].clone()
    later = tokens.clone()
    later[:, 2:] = (later[:, 2:] + 3) % 11
    model(later)
    assert torch.allclose(hidden["h"][:, :2], first, atol=1e-6)


def test_gpt_on_real_valued_inputs_uses_positions() -> None:
    model = build_model("gpt", (3, 4, 4), 2, d_model=8, n_head=2)
    assert model.pos_embed.num_embeddings == 16 and model.embed.in_features == 3
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 2)
    assert build_model("gpt", (10,), 2, d_model=8, n_head=2)(torch.randn(2, 10)).shape == (2, 2)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "message"),
    [
        ("cnn1d", (3, 32, 32), {}, "needs 1-D signals"),
        ("conv2", (1, 40), {}, r"needs image inputs \(C, H, W\)"),
        ("vgg16", (40,), {}, "needs image inputs"),
        ("resnet20", (3,), {"vocab_size": 5}, "not tokens"),
        ("cnn1d", (3,), {"vocab_size": 5}, "not tokens"),
        ("mlp", (1, 3), {"vocab_size": 5}, r"input_shape \(seq_len,\)"),
        ("lenet5", (1, 8, 8), {}, "too small for model 'lenet5'"),
        ("gpt", (3,), {"n_head": 3}, "divisible by n_head"),
        ("mlp", (4,), {"hidden": (10, 0)}, "hidden"),
        ("mlp", (4,), {"depth": 3}, r"unknown option\(s\) \['depth'\].*allowed: \['embed_dim', 'hidden'\]"),
        ("resnet20", (3, 32, 32), {"shortcut": "C"}, "shortcut"),
        ("resnet18", (3, 32, 32), {"stem": "big"}, "stem"),
        ("lenet5", (1, 28, 28), {"variant": "x"}, "variant"),
        ("transformer", (4,), {}, "known models: cnn1d, conv2"),
        ("mlp", (0, 4), {}, "input_shape"),
    ],
)
def test_invalid_combinations_raise_clear_errors(name: str, shape, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, shape, 10, **kwargs)


def test_num_classes_is_validated_and_options_are_listed() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (4,), 0)
    assert model_options("gpt") == {"n_layer": 2, "n_head": 4, "d_model": 128, "mlp_ratio": 4, "dropout": 0.0}
