"""Which tensors are sparsified, how masks attach (they do not), and the report (sparsetrain.masks)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import sparsetrain
from helpers import PRUNABLE_NAMES, make_model, make_optimizer, make_sparsifier, nonzero_counts, train_step
from sparsetrain.masks import apply_masks, resolve_overrides, select_prunable, sparsity_report


@pytest.mark.parametrize("kind", ["mlp", "cnn", "seq", "tied"])
def test_default_selection_is_every_weight_of_the_supported_modules(kind):
    model = make_model(kind)
    chosen = select_prunable(model)
    assert list(chosen) == PRUNABLE_NAMES[kind]
    params = dict(model.named_parameters())
    assert all(chosen[n] is params[n] for n in chosen)
    # Biases and norm layers stay dense.
    assert not any("bias" in n or "norm" in n or n.startswith("bn") for n in chosen)


def test_default_selection_covers_transposed_conv_and_separate_attention_projections():
    model = nn.ModuleDict({
        "up": nn.ConvTranspose2d(4, 2, 3),
        "attn": nn.MultiheadAttention(8, 2, kdim=6, vdim=5),
        "gru": nn.GRU(3, 4, num_layers=2, bidirectional=True),
        "bn": nn.BatchNorm1d(3),
    })
    names = list(select_prunable(model))
    assert names == ["up.weight", "attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
                     "attn.out_proj.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "gru.weight_ih_l0_reverse",
                     "gru.weight_hh_l0_reverse", "gru.weight_ih_l1", "gru.weight_hh_l1", "gru.weight_ih_l1_reverse",
                     "gru.weight_hh_l1_reverse"]


def test_tied_parameters_are_masked_once():
    model = make_model("tied")
    sp = sparsetrain.Static(model, None, sparsity=0.5, total_steps=10, distribution="uniform")
    assert list(sp.masks) == ["embed.weight", "mid.weight"]
    # The one mask holds for both uses of the shared tensor.
    assert model.out.weight is model.embed.weight
    assert int((model.out.weight != 0).sum()) == int(sp.masks["embed.weight"].sum()) == 24 * 8 // 2


def test_include_and_exclude_by_name_and_regex():
    model = make_model("cnn")
    assert list(select_prunable(model, include=r"conv\d.*\.weight")) == ["conv1.weight", "conv1d.weight",
                                                                          "conv3d.weight"]
    assert list(select_prunable(model, include=["head.weight"])) == ["head.weight"]
    assert list(select_prunable(model, exclude=["head.weight", r"conv\dd\.weight"])) == [
        "conv1.weight", "grouped.weight", "depthwise.weight"]


def test_overrides_and_dense_first_last_pin_tensors():
    names = ["a.weight", "b.weight", "c.weight"]
    assert resolve_overrides(names, {r"[ab]\.weight": 0.3}) == {"a.weight": 0.3, "b.weight": 0.3}
    assert resolve_overrides(names, {"b.weight": 0.5}, dense_first=True, dense_last=True) == {
        "b.weight": 0.5, "a.weight": 0.0, "c.weight": 0.0}


def test_sparsifier_applies_overrides_and_dense_first_last_exactly():
    model = make_model("mlp")
    sp = sparsetrain.Static(model, None, sparsity=0.8, total_steps=10, distribution="uniform", dense_first=True,
                            sparsity_overrides={"fc2.weight": 0.25})
    # fc1 dense (240), fc2 at 0.25 -> 0.75 * 320 = 240, fc3 at 0.8 -> 0.2 * 80 = 16.
    assert nonzero_counts(sp) == {"fc1.weight": 240, "fc2.weight": 240, "fc3.weight": 16}
    sp = sparsetrain.Static(make_model("mlp"), None, sparsity=0.8, total_steps=10, distribution="uniform",
                            dense_last=True)
    assert nonzero_counts(sp) == {"fc1.weight": 48, "fc2.weight": 64, "fc3.weight": 80}


def test_apply_masks_and_report_measure_the_weights():
    params = {"w": torch.arange(1.0, 7.0).view(2, 3), "v": torch.ones(4, 1)}
    masks = {"w": torch.tensor([[True, False, True], [False, False, True]]), "v": torch.zeros(4, 1, dtype=torch.bool)}
    apply_masks(params, masks)
    assert params["w"].tolist() == [[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]]
    assert params["v"].abs().sum() == 0
    report = sparsity_report(params)
    assert [(l.name, l.nonzeros, l.numel) for l in report.layers] == [("w", 3, 6), ("v", 0, 4)]
    assert report.sparsity == pytest.approx(7 / 10)
    row = report.to_dict()
    assert row["nonzeros"] == 3 and row["layers"][0]["sparsity"] == pytest.approx(0.5)
    assert "total" in str(report) and "0.7000" in str(report)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "seq", "tied"])
def test_names_state_dict_deepcopy_and_pickle_keep_working(kind):
    model = make_model(kind)
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    optimizer = make_optimizer("sgd", model)
    sp = make_sparsifier("rigl", model, optimizer, 12)
    for t in range(7):
        train_step(model, optimizer, sp, kind, t)
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == keys
    # A deep copy and a pickled copy of the model are plain models with the same (sparse) weights.
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert [n for n, _ in clone.named_parameters()] == names
        for (_, a), (_, b) in zip(clone.named_parameters(), model.named_parameters(), strict=True):
            assert torch.equal(a, b)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_model(kind, seed=1)
    fresh.load_state_dict(torch.load(buffer))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    # Exporting leaves the names as they were too.
    assert [n for n, _ in sp.export().named_parameters()] == names


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_sparsifier_goes_on_exactly_like_the_original(how):
    """A copy (model, optimizer and sparsifier together) must keep counting steps and updating masks."""
    model = make_model("mlp")
    optimizer = make_optimizer("adam", model)
    sp = make_sparsifier("set", model, optimizer, 30)
    for t in range(4):
        train_step(model, optimizer, sp, "mlp", t)
    bundle = (model, optimizer, sp)
    twin_model, twin_opt, twin = copy.deepcopy(bundle) if how == "deepcopy" else pickle.loads(pickle.dumps(bundle))
    assert twin.model is twin_model and twin.optimizer is twin_opt
    for t in range(4, 20):
        assert train_step(model, optimizer, sp, "mlp", t) == train_step(twin_model, twin_opt, twin, "mlp", t)
    assert twin.step_count == sp.step_count == 20
    assert all(torch.equal(sp.masks[n], twin.masks[n]) for n in sp.masks)
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)
    # The original's hooks stay on the original optimizer only.
    assert len(optimizer._optimizer_step_pre_hooks) == 1 and len(twin_opt._optimizer_step_pre_hooks) == 1


def test_export_bakes_the_masks_and_detaches_from_the_optimizer():
    model = make_model("cnn")
    optimizer = make_optimizer("sgd", model)
    sp = make_sparsifier("rigl", model, optimizer, 12, mask_gradients=True)
    for t in range(4):
        train_step(model, optimizer, sp, "cnn", t)
    masks = {n: m.clone() for n, m in sp.masks.items()}
    exported = sp.export()
    assert exported is model
    assert all(not bool((p[~masks[n]] != 0).any()) for n, p in sp.params.items())
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    # A plain optimizer step afterwards is not masked any more (the sparsifier is gone): dense gradients flow.
    train_step(model, optimizer, None, "cnn", 4)
    assert any(bool((p[~masks[n]] != 0).any()) for n, p in sp.params.items())
