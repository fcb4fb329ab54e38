"""Tests for sparsetrain.analysis.flops: inference FLOPs (dense/sparse, per layer) and training FLOPs."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.analysis.flops import inference_flops, training_flops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("batch", [1, 4])
def test_linear_counts_two_in_out_per_sample(batch: int) -> None:
    rep = inference_flops(nn.Linear(7, 3), (batch, 7))
    assert rep.dense_total == 2 * 7 * 3 * batch  # the bias add is not counted
    assert rep.by_name()["weight"].dense_flops == 2 * 7 * 3 * batch
    assert rep.other_flops == 0 and rep.sparse_total == rep.dense_total


@pytest.mark.parametrize("device", DEVICES)
def test_conv_counts_and_sparse_scaling(device: str) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, groups=2), nn.Flatten(), nn.Linear(72, 5)
    ).to(device)
    with torch.no_grad():
        model[4].weight[:, :18] = 0  # density 0.75
    rep = inference_flops(model, (1, 3, 8, 8))
    rows = rep.by_name()
    conv1 = 2 * (4 * 8 * 8) * 3 * 3 * 3  # 2 * output elements * in_channels * kh * kw
    conv2 = 2 * (8 * 3 * 3) * (4 // 2) * 3 * 3  # grouped: in_channels / groups
    assert rows["0.weight"].dense_flops == conv1 == 13824
    assert rows["2.weight"].dense_flops == conv2 == 2592
    assert rows["4.weight"].dense_flops == 2 * 72 * 5
    assert rows["4.weight"].density == 0.75
    assert rows["4.weight"].sparse_flops == pytest.approx(0.75 * 720)
    assert rep.dense_total == conv1 + conv2 + 720
    assert rep.sparse_total == pytest.approx(conv1 + conv2 + 540)
    assert rep.sparse_ratio == pytest.approx(rep.sparse_total / rep.dense_total)
    # FlopCounterMode's per-module counts agree with the per-weight attribution
    assert rep.module_flops["0"] == conv1 and rep.module_flops["4"] == 720 and rep.module_flops[""] == rep.dense_total


def test_masks_override_weights_and_are_validated() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :2] = True  # density 1/3; the weights themselves are dense
    rep = inference_flops(model, (1, 6), masks={"0.weight": mask})
    assert rep.by_name()["0.weight"].density == pytest.approx(1 / 3)
    assert rep.by_name()["0.weight"].sparse_flops == pytest.approx(48 / 3)
    assert rep.by_name()["2.weight"].density == 1.0  # no mask: measured from the weights
    with pytest.raises(ValueError, match="1.weight"):
        inference_flops(model, (1, 6), masks={"1.weight": mask})
    with pytest.raises(ValueError, match="0.weight.*\\(3, 6\\)"):
        inference_flops(model, (1, 6), masks={"0.weight": torch.ones(3, 6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="input_shape"):
        inference_flops(model, (0, 6))
    with pytest.raises(TypeError, match="input_shape"):
        inference_flops(model, 6)  # type: ignore[arg-type]


class _TinyLM(nn.Module):
    """Embedding, self-attention, and an output layer tied to the embedding."""

    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.head(self.attn(h, h, h, need_weights=self.need_weights)[0])


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_and_tied_weights(need_weights: bool) -> None:
    model = _TinyLM(need_weights)
    mask = torch.zeros(10, 8, dtype=torch.bool)
    mask[:5] = True
    rep = inference_flops(model, (1, 5), masks={"head.weight": mask}, input_dtype=torch.long)
    rows = rep.by_name()
    s, e, h = 5, 8, 2
    assert rows["attn.in_proj_weight"].dense_flops == 2 * s * e * 3 * e
    assert rows["attn.out_proj.weight"].dense_flops == 2 * s * e * e
    # the tied output layer's matmul is charged to the embedding matrix, at the mask's density
    assert "head.weight" not in rows
    assert rows["emb.weight"].dense_flops == 2 * s * e * 10
    assert rows["emb.weight"].density == 0.5
    # q @ k^T and attn @ v multiply no weight: 2 * (2 * s * s * head_dim) per head, unscaled
    assert rep.other_flops == h * 2 * (2 * s * s * (e // h))
    assert rep.sparse_total == pytest.approx(rep.dense_total - 0.5 * 2 * s * e * 10)


def test_model_state_is_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference_flops(model, (3, 4))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_flops_report_serialises() -> None:
    rep = inference_flops(nn.Sequential(nn.Linear(3, 2)), (1, 3))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["rows"][0] == {
        "name": "0.weight", "module": "0", "shape": [2, 3], "dense_flops": 12, "density": 1.0, "sparse_flops": 12.0
    }
    assert d["dense_total"] == 12 and d["input_shape"] == [1, 3]
    assert rep.dense_by_layer() == {"0.weight": 12}
    lines = str(rep).splitlines()
    assert lines[2].startswith("0.weight") and lines[-1].startswith("total")


# ---- training FLOPs -------------------------------------------------------------------------------


def test_training_constant_density() -> None:
    rep = training_flops({"a": 100.0, "b": 50.0}, [(0, {"a": 0.2, "b": 0.2})], total_steps=10, batch_size=8)
    assert rep.total == pytest.approx(3 * 150 * 0.2 * 10 * 8)
    assert rep.dense_total == pytest.approx(3 * 150 * 10 * 8)
    assert rep.ratio == pytest.approx(0.2)
    assert rep.by_name()["a"].training_flops == pytest.approx(3 * 100 * 0.2 * 80)


def test_training_density_halves_midway() -> None:
    history = [(0, {"a": 0.5}), (50, {"a": 0.25})]
    rep = training_flops({"a": 100.0}, history, total_steps=100)
    assert rep.total == pytest.approx(3 * 100 * (0.5 * 50 + 0.25 * 50))  # 11250
    assert rep.ratio == pytest.approx(0.375)
    # a layer absent from the history is dense; an entry at or after total_steps adds nothing
    rep2 = training_flops({"a": 100.0, "b": 10.0}, [*history, (100, {"a": 0.0})], total_steps=100)
    assert rep2.by_name()["b"].ratio == 1.0 and rep2.by_name()["a"].training_flops == pytest.approx(11250)


def test_training_dense_gradient_steps_match_rigl_average() -> None:
    f_d, d, delta_t = 1000.0, 0.1, 4
    f_s = f_d * d
    # one dense-gradient step every delta_t + 1 steps: RigL's (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1) per step
    rep = training_flops({"w": f_d}, [(0, {"w": d})], total_steps=delta_t + 1, dense_grad_steps=[delta_t])
    assert rep.total / (delta_t + 1) == pytest.approx((3 * f_s * delta_t + 2 * f_s + f_d) / (delta_t + 1))
    # the dense step costs 2 f_S + f_D at the density in force at that step
    rep = training_flops({"w": f_d}, [(0, {"w": 1.0}), (2, {"w": d})], total_steps=4, dense_grad_steps=[1, 3])
    assert rep.total == pytest.approx(3 * f_d + 3 * f_d + 3 * f_s + (2 * f_s + f_d))


def _brute_force(flops: dict, history: list, total_steps: int, grad_steps: list, batch: int) -> float:
    total = 0.0
    for t in range(total_steps):
        dens = [h for s, h in history if s <= t][-1]
        for layer, f in flops.items():
            dl = dens.get(layer, 1.0)
            total += batch * f * ((2 * dl + 1) if t in grad_steps else 3 * dl)
    return total


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_training_matches_step_by_step_sum(data: st.DataObject) -> None:
    layers = {f"l{i}": data.draw(st.floats(0, 1e4)) for i in range(data.draw(st.integers(1, 3)))}
    total_steps = data.draw(st.integers(1, 40))
    starts = sorted(set([0] + data.draw(st.lists(st.integers(1, 50), max_size=4))))
    density = st.floats(0, 1)
    history = [(s, {k: data.draw(density) for k in layers if data.draw(st.booleans())}) for s in starts]
    grad = sorted(data.draw(st.sets(st.integers(0, total_steps - 1), max_size=5)))
    batch = data.draw(st.integers(1, 4))
    rep = training_flops(layers, history, total_steps, dense_grad_steps=grad, batch_size=batch)
    assert rep.total == pytest.approx(_brute_force(layers, history, total_steps, grad, batch), rel=1e-9, abs=1e-6)
    assert rep.total <= rep.dense_total * (1 + 1e-12) + 1e-9


def test_training_validation() -> None:
    flops = {"a": 1.0}
    with pytest.raises(ValueError, match="start at step 0"):
        training_flops(flops, [(5, {"a": 0.5})], 10)
    with pytest.raises(ValueError, match="increase"):
        training_flops(flops, [(0, {}), (3, {}), (3, {})], 10)
    with pytest.raises(ValueError, match="density"):
        training_flops(flops, [(0, {"a": 1.5})], 10)
    with pytest.raises(ValueError, match="'b'"):
        training_flops(flops, [(0, {"b": 0.5})], 10)
    with pytest.raises(ValueError, match="dense_grad_steps"):
        training_flops(flops, [(0, {})], 10, dense_grad_steps=[10])
    with pytest.raises(ValueError, match="repeat"):
        training_flops(flops, [(0, {})], 10, dense_grad_steps=[1, 1])
    with pytest.raises(ValueError, match="total_steps"):
        training_flops(flops, [(0, {})], 0)
    with pytest.raises(ValueError, match="batch_size"):
        training_flops(flops, [(0, {})], 5, batch_size=0)


def test_inference_feeds_training() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    inf = inference_flops(model, (1, 10))
    rep = training_flops(inf.dense_by_layer(), [(0, {"0.weight": 0.1, "2.weight": 0.5})], total_steps=3)
    assert rep.total == pytest.approx(3 * 3 * (200 * 0.1 + 40 * 0.5))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["ratio"] == pytest.approx(rep.ratio) and d["rows"][0]["name"] == "0.weight"
    assert str(rep).splitlines()[-1].startswith("total")
