"""CPU time of one CIFAR-10 epoch of a paper recipe (``sparsetrain train --recipe``), for scale.

No GPU was available to time a full recipe run, and a CPU cannot train one in reasonable time, so this measures
what one epoch costs on this CPU: the recipe's own ``Trainer`` run (data loader with its augmentation, model,
optimizer, sparsifier) on generated CIFAR-format files (random pixels, the real on-disk format, written as the tests
write them), timing ``--steps`` training steps at the recipe's batch size after ``--warmup`` untimed ones, and the
evaluation of the validation and test images at the end of the epoch. The per-step time is then multiplied by the
steps of a real CIFAR-10 epoch (50,000 training images, the last partial batch kept: 391 steps at batch 128, or
352 when the recipe holds out 10% for validation) and the evaluation time scaled to the real 5,000 validation and
10,000 test images. Random pixels cost what real ones cost: the work does not depend on the values. No topology
update falls in the timed steps (ΔT = 1,000 for GraNet); one every ΔT steps adds little.

    python benchmarks/recipe_epoch.py [--recipe granet-cifar10-resnet32] [--steps 16] [--warmup 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import ROOT, table, write_doc
from sparsetrain.experiment import Trainer
from sparsetrain.experiment.recipe import load_recipe, recipe_info
from sparsetrain.experiment.trainer import TrainerCallback

sys.path.insert(0, str(ROOT / "tests"))
from test_data import write_cifar  # noqa: E402  (the tests' writer of the real CIFAR format)

#: Images of the real CIFAR-10 training set, and of its test set.
CIFAR10_TRAIN = 50_000
CIFAR10_TEST = 10_000


class StepClock(TrainerCallback):
    """Wall and process time at the end of every training step and of the epoch."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []
        self.epoch_end: tuple[float, float] | None = None

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_step(self, trainer: Trainer) -> None:
        self.steps.append(self.now())

    def on_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.epoch_end = self.now()


def epoch_steps(images: int, batch: int) -> int:
    """Optimizer steps of one epoch over ``images`` with the last partial batch kept."""
    return -(-images // batch)


def measure(recipe: str, steps: int, warmup: int, threads: int, workdir: Path) -> dict[str, Any]:
    """Train one epoch of ``recipe`` on generated files just big enough for ``warmup + steps`` full steps."""
    base = load_recipe(recipe)
    batch = base.train.batch_size
    val_fraction = base.data.val_fraction
    # enough training images for the full steps asked (plus one image per class of slack for the stratified split)
    train_images = (warmup + steps) * batch + 10
    total = int(train_images / (1 - val_fraction)) + 10
    per_batch = -(-total // 5)  # CIFAR-10's five training files; the test file gets as many
    write_cifar(workdir / "data", base.data.name, per_batch=per_batch)
    config = base.with_overrides({"data.data_dir": str(workdir / "data"), "train.epochs": 1,
                                  "train.threads": threads})
    clock = StepClock()
    trainer = Trainer(config, workdir / "runs", callback=clock, plots=False)
    exp = trainer.prepare()
    val_images = len(exp.val_loader.dataset) if exp.val_loader is not None else 0
    test_images = len(exp.test_loader.dataset)
    trainer.fit()
    full = len(exp.train_loader.dataset) // batch  # full batches; the last, partial one is not timed
    assert full >= warmup + steps, (full, warmup, steps)
    marks = clock.steps[warmup - 1: warmup + steps]
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    assert clock.epoch_end is not None
    eval_wall = clock.epoch_end[0] - clock.steps[-1][0]
    eval_cpu = clock.epoch_end[1] - clock.steps[-1][1]
    real_val = round(CIFAR10_TRAIN * val_fraction)
    real_eval = real_val + CIFAR10_TEST
    per_image = eval_wall / (val_images + test_images)
    return {
        "recipe": recipe, "batch": batch, "threads": threads, "val_fraction": val_fraction,
        "step_wall": statistics.mean(wall), "step_wall_median": statistics.median(wall),
        "step_cpu": statistics.mean(cpu), "eval_wall": eval_wall, "eval_cpu": eval_cpu,
        "eval_images": val_images + test_images, "real_eval_images": real_eval,
        "eval_real_wall": per_image * real_eval,
        "eval_real_cpu": eval_cpu / (val_images + test_images) * real_eval,
        "epoch_steps": epoch_steps(CIFAR10_TRAIN - real_val, batch),
        "epoch_steps_all": epoch_steps(CIFAR10_TRAIN, batch),
        "epochs": base.train.epochs, "model": base.model.name, "method": base.sparse.method,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="granet-cifar10-resnet32", help="a recipe of --recipe list")
    parser.add_argument("--steps", type=int, default=16, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (train.threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # so that the doc's machine line names the threads measured
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.recipe, args.steps, args.warmup, args.threads, Path(tmp))
    steps, steps_all = r["epoch_steps"], r["epoch_steps_all"]
    train_min = r["step_wall"] * steps / 60
    rows = [
        ["one training step (data loading included), wall",
         f"{r['step_wall']:.3f} s (median {r['step_wall_median']:.3f})"],
        ["one training step, process CPU time (all threads)", f"{r['step_cpu']:.3f} s"],
        [f"training of one epoch: {steps} steps (the recipe's split, {100 * r['val_fraction']:g}% held out)",
         f"{train_min:.1f} min"],
        [f"training of one epoch on all 50,000 images: {steps_all} steps",
         f"{r['step_wall'] * steps_all / 60:.1f} min"],
        [f"training of one epoch ({steps} steps), process CPU time", f"{r['step_cpu'] * steps / 60:.1f} CPU-min"],
        [f"evaluation at the epoch's end ({r['real_eval_images']:,} images, scaled from {r['eval_images']})",
         f"{r['eval_real_wall'] / 60:.1f} min"],
        ["one epoch, training + evaluation", f"{train_min + r['eval_real_wall'] / 60:.1f} min"],
        [f"the whole recipe at that rate ({r['epochs']} epochs)",
         f"{(train_min + r['eval_real_wall'] / 60) * r['epochs'] / 60:.0f} h"],
    ]
    info = recipe_info(args.recipe)
    body = (f"Recipe `{args.recipe}`: {info['description']}. Batch {r['batch']}, {r['threads']} torch threads, "
            f"mean of {args.steps} training steps after {args.warmup} untimed ones, on generated CIFAR-format files "
            "(random pixels; the work does not depend on them), through the recipe's own `Trainer` run (its data "
            "loader with augmentation, model, optimizer and sparsifier; no topology update in the timed steps). "
            "The epoch figures multiply the mean step by the steps of a real CIFAR-10 epoch (the last partial "
            "batch kept) and scale the evaluation time by the number of images.\n\n"
            + table(["what", "time"], rows)
            + f"\n\nThe machine was shared with other jobs while this ran (see the load average above; this "
              f"process ran at niceness {os.nice(0)}), so the wall times are upper bounds for this CPU: the process "
              "got the CPU time above, not the wall time times its threads. No GPU was available: the recipe's GPU "
              "time has not been measured.")
    write_doc("recipe_epoch", "CPU time of one CIFAR-10 epoch of a paper recipe", body)


if __name__ == "__main__":
    main()
