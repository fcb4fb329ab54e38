"""Deploying a converted model: graph capture (trace, script, torch.export, compile, ONNX) gives the model's
outputs, and the converted state goes back to the original architecture."""

import io

import pytest
import torch
from torch import nn

from sparsetrain.sparse import NMLinear, SparseLinear, convert, dense_state_dict, unconvert


def _model() -> nn.Sequential:
    """A 97%-sparse Linear (-> SparseLinear), a 2:8 Linear (-> NMLinear) and a dense one; a shared layer too."""
    torch.manual_seed(0)
    shared = nn.Linear(64, 64)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), shared, shared,
                          nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.97)
        groups = model[2].weight.view(64, -1, 8)
        keep = groups.abs().argsort(-1)[..., -2:]
        groups.mul_(torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True))
        shared.weight.mul_(torch.rand_like(shared.weight) > 0.9)
    return model


@pytest.fixture
def converted():
    model = _model()
    fast = convert(model, min_numel=0)
    assert [type(m) for m in fast] == [SparseLinear, nn.ReLU, NMLinear, nn.ReLU, SparseLinear, SparseLinear,
                                       nn.Linear]
    return model, fast


def _inputs():
    torch.manual_seed(1)
    return torch.randn(4, 256), torch.randn(7, 256) * 3  # the traced input, and another of another batch size


def test_trace_records_a_graph_that_follows_its_input(converted):
    model, fast = converted
    x, other = _inputs()
    traced = torch.jit.trace(fast, x)
    # before: the native kernel's output was recorded as a constant, so every input gave the traced output
    assert torch.allclose(traced(x[:4] + 1), model(x[:4] + 1), atol=1e-5)
    assert torch.allclose(torch.jit.trace(fast, other)(other * 2), model(other * 2), atol=1e-5)


def test_script_compiles_the_dense_equivalent(converted):
    model, fast = converted
    _, other = _inputs()
    scripted = torch.jit.script(fast)
    assert torch.allclose(scripted(other), model(other), atol=1e-5)


def test_torch_export_and_compile_give_the_models_outputs(converted):
    model, fast = converted
    x, other = _inputs()
    exported = torch.export.export(fast, (x,)).module()
    assert torch.allclose(exported(x * -1), model(x * -1), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(torch.compile(fast, backend="eager")(other), model(other), atol=1e-5)


def test_the_dense_state_dict_loads_strictly_into_the_original_architecture(converted):
    model, fast = converted
    _, other = _inputs()
    state = dense_state_dict(fast)
    assert set(state) == set(model.state_dict())
    fresh = _model()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    fresh.load_state_dict(state)  # strict
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(fresh(other), model(other))
    plain = unconvert(fast)
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in plain) and plain[4] is plain[5]
    assert torch.equal(plain(other), model(other)) and isinstance(fast[0], SparseLinear)  # a copy by default


def test_onnx_export_of_a_converted_model_runs_with_the_models_outputs(converted):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, fast = converted
    x, other = _inputs()
    buffer = io.BytesIO()
    torch.onnx.export(fast, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue())
    (out,) = session.run(None, {"x": other.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(other), atol=1e-5)
