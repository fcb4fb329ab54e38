"""SR-STE's step (sparsetrain.srste) against a plain restatement of the paper's update on tiny layers.

Zhou et al. 2021, eq. for SR-STE: W <- W - lr * (g(W~) + lambda_W * (Ē ⊙ W)), W~ = E ⊙ W, E the N:M mask of |W|
recomputed every step. The restatement below computes E with explicit loops over groups, g(W~) by autograd on
W~ as a leaf, and the update by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsetrain.nm import is_nm
from sparsetrain.srste import SRSTE_DECAY, srste_gradient, srste_mask, straight_through


def loop_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Linear weight [out, in]: in every row, every run of m inputs keeps its n largest |w| (lowest index on ties)."""
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], m):
            order = sorted(range(start, start + m), key=lambda j: (-abs(float(weight[row, j])), j))
            for j in order[:n]:
                mask[row, j] = True
    return mask


def paper_steps(weight, x, y, steps, lr, decay, n, m, momentum=0.0):
    """SR-STE by hand: returns the weights after each step and the masks used."""
    w = weight.clone()
    buffer = None
    history, masks = [], []
    for _ in range(steps):
        e = loop_mask(w, n, m)
        w_tilde = (w * e).requires_grad_()
        F.mse_loss(F.linear(x, w_tilde), y).backward()
        g = w_tilde.grad + decay * (~e) * w
        if momentum:
            buffer = g.clone() if buffer is None else momentum * buffer + g
            g = buffer
        w = w - lr * g
        history.append(w.clone())
        masks.append(e)
    return history, masks


def library_steps(weight, x, y, steps, lr, decay, pattern, momentum=0.0):
    """The same run with srste_mask / straight_through / srste_gradient and torch.optim.SGD."""
    param = torch.nn.Parameter(weight.clone())
    optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum)
    history, masks = [], []
    for _ in range(steps):
        mask = srste_mask(param, pattern)
        optimizer.zero_grad()
        F.mse_loss(F.linear(x, straight_through(param, mask)), y).backward()
        param.grad = srste_gradient(param.grad, param.detach(), mask, decay)
        optimizer.step()
        history.append(param.detach().clone())
        masks.append(mask)
    return history, masks


@pytest.mark.parametrize("pattern,momentum", [("2:4", 0.0), ("1:4", 0.0), ("2:4", 0.9)])
def test_srste_matches_the_papers_update(pattern, momentum):
    n, m = map(int, pattern.split(":"))
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 8, generator=gen)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 6, generator=gen)
    # A large lr and lambda make masks flip and the decay term matter within a few steps.
    ours, our_masks = library_steps(weight, x, y, 12, 0.5, 0.3, pattern, momentum)
    ref, ref_masks = paper_steps(weight, x, y, 12, 0.5, 0.3, n, m, momentum)
    for step, (a, b, ma, mb) in enumerate(zip(ours, ref, our_masks, ref_masks)):
        assert torch.equal(ma, mb), f"mask differs at step {step}"
        assert is_nm(ma, pattern)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"weights differ at step {step}")
    assert any(not torch.equal(a, b) for a, b in zip(our_masks, our_masks[1:])), "masks never changed"
    # Dense weights are kept: pruned positions are not zero.
    assert bool((ours[-1][~our_masks[-1]] != 0).all())


def test_straight_through_gradient_is_the_gradient_of_the_masked_weight():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 8, generator=gen, requires_grad=True)
    x = torch.randn(5, 8, generator=gen)
    mask = srste_mask(weight, "2:4")
    out = F.linear(x, straight_through(weight, mask))
    w_tilde = (weight.detach() * mask).requires_grad_()
    assert torch.equal(out, F.linear(x, w_tilde))
    out.sum().backward()
    F.linear(x, w_tilde).sum().backward()
    assert torch.equal(weight.grad, w_tilde.grad)
    assert bool((weight.grad[~mask] != 0).any())  # pruned weights get a gradient too


def test_srste_gradient_decays_only_pruned_weights():
    weight = torch.tensor([[4.0, -3.0, 2.0, -1.0]])
    mask = srste_mask(weight, "2:4")
    assert mask.tolist() == [[True, True, False, False]]
    grad = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    out = srste_gradient(grad, weight, mask)
    assert torch.equal(out[mask], grad[mask])
    torch.testing.assert_close(out[~mask], torch.tensor([0.5 + SRSTE_DECAY * 2.0, 0.5 - SRSTE_DECAY * 1.0]))
    assert torch.equal(srste_gradient(grad, weight, mask, decay=0.0), grad)
    assert SRSTE_DECAY == 2e-4
    with pytest.raises(ValueError, match="decay"):
        srste_gradient(grad, weight, mask, decay=-1.0)


def test_srste_mask_on_a_convolution_groups_input_channels():
    weight = torch.randn(3, 8, 2, 2, generator=torch.Generator().manual_seed(1))
    mask = srste_mask(weight, "2:4")
    for o in range(3):
        for i in range(2):
            for j in range(2):
                for start in (0, 4):
                    column = weight[o, start : start + 4, i, j].abs()
                    expected = torch.zeros(4, dtype=torch.bool)
                    expected[column.topk(2).indices] = True
                    assert torch.equal(mask[o, start : start + 4, i, j], expected)
