"""What a topology event costs against the training it describes, at ΔT = 100.

For each model: the median time of one full training step (forward, backward, SGD step, RigL's ``step()``), the
median time of one RigL topology update, and the median time of what publishing one event adds at an update
step (copying the masks before it, :func:`sparsetrain.topology.topology_event` with the dense gradients), timed
twice: the event computed on its own, and ``sparsifier.step()`` at an update step with a subscriber against the
same step without one (the path a training run takes). The overhead is the event's time over the ΔT steps between
two events. Without subscribers the cost is one truth test per update step (timed too).

    python benchmarks/topology_events.py [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit as stdlib_timeit

import torch
from torch import nn

from _common import table, timeit, write_doc
from sparsetrain import RigL, build_model
from sparsetrain.topology import TopologySubscribers, capture_masks, topology_event

UPDATE_EVERY = 100
MODELS = (  # (name, input shape, classes, batch)
    ("lenet300", (1, 28, 28), 10, 128),
    ("resnet20", (3, 32, 32), 10, 128),
    ("resnet50", (3, 224, 224), 1000, 16),
)


def measure(name: str, input_shape: tuple[int, ...], classes: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, input_shape, classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    total = 10 * UPDATE_EVERY
    sparsifier = RigL(model, optimizer, sparsity=0.9, total_steps=total, update_every=UPDATE_EVERY)
    inputs, targets = torch.randn(batch, *input_shape), torch.randint(0, classes, (batch,))

    def train_step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        sparsifier.step()

    step_time = timeit(train_step, repeats, warmup=2)
    # An update step's state: dense gradients of one minibatch, the masks before the update.
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(inputs), targets).backward()
    start = capture_masks(sparsifier.masks)
    step = UPDATE_EVERY

    def update() -> None:
        sparsifier.masks = {n: m.clone() for n, m in start.items()}
        sparsifier.update(step)

    update_time = timeit(update, max(3, repeats // 4))
    update()
    after = sparsifier.masks
    ever = {n: start[n] | after[n] for n in after}
    grads = {n: p.grad for n, p in sparsifier.params.items()}
    fraction, target = sparsifier.current_drop_fraction(step), sparsifier.sparsity

    def event() -> None:
        before = capture_masks(start)  # the copy the sparsifier takes before the update
        topology_event(step, before, after, ever, grads=grads, drop_fraction=fraction, target_sparsity=target)

    event_time = timeit(event, repeats)
    published, silent = time_update_steps(sparsifier, start, step, repeats)
    nobody = TopologySubscribers()
    idle_time = min(stdlib_timeit.repeat(lambda: bool(nobody), number=10_000, repeat=5)) / 10_000
    weights = sum(m.numel() for m in after.values())
    return {"model": name, "batch": batch, "tensors": len(after), "weights": weights, "step": step_time,
            "update": update_time, "event": event_time, "published": published, "silent": silent,
            "idle": idle_time}


def time_update_steps(sparsifier: RigL, start: dict, step: int, repeats: int) -> tuple[float, float]:
    """Median time of ``sparsifier.step()`` at update step ``step`` with a subscriber and without one (interleaved),
    each call from the same masks and the same dense gradients."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats + 1):
        for subscribed in (True, False):
            sparsifier.masks = {n: m.clone() for n, m in start.items()}
            sparsifier.ever_active = {n: m.clone() for n, m in start.items()}
            sparsifier.step_count, sparsifier.enforcer.optimizer_steps = step - 1, step  # optimizer.step() ran
            handle = sparsifier.subscribe(lambda event: None) if subscribed else None
            began = time.perf_counter()
            assert sparsifier.step()
            times[subscribed].append(time.perf_counter() - began)
            if handle is not None:
                handle.remove()
    return statistics.median(times[True][1:]), statistics.median(times[False][1:])  # the first is a warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=[m[0] for m in MODELS], help="models to measure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, shape, classes, batch in MODELS:
        if name not in args.models:
            continue
        r = measure(name, shape, classes, batch, args.repeats)
        overhead = r["event"] / (UPDATE_EVERY * r["step"])
        added = r["published"] - r["silent"]
        rows.append([r["model"], str(r["batch"]), f"{r['tensors']} / {r['weights']:,}", f"{r['step'] * 1e3:.2f}",
                     f"{r['update'] * 1e3:.2f}", f"{r['event'] * 1e3:.3f}", f"{r['event'] / r['update']:.2f}",
                     f"**{100 * overhead:.3f}%**", f"{r['silent'] * 1e3:.2f} / {r['published'] * 1e3:.2f}",
                     f"{100 * added / (UPDATE_EVERY * r['step']):.3f}%", f"{r['idle'] * 1e9:.0f}"])
        print(rows[-1], flush=True)
    body = (
        f"RigL at 90% sparsity (ERK), SGD with momentum, float32 CPU, {args.threads} thread(s); median of "
        f"{args.repeats} repeats. *step*: one full training step (forward, backward, optimizer, `sparsifier.step()`) "
        "on an ordinary step; *update*: one RigL topology update (`sparsifier.update`); *event*: what publishing one "
        "event adds to an update step (copying the masks before the update, then `topology_event` with the dense "
        f"gradients); *overhead at ΔT = {UPDATE_EVERY}*: event / ({UPDATE_EVERY} x step), the share of training "
        "time spent on events when every update is published (target: under 1%); *update step*: "
        "`sparsifier.step()` at an update step without / with a subscriber (a no-op callback), interleaved; "
        f"*in the loop*: their difference / ({UPDATE_EVERY} x step), the same overhead measured through the "
        "sparsifier (noisier: a difference of two timings); *idle*: the cost per update step when nobody "
        "subscribed (one truth test).\n\n"
        + table(["model", "batch", "tensors / weights", "step (ms)", "update (ms)", "event (ms)", "event / update",
                 f"overhead at ΔT = {UPDATE_EVERY}", "update step (ms)", "in the loop", "idle (ns)"], rows)
    )
    write_doc("topology_events", f"Topology events: cost against training at ΔT = {UPDATE_EVERY}", body)


if __name__ == "__main__":
    main()
