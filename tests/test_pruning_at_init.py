"""Pruning at initialisation: known answers for SNIP, GraSP and SynFlow, layer collapse, and the contract
(exact counts, the caller's model untouched, Static's ``init=``)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.distributions import allocate
from sparsetrain.init_pruning import (
    INIT_METHODS,
    grasp_scores,
    linearize,
    ones_input,
    prune_at_init,
    round_densities,
    snip_scores,
    synflow_scores,
)
from sparsetrain.masks import select_prunable
from sparsetrain.methods.static import Static


def two_layer(seed: int = 0, hidden: int = 6, n_in: int = 5, n_out: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden, bias=False), nn.Linear(hidden, n_out, bias=False))


def tiny_data(seed: int = 1, n: int = 12, n_in: int = 5, n_out: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g), torch.randint(0, n_out, (n,), generator=g)


def small_vgg() -> nn.Sequential:
    """A VGG-like conv stack (conv-BN-ReLU blocks, max pooling, a linear head) for 3x8x8 inputs."""
    torch.manual_seed(0)

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(3, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), *block(128, 128),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 2 * 2, 10))


def test_snip_keeps_exactly_the_top_k_of_hand_computed_g_times_w() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 4, bias=False)
    x, y = tiny_data()
    # By hand: for logits z = x W^T and mean cross-entropy, dL/dW = (softmax(z) - onehot(y))^T x / N.
    with torch.no_grad():
        z = x @ model.weight.T
        grad = (torch.softmax(z, dim=1) - F.one_hot(y, 4).float()).T @ x / x.shape[0]
        expected = (grad * model.weight).abs()
    scores = snip_scores(model, ["weight"], [(x, y)])
    torch.testing.assert_close(scores["weight"], expected)
    k = 7  # sparsity 0.65 of 20 weights keeps 7
    masks = prune_at_init(model, "snip", 0.65, (x, y))
    top = torch.zeros(20, dtype=torch.bool)
    top[expected.flatten().argsort(descending=True)[:k]] = True
    assert torch.equal(masks["weight"], top.view(4, 5))


def test_snip_over_several_batches_equals_one_batch_holding_them_all() -> None:
    model = two_layer()
    x, y = tiny_data(n=12)
    loader = [(x[:5], y[:5]), (x[5:9], y[5:9]), (x[9:], y[9:])]  # unequal sizes: weighting matters
    names = list(select_prunable(model))
    whole = snip_scores(model, names, [(x, y)])
    split = snip_scores(model, names, loader)
    for name in names:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-7)
    assert prune_at_init(model, "snip", 0.5, loader, batches=3).keys() == whole.keys()


def test_grasp_score_is_minus_w_times_hessian_gradient_and_the_highest_are_removed() -> None:
    model = two_layer(seed=3)
    x, y = tiny_data(seed=4)
    w1, w2 = (p.detach().clone() for p in model.parameters())
    sizes = [w1.numel(), w2.numel()]

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        a, b = theta.split(sizes)
        logits = x @ a.view_as(w1).T @ b.view_as(w2).T
        return F.cross_entropy(logits / 200.0, y)

    theta = torch.cat([w1.flatten(), w2.flatten()]).double()
    x = x.double()
    grad = torch.autograd.functional.jacobian(loss_of, theta)
    hessian = torch.autograd.functional.hessian(loss_of, theta)
    expected = -theta * (hessian @ grad)
    x = x.float()
    scores = grasp_scores(model, ["0.weight", "1.weight"], [(x, y)])
    got = torch.cat([scores["0.weight"].flatten(), scores["1.weight"].flatten()]).double()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-12)
    assert (expected > 0).any() and (expected < 0).any()  # the sign matters in this case

    masks = prune_at_init(model, "grasp", 0.75, (x, y))
    kept = torch.cat([masks["0.weight"].flatten(), masks["1.weight"].flatten()])
    k = round(0.25 * theta.numel())
    assert int(kept.sum()) == k
    lowest = torch.zeros_like(kept)
    lowest[expected.argsort()[:k]] = True  # remove the highest = keep the lowest
    assert torch.equal(kept, lowest)


def test_synflow_score_known_answer_on_a_linear_chain() -> None:
    model = two_layer(seed=5)
    net = linearize(copy.deepcopy(model))
    scores = synflow_scores(net, ["0.weight", "1.weight"], ones_input((5,)))
    w1, w2 = model[0].weight.double().abs(), model[1].weight.double().abs()
    # R = 1^T |W2| |W1| 1: dR/dW1[i, j] = sum_k |W2|[k, i]; dR/dW2[k, i] = sum_j |W1|[i, j].
    torch.testing.assert_close(scores["0.weight"], w1 * w2.sum(0)[:, None])
    torch.testing.assert_close(scores["1.weight"], w2 * w1.sum(1)[None, :])


def test_synflow_avoids_the_layer_collapse_of_magnitude_at_999_percent() -> None:
    model = small_vgg()
    with pytest.warns(UserWarning, match="layer collapse"):
        magnitude = prune_at_init(model, "magnitude", 0.999)
    assert any(int(m.sum()) == 0 for m in magnitude.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse warning either
        synflow = prune_at_init(model, "synflow", 0.999, input_shape=(3, 8, 8))
    assert all(int(m.sum()) >= 1 for m in synflow.values())
    total = sum(m.numel() for m in synflow.values())
    assert sum(int(m.sum()) for m in synflow.values()) == round(0.001 * total)


@pytest.mark.parametrize("method", INIT_METHODS)
def test_caller_model_and_global_rng_are_untouched(method: str) -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = tiny_data()
    rng = torch.get_rng_state()
    masks = prune_at_init(model, method, 0.6, [(x[:6], y[:6]), (x[6:], y[6:])], batches=2, input_shape=(5,),
                          rounds=3)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert list(masks) == list(select_prunable(model))
    assert all(m.dtype == torch.bool for m in masks.values())


@pytest.mark.parametrize("method", INIT_METHODS)
@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
def test_exact_counts(method: str, distribution: str) -> None:
    model = two_layer(hidden=9)
    ranking = {"scope": "global"} if distribution == "global" else {"distribution": distribution}
    masks = prune_at_init(model, method, 0.7, tiny_data(), **ranking, input_shape=(5,), rounds=4)
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    if distribution == "global":
        assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * (45 + 36))
    else:
        assert {n: int(m.sum()) for n, m in masks.items()} == allocate(shapes, 0.7, distribution)


def test_iterative_rounds_follow_the_exponential_schedule() -> None:
    densities = round_densities(0.01, 100)
    assert densities[-1] == 0.01
    assert densities[49] == pytest.approx(0.1)
    assert round_densities(0.2, 4, "linear") == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_seeds_make_random_masks_reproducible_and_different() -> None:
    model = two_layer()
    a = prune_at_init(model, "random", 0.5, seed=1)
    b = prune_at_init(model, "random", 0.5, seed=1)
    c = prune_at_init(model, "random", 0.5, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_static_init_option_uses_prune_at_init() -> None:
    model = two_layer()
    data = tiny_data()
    expected = prune_at_init(model, "snip", 0.8, data)
    trained = copy.deepcopy(model)
    sparsifier = Static(trained, None, sparsity=0.8, total_steps=10, init="snip", init_data=data)
    assert all(torch.equal(sparsifier.masks[n], expected[n]) for n in expected)
    assert all(int(torch.count_nonzero(trained.get_parameter(n))) == int(expected[n].sum()) for n in expected)
    options = Static(copy.deepcopy(model), None, sparsity=0.8, total_steps=10, init="synflow",
                     init_options={"input_shape": (5,), "rounds": 5})
    assert options.current_sparsity() == pytest.approx(1 - round(0.2 * 54) / 54)
    with pytest.raises(ValueError, match="init="):
        Static(copy.deepcopy(model), None, sparsity=0.8, total_steps=10, init="bogus")
    with pytest.raises(ValueError, match="masks"):
        Static(copy.deepcopy(model), None, sparsity=0.8, total_steps=10, init="snip", init_data=data,
               masks=expected)


def test_argument_errors_name_the_argument() -> None:
    model = two_layer()
    with pytest.raises(ValueError, match="method='obd'"):
        prune_at_init(model, "obd", 0.5)
    with pytest.raises(ValueError, match="data=None"):
        prune_at_init(model, "snip", 0.5)
    with pytest.raises(ValueError, match="input_shape"):
        prune_at_init(model, "synflow", 0.5)
    with pytest.raises(ValueError, match="sparsity=1.0"):
        prune_at_init(model, "random", 1.0)
    with pytest.raises(ValueError, match="rounds=0"):
        prune_at_init(model, "random", 0.5, rounds=0)
    with pytest.raises(ValueError, match="batches=2"):
        prune_at_init(model, "snip", 0.5, tiny_data(), batches=2)


# -- N:M -------------------------------------------------------------------------------------------------------

def _nm_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))


def test_one_shot_magnitude_nm_is_the_n_largest_magnitudes_of_every_group() -> None:
    from sparsetrain.nm import nm_mask

    model = _nm_net()
    masks = prune_at_init(model, "magnitude", pattern="2:4")
    for name, param in select_prunable(model).items():
        expected = nm_mask(param.detach().abs(), "2:4") if name != "4.weight" else torch.ones_like(param, dtype=bool)
        assert torch.equal(masks[name], expected), name  # 4.weight: 6 inputs, not a multiple of 4: kept dense


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "random"])
def test_every_score_goes_through_the_pattern(method: str) -> None:
    from sparsetrain.nm import is_nm

    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    masks = prune_at_init(_nm_net(), method, data=(x, y), pattern="1:4")
    assert is_nm(masks["0.weight"], "1:4") and is_nm(masks["2.weight"], "1:4") and bool(masks["4.weight"].all())


def test_synflow_under_a_pattern_decays_n_round_by_round() -> None:
    from sparsetrain.init_pruning.prune import _round_budget
    from sparsetrain.nm import NMPattern, nm_layouts

    model = _nm_net()
    layouts = nm_layouts(model, select_prunable(model), "1:4")
    ns = [(_round_budget(layouts, NMPattern(1, 4), d, {}).groups.get("0.weight")) for d in
          round_densities(0.25, 6)]
    assert [g.pattern.n if g is not None else 4 for g in ns] == [4, 3, 2, 2, 2, 1]  # ceil(4 * 0.25^(k/6)), >= N


def test_pattern_refuses_another_sparsity_a_scope_and_pinned_sparsities() -> None:
    model = _nm_net()
    with pytest.raises(ValueError, match="sparsity=0.9 is not allowed with pattern='2:4'"):
        prune_at_init(model, "magnitude", 0.9, pattern="2:4")
    with pytest.raises(ValueError, match="not allowed with pattern='2:4'"):
        prune_at_init(model, "magnitude", pattern="2:4", scope="layer")
    with pytest.raises(ValueError, match="pinned for '0.weight'"):
        prune_at_init(model, "magnitude", pattern="2:4", sparsity_overrides={"0.weight": 0.3})
    assert bool(prune_at_init(model, "magnitude", 0.5, pattern="2:4", dense_first=True)["0.weight"].all())
    with pytest.raises(TypeError, match="give sparsity"):
        prune_at_init(model, "magnitude")
