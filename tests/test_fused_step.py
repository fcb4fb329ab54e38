"""The fused masked optimizer step (sparsetrain.fused_step) against the masked-gradient path.

The fused path must give *identical* weights, optimizer state and masks (torch.equal) to masking the gradients and
letting PyTorch step, over optimizers, options, methods, odd sizes, param groups and LR schedules; it must really be
used where supported, and the masked-gradient path must take over where it is not.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsetrain
from sparsetrain import fused_step
from sparsetrain.fused_step import MaskedStep, masked_step_library

pytestmark = pytest.mark.skipif(masked_step_library() is None, reason="native kernels unavailable")


class OddNet(nn.Module):
    """Odd tensor sizes (vector tails everywhere), a conv, a norm layer and biases that stay dense."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.norm = nn.BatchNorm2d(5)
        self.fc1 = nn.Linear(5 * 5 * 5, 37)
        self.fc2 = nn.Linear(37, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.norm(self.conv(x))).flatten(1))))


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd-dampening-maximize": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.8, dampening=0.25, maximize=True),
    "sgd-plain-loop": lambda p: torch.optim.SGD(p, lr=0.1, foreach=False),
    "adam-amsgrad-wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=5e-3, amsgrad=True),
    "adam-maximize-loop": lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.3, 0.9), maximize=True, foreach=False),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=5e-2, foreach=True),
    "adamw-amsgrad-loop": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2, amsgrad=True, foreach=False),
}
METHODS = ["granet", "rigl", "set", "static"]
STEPS = 16


def train(method: str, make_optimizer: Callable[..., torch.optim.Optimizer], fused: bool,
          param_groups: bool = False, scheduler: bool = False, steps: int = STEPS):
    torch.manual_seed(0)
    model = OddNet()
    if param_groups:
        params = [{"params": [model.conv.weight, model.fc2.weight], "lr": 0.03},
                  {"params": [p for n, p in model.named_parameters() if n not in ("conv.weight", "fc2.weight")]}]
        optimizer = make_optimizer(params)
        optimizer.param_groups[0]["weight_decay"] = 1e-2
    else:
        optimizer = make_optimizer(model.parameters())
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5) if scheduler else None
    sparsifier = sparsetrain.METHODS[method](model, optimizer, sparsity=0.8, total_steps=steps, update_every=4,
                                             fused_step=fused)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(6, 3, 7, 7, generator=data)
        y = torch.randint(0, 7, (6,), generator=data)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
        if schedule is not None:
            schedule.step()
        optimizer.zero_grad()
    return model, optimizer, sparsifier


def assert_identical(a, b) -> None:
    (model_a, opt_a, sp_a), (model_b, opt_b, sp_b) = a, b
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), name
        state_a, state_b = opt_a.state[p], opt_b.state[q]
        assert state_a.keys() == state_b.keys(), name
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), (name, key)
    for name in sp_a.masks:
        assert torch.equal(sp_a.masks[name], sp_b.masks[name]), name


def kernel_updates(sparsifier) -> int:
    return sparsifier.enforcer._masked_step.tensors_updated if sparsifier.enforcer._masked_step is not None else 0


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("method", METHODS)
def test_fused_path_gives_identical_weights_state_and_masks(method: str, optimizer: str) -> None:
    plain = train(method, OPTIMIZERS[optimizer], fused=False)
    fused = train(method, OPTIMIZERS[optimizer], fused=True)
    assert_identical(plain, fused)
    assert kernel_updates(plain[2]) == 0
    # Every ordinary step runs the kernel on all 3 sparsified tensors, except the first when torch must create the
    # state (all but momentum-free SGD); update steps (every 4th, while the method updates) are left to torch.
    sparsifier = fused[2]
    first = 1 if optimizer == "sgd-plain-loop" else 2
    ordinary = sum(1 for step in range(first, STEPS + 1) if not sparsifier.is_update_step(step))
    assert kernel_updates(sparsifier) == 3 * ordinary


