"""Data parallelism: masks stay bit-identical on every rank of a real 2-process DDP run (gloo, CPU).

The test launches this same file under ``python -m torch.distributed.run --standalone --nproc_per_node 2``;
run as a script it is the worker (see :func:`_worker_main`). Each rank trains on its own data shard, so
without DDP's gradient all-reduce the gradient-grown masks would differ (the negative control shows the
checker catching exactly that).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120
UPDATE_EVERY = 4


# ---------------------------------------------------------------------------------------------------------------
# the worker (runs in each torchrun process)
# ---------------------------------------------------------------------------------------------------------------
def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 5))


def _params_checksum(model: nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _run_scenario(name: str, out: Path) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sparsetrain
    from sparsetrain.sparse.backend import distributed_data_parallel
    from sparsetrain.checkpoint_io import load_checkpoint, save_checkpoint
    from sparsetrain.distributed import MaskDivergenceError, assert_masks_identical, masks_checksum, rank
    from sparsetrain.nm import nm_report

    me = rank()
    started = time.perf_counter()
    synced = name != "granet_no_ddp"
    sparse = name.endswith("_sparse")
    # With DDP: different initial weights per rank (DDP must broadcast rank 0's). The unsynchronised control
    # starts identical, so only its unsynchronised gradients can make the masks diverge.
    torch.manual_seed(100 + me if synced else 100)
    model = _model()
    ddp = DDP(model) if synced and not sparse else None
    optimizer = (torch.optim.Adam(model.parameters(), lr=3e-3) if name.startswith("rigl_accumulate")
                 else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4))
    common = dict(sparsity=0.85, total_steps=STEPS, update_every=UPDATE_EVERY, seed=7)
    if sparse:  # sparse storage swaps the weights for their values: DDP wraps the model after the sparsifier
        common["backend"] = "sparse"
    if name in ("granet_module", "granet_no_ddp"):
        sparsifier = sparsetrain.GraNet(model, optimizer, prune_end=0.5, **common)
    elif name == "granet_st_sparse":
        sparsifier = sparsetrain.GraNet(model, optimizer, prune_end=0.5, initial_sparsity=0.5, **common)
    elif name == "set_wrapper":
        sparsifier = sparsetrain.SET(ddp, optimizer, stop_at=1.0, **common)  # built on the DDP wrapper itself
    elif name == "set_sparse":
        sparsifier = sparsetrain.SET(model, optimizer, stop_at=1.0, **common)
    elif name.startswith("rigl_accumulate"):
        sparsifier = sparsetrain.RigL(model, optimizer, stop_at=1.0, **common)
    elif name == "rigl_nm":  # N:M: every group regrows what it dropped
        sparsifier = sparsetrain.RigL(model, optimizer, stop_at=1.0, pattern="2:4", total_steps=STEPS,
                                      update_every=UPDATE_EVERY, seed=7)
    elif name == "srste_nm":  # masks recomputed from |W| at every step
        sparsifier = sparsetrain.SRSTE(model, optimizer, pattern="2:4", total_steps=STEPS, seed=7)
    else:
        raise ValueError(name)
    if sparse:
        ddp = distributed_data_parallel(model)
    forward = ddp if synced else model

    # Each rank its own data shard, labelled by one shared teacher.
    teacher = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    data = torch.Generator().manual_seed(1000 + me)
    micro_batches = 2 if name.startswith("rigl_accumulate") else 1
    update_steps: list[int] = []
    hashes: list[str] = []
    index_hashes: list[str] = []
    diverged_at = None
    divergence_message = ""
    for _ in range(STEPS):
        for micro in range(micro_batches):
            x = torch.randn(16, 20, generator=data)
            y = (x @ teacher).argmax(dim=1)
            loss = nn.functional.cross_entropy(forward(x), y) / micro_batches
            if synced and micro < micro_batches - 1:
                with ddp.no_sync():  # gradient accumulation: all-reduce only on the last micro-batch
                    loss.backward()
            else:
                loss.backward()
        optimizer.step()
        if sparse and sparsifier.is_update_step(sparsifier.enforcer.optimizer_steps):
            # GraNet's pruning resizes the values: DDP (which holds their gradient accumulators) must be gone first
            ddp = forward = None
            gc.collect()
        changed = sparsifier.step()
        optimizer.zero_grad(set_to_none=True)
        if sparse and forward is None:
            ddp = forward = distributed_data_parallel(model)
        if changed:
            update_steps.append(sparsifier.step_count)
            hashes.append(masks_checksum(sparsifier))
            if sparse:  # the index sets themselves, not only the masks built from them
                digest = hashlib.blake2b(digest_size=16)
                for layer in sparsifier.enforcer.layers.values():
                    digest.update(layer.flat_indices().numpy().tobytes())
                index_hashes.append(digest.hexdigest())
            try:
                assert_masks_identical(sparsifier)
            except MaskDivergenceError as err:
                diverged_at = sparsifier.step_count
                divergence_message = str(err)
                break

    result: dict[str, Any] = {
        "update_steps": update_steps, "hashes": hashes, "index_hashes": index_hashes, "diverged_at": diverged_at,
        "divergence_message": divergence_message, "step_count": sparsifier.step_count,
        "expected_update_steps": [t for t in range(1, STEPS + 1) if sparsifier.is_update_step(t)],
        "names": sorted(sparsifier.masks), "params_checksum": _params_checksum(model),
        "final_checksum": masks_checksum(sparsifier), "sparsity": sparsifier.current_sparsity(),
        "measured_sparsity": sparsifier.report().sparsity, "loss": float(loss.detach()) * micro_batches,
        "follows_pattern": None if sparsifier.pattern is None else
        nm_report(sparsifier.masks, sparsifier.layouts, sparsifier.pattern).follows,
        "seconds": time.perf_counter() - started,
    }
    if not synced:
        return result
    path = out / f"{name}.pt"
    if me == 0:
        save_checkpoint({"sparsifier": sparsifier.state_dict()}, path)
    dist.barrier()
    state = load_checkpoint(path)["sparsifier"]
    result["checkpoint_matches"] = all(torch.equal(state["masks"][n], m) for n, m in sparsifier.masks.items())
    result["checkpoint_step"] = state["step"]
    # The checker must also catch a divergence that a user introduces (e.g. one rank re-seeded).
    if me == 1:
        first = next(iter(sparsifier.masks))
        sparsifier.masks[first].view(-1)[0] ^= True
    try:
        assert_masks_identical(sparsifier)
        result["tamper_detected"] = False
    except MaskDivergenceError as err:
        result["tamper_detected"] = str(err)
    return result


def _worker_main() -> None:
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", nargs="+", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {name: _run_scenario(name, args.out) for name in args.scenarios}
    (args.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# the tests (run under pytest)
# ---------------------------------------------------------------------------------------------------------------
SCENARIOS = ["granet_module", "set_wrapper", "rigl_accumulate", "granet_no_ddp", "rigl_nm", "srste_nm",
             "rigl_accumulate_sparse", "set_sparse", "granet_st_sparse"]
SYNCED = ["granet_module", "set_wrapper", "rigl_accumulate", "rigl_accumulate_sparse", "set_sparse",
          "granet_st_sparse"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: keep gloo on the loopback interface
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).resolve()), "--out", str(out), "--scenarios", *SCENARIOS]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return ranks[0], ranks[1], out


@pytest.mark.parametrize("scenario", SYNCED)
def test_masks_bit_identical_on_every_rank_after_every_update(ddp_run, scenario: str) -> None:
    rank0, rank1, _ = (ddp_run[0][scenario], ddp_run[1][scenario], ddp_run[2])
    assert rank0["diverged_at"] is None and rank1["diverged_at"] is None
    assert rank0["step_count"] == rank1["step_count"] == STEPS  # counted in optimizer steps, not micro-batches
    assert rank0["update_steps"] == rank0["expected_update_steps"] == rank1["update_steps"]
    assert len(rank0["update_steps"]) >= STEPS // UPDATE_EVERY - 2
    assert rank0["hashes"] == rank1["hashes"]
    assert len(set(rank0["hashes"])) > len(rank0["hashes"]) // 2  # the topology really moved
    assert rank0["params_checksum"] == rank1["params_checksum"]
    assert rank0["final_checksum"] == rank1["final_checksum"] == rank0["hashes"][-1]
    assert rank0["sparsity"] == pytest.approx(0.85, abs=2e-3)
    assert rank0["measured_sparsity"] >= rank0["sparsity"]  # pruned weights are exactly zero on the weights
    if scenario.endswith("_sparse"):
        assert rank0["index_hashes"] == rank1["index_hashes"] and len(rank0["index_hashes"]) == len(rank0["hashes"])


def test_sparse_storage_under_ddp_trains_like_masked_dense_storage(ddp_run) -> None:
    dense, sparse = ddp_run[0]["rigl_accumulate"], ddp_run[0]["rigl_accumulate_sparse"]
    assert dense["update_steps"] == sparse["update_steps"]
    assert abs(dense["loss"] - sparse["loss"]) < 0.05  # same recipe, same data: the same training, up to rounding


@pytest.mark.parametrize("scenario", ["rigl_nm", "srste_nm"])
def test_nm_masks_bit_identical_on_every_rank_and_every_group_holds_n(ddp_run, scenario: str) -> None:
    rank0, rank1 = ddp_run[0][scenario], ddp_run[1][scenario]
    assert rank0["diverged_at"] is None and rank1["diverged_at"] is None  # checked after every change
    assert rank0["step_count"] == rank1["step_count"] == STEPS
    assert rank0["update_steps"] == rank1["update_steps"] and rank0["hashes"] == rank1["hashes"]
    if scenario == "rigl_nm":
        assert rank0["update_steps"] == rank0["expected_update_steps"]
    else:  # SR-STE recomputes at every step; step() reports the steps where a mask moved
        assert rank0["expected_update_steps"] == list(range(1, STEPS + 1)) and len(rank0["update_steps"]) >= 10
    assert len(set(rank0["hashes"])) > len(rank0["hashes"]) // 2
    assert rank0["params_checksum"] == rank1["params_checksum"]
    assert rank0["final_checksum"] == rank1["final_checksum"]
    assert rank0["follows_pattern"] is True and rank1["follows_pattern"] is True
    assert rank0["sparsity"] == 0.5 and rank0["measured_sparsity"] >= 0.5


@pytest.mark.parametrize("scenario", [*SYNCED, "rigl_nm", "srste_nm"])
def test_saved_sparsifier_state_matches_every_rank(ddp_run, scenario: str) -> None:
    from sparsetrain.checkpoint_io import load_checkpoint
    from sparsetrain.distributed import masks_checksum

    rank0, rank1, out = ddp_run[0][scenario], ddp_run[1][scenario], ddp_run[2]
    assert rank0["checkpoint_matches"] is True and rank1["checkpoint_matches"] is True
    state = load_checkpoint(out / f"{scenario}.pt")["sparsifier"]
    assert state["step"] == STEPS
    assert masks_checksum(state["masks"]) == rank0["final_checksum"] == rank1["final_checksum"]


def test_sparsifier_on_ddp_wrapper_keeps_plain_names(ddp_run) -> None:
    names = ddp_run[0]["set_wrapper"]["names"]
    assert names == ["0.weight", "2.weight", "4.weight"]
    assert names == ddp_run[0]["granet_module"]["names"]


def test_checker_reports_divergence_on_every_rank(ddp_run) -> None:
    for results in ddp_run[:2]:
        message = results["granet_module"]["tamper_detected"]
        assert message and "rank 1 vs rank 0" in message and "0.weight" in message
    # Negative control: without DDP each rank grows from its own gradients and the checker must fire.
    control0, control1 = ddp_run[0]["granet_no_ddp"], ddp_run[1]["granet_no_ddp"]
    assert control0["diverged_at"] is not None and control0["diverged_at"] == control1["diverged_at"]
    assert control0["diverged_at"] <= 3 * UPDATE_EVERY
    assert "differ" in control0["divergence_message"]


# -- single-process checks of the helpers ------------------------------------------------------------------------
def test_helpers_outside_a_distributed_run() -> None:
    from sparsetrain.distributed import assert_masks_identical, is_main_process, masks_checksum, rank, world_size

    masks = {"a": torch.rand(7, 5) > 0.5, "b": torch.rand(3, 3, 3) > 0.2}
    assert is_main_process() and rank() == 0 and world_size() == 1
    assert assert_masks_identical(masks) == masks_checksum(masks)


def test_rank_is_read_from_torchrun_variables_before_the_group_exists(monkeypatch, capsys) -> None:
    from sparsetrain.cli.terminal import note
    from sparsetrain.distributed import is_main_process, launch_environment, process_position, rank, world_size
    from sparsetrain.experiment.config import ConfigError
    from sparsetrain.experiment.parallel import SINGLE, setup

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_environment() is None and process_position() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch_environment() is None and setup(torch.device("cpu")) == (SINGLE, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert process_position() == (1, 2, 0) and rank() == 1 and world_size() == 2 and not is_main_process()
    note("only rank 0 talks")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    note("rank 0 talks")
    assert capsys.readouterr().err == "sparsetrain: rank 0 talks\n"
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="environment variable RANK='two' is not allowed: expected an int"):
        launch_environment()
    assert rank() == 0 and world_size() == 1  # the lenient readers; the run itself stops with the error:
    with pytest.raises(ConfigError, match="RANK='two' is not allowed"):
        setup(torch.device("cpu"))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="expected 0 <= RANK < WORLD_SIZE"):
        setup(torch.device("cpu"))


def test_checksum_sees_every_bit_shape_and_name() -> None:
    from sparsetrain.distributed import mask_digests, masks_checksum

    generator = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(13, 11, generator=generator) > 0.5, "b": torch.rand(9, generator=generator) > 0.5}
    base = masks_checksum(masks)
    assert masks_checksum({k: v.clone() for k, v in masks.items()}) == base
    for name, mask in masks.items():
        for index in range(mask.numel()):  # every single-bit flip, including the padded last byte
            flipped = dict(masks)
            flipped[name] = mask.clone()
            flipped[name].view(-1)[index] ^= True
            assert masks_checksum(flipped) != base, (name, index)
            assert mask_digests(flipped)[name] != mask_digests(masks)[name]
    assert masks_checksum({"a": masks["a"].reshape(11, 13), "b": masks["b"]}) != base
    assert masks_checksum({"c": masks["a"], "b": masks["b"]}) != base


def test_checksum_accepts_a_sparsifier_and_rejects_junk() -> None:
    import sparsetrain
    from sparsetrain.distributed import masks_checksum

    model = _model()
    sparsifier = sparsetrain.Static(model, None, sparsity=0.5, total_steps=10)
    assert masks_checksum(sparsifier) == masks_checksum(sparsifier.masks)
    with pytest.raises(TypeError, match="masks"):
        masks_checksum([1, 2])
    with pytest.raises(TypeError, match="masks\\['x'\\]"):
        masks_checksum({"x": [True]})


def test_single_process_ddp_wrapper_state_fits_the_plain_model(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sparsetrain

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp = DDP(_model())
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        wrapped = sparsetrain.RigL(ddp, optimizer, sparsity=0.7, total_steps=20, update_every=2, seed=3)
        wrapped.remove()  # one sparsifier per parameter: the plain one below drives the same tensors
        plain = sparsetrain.RigL(ddp.module, None, sparsity=0.7, total_steps=20, update_every=2, seed=3)
        assert list(wrapped.masks) == list(plain.masks) == ["0.weight", "2.weight", "4.weight"]
        assert all(torch.equal(wrapped.masks[n], plain.masks[n]) for n in plain.masks)
        plain.load_state_dict(wrapped.state_dict())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker_main()
