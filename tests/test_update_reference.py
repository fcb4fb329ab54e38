"""GraNet's fast topology update against the sort-based reference (sparsetrain.reference): identical masks.

The benchmark (benchmarks/topology_update.py) times the two side by side on ResNet-50's tensors and asserts the
same equality once; here hypothesis draws many small random cases (shapes, starting masks, sparsities, drop
fractions, tie-heavy weights and gradients), on both selection paths (C kernels and pure PyTorch).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain import GraNet, native, topk
from sparsetrain.reference import reference_granet_update

CASES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=["native", "torch"])
def selection_path(request, monkeypatch):
    if request.param == "native":
        if native.compiler() is None or not native.native_enabled():
            pytest.skip("no C compiler: the native selection kernels cannot be built here")
    else:
        monkeypatch.setattr(topk, "_native_library", lambda tensors, eligible: None)
    return request.param


def layers(shapes: list[tuple[int, int]]) -> nn.Module:
    return nn.Sequential(*[nn.Linear(i, o, bias=False) for o, i in shapes])


@CASES
@given(
    shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4),
    initial=st.sampled_from([0.0, 0.3, 0.6]),
    progress=st.floats(0.05, 0.95),
    ties=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_fast_update_equals_sort_reference(selection_path, shapes, initial, progress, ties, seed):
    torch.manual_seed(seed)
    model = layers(shapes)
    total = 1000
    sparsifier = GraNet(model, None, sparsity=0.9, total_steps=total, update_every=10, initial_sparsity=initial,
                        prune_end=1.0, seed=seed)
    with torch.no_grad():
        for param in sparsifier.params.values():
            if ties:  # a handful of distinct values: most entries tie with others
                param.copy_(torch.randint(-3, 4, param.shape).float())
            param.grad = torch.randint(-2, 3, param.shape).float() if ties else torch.randn_like(param)
    step = max(10, int(progress * total) // 10 * 10)
    start = {n: m.clone() for n, m in sparsifier.masks.items()}
    weights = {n: p.detach().clone() for n, p in sparsifier.params.items()}
    grads = {n: p.grad.clone() for n, p in sparsifier.params.items()}
    n_weights = sum(p.numel() for p in weights.values())
    global_count = round((1 - sparsifier.target_sparsity(step)) * n_weights)

    sparsifier.update(step)
    expected = reference_granet_update(weights, grads, start, global_count, sparsifier.current_drop_fraction(step))

    for name in expected:
        assert torch.equal(sparsifier.masks[name], expected[name]), name