@pytest.mark.parametrize("optimizer", ["sgd-nesterov", "adamw", "adam-amsgrad-wd"])
def test_param_groups_and_lr_schedule(optimizer: str) -> None:
    plain = train("rigl", OPTIMIZERS[optimizer], fused=False, param_groups=True, scheduler=True)
    fused = train("rigl", OPTIMIZERS[optimizer], fused=True, param_groups=True, scheduler=True)
    assert_identical(plain, fused)
    assert kernel_updates(fused[2]) > 0
    assert fused[1].param_groups[0]["lr"] < 0.03  # the schedule really changed the rate


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adamw-amsgrad-loop"])
def test_pruned_weights_and_state_stay_exactly_zero(optimizer: str) -> None:
    model, opt, sparsifier = train("set", OPTIMIZERS[optimizer], fused=True, steps=7)
    assert kernel_updates(sparsifier) > 0
    for name, mask in sparsifier.masks.items():
        param = sparsifier.params[name]
        assert not param[~mask].any(), name
        for key, value in opt.state[param].items():
            if value.shape == param.shape:
                assert not value[~mask].any(), (name, key)


def test_grads_are_restored_unmasked_after_the_step() -> None:
    torch.manual_seed(0)
    model = OddNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsetrain.Static(model, optimizer, sparsity=0.8, total_steps=10)
    x = torch.randn(4, 3, 7, 7)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        grads = {n: p.grad for n, p in sparsifier.params.items()}
        dense = {n: g.clone() for n, g in grads.items()}
        optimizer.step()
        sparsifier.step()
    assert kernel_updates(sparsifier) == 3
    for name, param in sparsifier.params.items():
        assert param.grad is grads[name]
        assert torch.equal(param.grad, dense[name])  # unmasked: only the active entries were used
        assert (param.grad[~sparsifier.masks[name]] != 0).any()


def fallback_case(make_optimizer: Callable[..., torch.optim.Optimizer], closure: bool = False):
    torch.manual_seed(0)
    model = OddNet()
    optimizer = make_optimizer(model.parameters())
    sparsifier = sparsetrain.Static(model, optimizer, sparsity=0.8, total_steps=10)
    x = torch.randn(4, 3, 7, 7)

    def loss_closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    for _ in range(3):
        if closure:
            optimizer.step(loss_closure)
        else:
            loss_closure()
            optimizer.step()
        sparsifier.step()
    return model, optimizer, sparsifier


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-2)),
    lambda p: torch.optim.RMSprop(p, lr=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
], ids=["tensor-lr", "rmsprop", "fused-sgd"])
def test_unsupported_optimizers_fall_back_to_masked_gradients(make_optimizer) -> None:
    model, optimizer, sparsifier = fallback_case(make_optimizer)
    assert MaskedStep.unsupported(optimizer) is not None
    assert kernel_updates(sparsifier) == 0
    for name, mask in sparsifier.masks.items():
        param = sparsifier.params[name]
        assert not param[~mask].any()
        assert not param.grad[~mask].any()  # the masked-gradient path masked them


def test_closure_falls_back() -> None:
    _, optimizer, sparsifier = fallback_case(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), closure=True)
    assert MaskedStep.unsupported(optimizer) is None
    assert kernel_updates(sparsifier) == 0


def test_grad_scaler_arguments_fall_back() -> None:
    torch.manual_seed(0)
    model = OddNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = sparsetrain.Static(model, optimizer, sparsity=0.8, total_steps=10)
    model(torch.randn(4, 3, 7, 7)).sum().backward()
    sparsifier.enforcer._before_optimizer_step(optimizer, (optimizer,), {"grad_scale": torch.ones(()), "found_inf": None})
    assert kernel_updates(sparsifier) == 0
    for name, mask in sparsifier.masks.items():
        assert sparsifier.params[name].grad is not None and not sparsifier.params[name].grad[~mask].any()


def test_no_native_library_uses_masked_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_step, "masked_step_library", lambda: None)
    plain = train("granet", OPTIMIZERS["adamw"], fused=False)
    fallback = train("granet", OPTIMIZERS["adamw"], fused=True)
    assert_identical(plain, fallback)
    assert kernel_updates(fallback[2]) == 0


def test_sparsetrain_native_0_still_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSETRAIN_NATIVE", "0")
    fused_step.masked_step_library.cache_clear()  # the library is looked up once per process; look again
    try:
        m = torch.nn.Linear(20, 9)
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        s = sparsetrain.RigL(m, o, sparsity=0.7, total_steps=6, update_every=2)
        for _ in range(6):
            m(torch.randn(3, 20)).sum().backward()
            o.step()
            s.step()
            o.zero_grad()
        assert s.enforcer._masked_step is None and fused_step.MaskedStep.unsupported(o) == "native kernels unavailable"
        assert not m.weight[~s.masks["weight"]].any()
    finally:
        monkeypatch.undo()
        fused_step.masked_step_library.cache_clear()


