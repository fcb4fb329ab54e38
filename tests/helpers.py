"""Tiny models, data and loops shared by the core-engine tests.

Every model is small enough that a whole sparse training run takes milliseconds on one CPU thread, yet
together they cover every kind of prunable tensor: Linear, Conv1d/2d/3d (grouped and depthwise),
Embedding, ``nn.MultiheadAttention`` (``in_proj_weight`` and ``out_proj``), LSTM/GRU, and a tied weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

import sparsetrain
from sparsetrain.sparsifier import Sparsifier


class TinyMLP(nn.Module):
    """Linear 12 -> 20 -> 16 -> 5 with a LayerNorm and biases (both stay dense)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.norm = nn.LayerNorm(20)
        self.fc2 = nn.Linear(20, 16)
        self.fc3 = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(x))))))


class TinyCNN(nn.Module):
    """Conv2d, grouped Conv2d, depthwise Conv2d, Conv1d and Conv3d, BatchNorm, and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv1d = nn.Conv1d(8, 6, 3, padding=1)
        self.conv3d = nn.Conv3d(1, 2, (2, 2, 2))
        self.head = nn.Linear(6 + 2 * 5 * 3 * 3, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))          # (B, 8, 6, 6)
        h = torch.relu(self.depthwise(torch.relu(self.grouped(h))))
        a = self.conv1d(h.mean(dim=3)).mean(dim=2)       # (B, 6)
        b = nn.functional.adaptive_avg_pool3d(self.conv3d(h.unsqueeze(1)), (5, 3, 3)).flatten(1)  # (B, 90)
        return self.head(torch.cat([a, b], dim=1))


class TinySeq(nn.Module):
    """Embedding -> MultiheadAttention -> LSTM -> GRU -> Linear: every sequence-model weight kind."""

    def __init__(self, vocab: int = 30, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=2, batch_first=True)
        self.lstm = nn.LSTM(dim, 6, num_layers=1, batch_first=True)
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        h, _ = self.attn(h, h, h, need_weights=False)
        h, _ = self.lstm(h)
        h, _ = self.gru(h)
        return self.head(h[:, -1])


class TiedLM(nn.Module):
    """A token model whose output projection shares the embedding's weight (a tied parameter)."""

    def __init__(self, vocab: int = 24, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(torch.tanh(self.mid(self.embed(tokens)))).mean(dim=1)


#: Expected default selection of every model, in model order.
PRUNABLE_NAMES: dict[str, list[str]] = {
    "mlp": ["fc1.weight", "fc2.weight", "fc3.weight"],
    "cnn": ["conv1.weight", "grouped.weight", "depthwise.weight", "conv1d.weight", "conv3d.weight", "head.weight"],
    "seq": ["embed.weight", "attn.in_proj_weight", "attn.out_proj.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0",
            "gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"],
    "tied": ["embed.weight", "mid.weight"],
}

MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": TinyMLP, "cnn": TinyCNN, "seq": TinySeq, "tied": TiedLM}


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """A freshly initialised model of ``kind`` ("mlp", "cnn", "seq", "tied"), seeded."""
    torch.manual_seed(seed)
    return MODELS[kind]()


def make_batch(kind: str, step: int, batch: int = 4) -> tuple[Tensor, Tensor]:
    """A deterministic (input, target) minibatch for ``kind`` that depends only on ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    if kind == "mlp":
        return torch.randn(batch, 12, generator=g), torch.randint(0, 5, (batch,), generator=g)
    if kind == "cnn":
        return torch.randn(batch, 3, 6, 6, generator=g), torch.randint(0, 4, (batch,), generator=g)
    if kind == "seq":
        return torch.randint(0, 30, (batch, 5), generator=g), torch.randint(0, 3, (batch,), generator=g)
    if kind == "tied":
        return torch.randint(0, 24, (batch, 4), generator=g), torch.randint(0, 24, (batch,), generator=g)
    raise ValueError(kind)


def make_optimizer(name: str, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """Optimizers with the options that most often leak into pruned weights (momentum, decay, moments)."""
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr or 0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if name == "sgd_dampened":
        return torch.optim.SGD(params, lr=lr or 0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr or 0.01, weight_decay=1e-3)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr or 0.01, weight_decay=0.05, amsgrad=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr or 0.01, momentum=0.9, centered=True, weight_decay=1e-3)
    if name == "adagrad":  # its accumulator starts at 0.1 everywhere, so masking it at step 0 matters
        return torch.optim.Adagrad(params, lr=lr or 0.1, initial_accumulator_value=0.1)
    raise ValueError(name)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier: Sparsifier | None, kind: str,
               step: int, clip: float | None = None) -> bool:
    """One plain PyTorch step: forward, backward, (clip), optimizer.step(), sparsifier.step(), zero_grad."""
    x, y = make_batch(kind, step)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    changed = sparsifier.step() if sparsifier is not None else False
    optimizer.zero_grad(set_to_none=True)
    return changed


def method_kwargs(method: str, total_steps: int, sparsity: float = 0.8) -> dict:
    """Short-run settings for each method so that a few dozen steps include several topology updates."""
    common = {"sparsity": sparsity, "total_steps": total_steps, "update_every": 3}
    if method in ("granet", "gmp"):
        return {**common, "prune_start": 0, "prune_end": total_steps // 2}
    if method in ("rigl", "set", "snfs"):
        return {**common, "stop_at": 0.75}
    return {k: v for k, v in common.items() if k != "update_every"}


def ranking(choice: str) -> dict:
    """Options for a ranking named as the tests parametrize it: "global" is the scope, the rest distributions."""
    return {"scope": "global"} if choice == "global" else {"distribution": choice}


def make_sparsifier(method: str, model: nn.Module, optimizer: torch.optim.Optimizer | None, total_steps: int,
                    **overrides) -> Sparsifier:
    """``sparsetrain.METHODS[method]`` with :func:`method_kwargs` updated by ``overrides``."""
    return sparsetrain.METHODS[method](model, optimizer, **{**method_kwargs(method, total_steps), **overrides})


def run_with_scaler(method: str, fused: bool, scaled: bool, **options) -> Sparsifier:
    """Five Adam steps (``fused`` or not) of a small MLP under ``method``, through ``torch.amp.GradScaler`` when
    ``scaled``; the same data and initial weights every time, so a scaled run can be compared with a plain one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=fused)
    sparsifier = sparsetrain.METHODS[method](model, optimizer, total_steps=10, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaled else None
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        sparsifier.step()
        optimizer.zero_grad()
    return sparsifier


def pruned_entries_zero(sparsifier: Sparsifier) -> bool:
    """Every weight outside its mask is exactly 0.0."""
    return all(bool((p[~sparsifier.masks[n]] == 0).all()) for n, p in sparsifier.params.items())


def pruned_state_zero(sparsifier: Sparsifier, optimizer: torch.optim.Optimizer) -> bool:
    """Every optimizer state tensor shaped like a sparsified weight is exactly 0.0 outside the mask."""
    for name, param in sparsifier.params.items():
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                if not bool((value[~sparsifier.masks[name]] == 0).all()):
                    return False
    return True


def nonzero_counts(sparsifier: Sparsifier) -> dict[str, int]:
    """Number of True entries of each mask."""
    return {n: int(m.sum()) for n, m in sparsifier.masks.items()}


def watch_topology(method: type[Sparsifier], model: nn.Module, *, steps: int = 60, update_every: int = 10,
                   batch: tuple[Tensor, Tensor] | None = None, **kwargs) -> tuple[Sparsifier, list]:
    """Train ``model`` with ``method`` on one random minibatch; the topology events its sparsifier published."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = method(model, optimizer, total_steps=steps, update_every=update_every, **kwargs)
    first = next(iter(sparsifier.params.values()))
    inputs, targets = batch if batch is not None else (torch.randn(32, first.shape[1]), torch.randint(0, 5, (32,)))
    events: list = []
    sparsifier.subscribe(events.append)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        sparsifier.step()
    return sparsifier, events