def test_fused_step_switch_is_validated() -> None:
    model = OddNet()
    with pytest.raises(TypeError, match="fused_step"):
        sparsetrain.Static(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, total_steps=5,
                           fused_step="yes")
    sparsifier = sparsetrain.Static(model, None, sparsity=0.5, total_steps=5, fused_step=False)
    assert sparsifier.config["fused_step"] is False


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 300),
    kind=st.sampled_from(["sgd", "adam", "adamw"]),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    beta1=st.sampled_from([0.0, 0.3, 0.9]),
    amsgrad=st.booleans(),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_torch_on_one_tensor(size, kind, momentum, nesterov, maximize, weight_decay, beta1, amsgrad,
                                            density, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(size, generator=generator) < density
    start = torch.randn(size, generator=generator) * mask
    grads = [torch.randn(size, generator=generator) * 10.0 ** torch.randint(-20, 3, (size,), generator=generator)
             for _ in range(3)]
    if kind == "sgd":
        options = dict(lr=0.05, momentum=momentum, weight_decay=weight_decay, maximize=maximize,
                       nesterov=nesterov and momentum > 0, dampening=0.0 if nesterov else 0.2)
        make = torch.optim.SGD
    else:
        options = dict(lr=1e-2, betas=(beta1, 0.999), weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        make = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    reference, fused = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opt_reference, opt_fused = make([reference], **options), make([fused], **options)
    stepper = MaskedStep(opt_fused)
    for grad in grads:
        reference.grad = grad * mask.float()
        opt_reference.step()
        fused.grad = grad.clone()
        if stepper.run({"w": fused}, {"w": mask}):
            fused.grad = None
        else:
            fused.grad = grad * mask.float()
        opt_fused.step()
    assert stepper.tensors_updated >= 2
    assert torch.equal(reference, fused)
    for key, value in opt_reference.state[reference].items():
        assert torch.equal(value, opt_fused.state[fused][key]), key


def test_float_mask_copies_are_freed_while_the_kernel_serves_every_tensor() -> None:
    """The plain path keeps float copies of the masks (4 bytes per weight); the fused path reads the bool masks."""
    fused = train("granet", OPTIMIZERS["sgd-momentum-wd"], fused=True, steps=STEPS)  # ends on an update step
    assert fused[2].is_update_step(STEPS)
    assert fused[2].enforcer._multipliers == {}
    plain = train("granet", OPTIMIZERS["sgd-momentum-wd"], fused=False, steps=STEPS)
    assert set(plain[2].enforcer._multipliers) == set(plain[2].masks)


class RoundNet(nn.Module):
    """Weights whose sizes are multiples of 16 x threads: torch's fused Adam runs them without scalar tails."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(96, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 7)  # 224 weights; with 3 threads only fc1 (6144) splits into whole vectors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def train_round(make_optimizer, fused: bool, threads: int, steps: int = 12):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = RoundNet()
        optimizer = make_optimizer(model.parameters())
        sparsifier = sparsetrain.RigL(model, optimizer, sparsity=0.8, total_steps=steps, update_every=4,
                                      fused_step=fused)
        data = torch.Generator().manual_seed(3)
        for _ in range(steps):
            nn.functional.cross_entropy(model(torch.randn(8, 96, generator=data)),
                                        torch.randint(0, 7, (8,), generator=data)).backward()
            optimizer.step()
            sparsifier.step()
            optimizer.zero_grad()
        return model, optimizer, sparsifier
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2, fused=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, amsgrad=True, fused=True),
], ids=["adamw", "adam-amsgrad"])
def test_torch_fused_adam_is_reproduced_on_tensors_without_tails(make_optimizer, threads: int) -> None:
    """Adam/AdamW(fused=True): the kernel serves tensors torch runs without scalar tails, bit-identically."""
    plain = train_round(make_optimizer, fused=False, threads=threads)
    fused = train_round(make_optimizer, fused=True, threads=threads)
    assert_identical(plain, fused)
    assert MaskedStep.unsupported(fused[1]) is None
    served = kernel_updates(fused[2])
    tensors_without_tails = sum(not fused_step._torch_fused_tails(p.numel(), threads)
                                for p in fused[2].params.values())
    assert tensors_without_tails == (3 if threads < 3 else 1)
    ordinary = sum(1 for step in range(2, 13) if not fused[2].is_update_step(step))
    assert served == tensors_without_tails * ordinary
