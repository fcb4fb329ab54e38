"""Grokking tickets: does a lottery ticket taken from a network that has grokked generalise sooner?

After Minegishi, Iwasawa & Matsuo (2023), *Grokking Tickets: Lottery Tickets Accelerate Grokking*. The task is
modular addition ``(a + b) mod p`` with a fraction of the ``p^2`` pairs for training; an embedding + MLP trained
full-batch with AdamW and weight decay 1 first memorises the training set, then, much later, generalises
("grokking", Power et al. 2022). The model follows the paper's MLP: the two token embeddings are summed, then
a bottleneck MLP and an unembedding, no biases, weights drawn with std ``1/sqrt(fan_in)``. Here:

1. train the dense network until it generalises (test accuracy >= 95%), then on for ``SETTLE`` times as many
   steps in all, so weight decay clears the memorising weights (the paper takes the ticket after perfect
   generalisation, at the end of a long run);
2. take the magnitude ticket from those weights (one shot, global ranking over every weight matrix, at
   several sparsities), rewind the survivors to their initial values, retrain with the same recipe;
3. compare with the two lottery controls at the same per-layer counts: the ticket's mask on a fresh random
   initialisation ("reinit"), and a random mask from the same initial weights ("random").

The training loop is this example's own (full batch, evaluated every few steps, stopped early once the run has
generalised), so the lottery is composed here from :mod:`sparsetrain.lottery`'s pieces (one-shot variant):
:func:`~sparsetrain.lottery.prune_round` for the tickets, :func:`~sparsetrain.lottery.rewind` to the initial
weights, :func:`~sparsetrain.lottery.reinitialize` and :func:`~sparsetrain.lottery.random_mask_like` for the
controls, :class:`~sparsetrain.Static` to hold each mask. (A recipe that the harness can train, with a fixed
number of epochs, runs the same pipeline on disk, resumable, with ``sparsetrain.studies.run_lottery``.) Reported:
the steps to memorise (train accuracy >= 99%) and to generalise (test accuracy >= 95%); sparse runs stop once
both happened (the budget otherwise). About 12,000 training steps in all with the defaults: a few minutes on 2
idle CPU cores.

    python examples/grokking_tickets.py --write docs/results/grokking.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.lottery import (
    layer_rates,
    prune_round,
    random_mask_like,
    reinitialize,
    rewind,
    snapshot,
)
from sparsetrain.masks import select_prunable, sparsity_report
from sparsetrain.methods.static import Static

# -- configuration: the defaults keep the run to a few minutes on 2 CPU cores --------------------------------
P = 59                 # modulus; the grokking literature uses 97, 113 or 67 (Grokking Tickets); smaller is faster
TRAIN_FRACTION = 0.4   # share of the p^2 pairs used for training (0.4 as Grokking Tickets); less = later grokking
EMBED_DIM = 128        # token embedding width (the paper: 500)
HIDDEN = 64            # MLP bottleneck width (the paper: 48)
LR = 3e-3              # AdamW learning rate, constant, full batch (the paper: 1e-3, which groks ~3x later)
WEIGHT_DECAY = 1.0     # the large decoupled weight decay that makes grokking happen in reasonable time
MAX_STEPS = 4000       # step budget of every training run
SETTLE = 4.0           # the dense run trains SETTLE x its steps-to-generalise before the ticket is taken
EVAL_EVERY = 10        # evaluate every this many steps (the resolution of the reported step counts)
PRUNE_RATE = 0.4       # one-shot levels keep 60%, 36% of the weights: sparsity 1 - 0.6^k
ROUNDS = 2             # levels: sparsity 0.40 and 0.64
MEMORISED, GENERALISED = 0.99, 0.95


class ModularMLP(nn.Module):
    """Sum of the embeddings of a and b -> in-projection -> ReLU -> out-projection -> logits; no biases."""

    def __init__(self, p: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, embed_dim)
        self.inproj = nn.Linear(embed_dim, hidden, bias=False)
        self.outproj = nn.Linear(hidden, embed_dim, bias=False)
        self.unembed = nn.Linear(embed_dim, p, bias=False)
        # std 1/sqrt(fan_in) everywhere (the embedding's fan-in is p, a one-hot input): a small embedding, unlike
        # nn.Embedding's N(0, 1), which is what lets weight decay rather than init scale set the pace.
        nn.init.normal_(self.embed.weight, std=p ** -0.5)
        for layer in (self.inproj, self.outproj, self.unembed):
            nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.outproj(F.relu(self.inproj(self.embed(pairs).sum(1)))))


def modular_addition(p: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """All pairs (a, b) with label (a + b) mod p, split at random into train and test."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    labels = (pairs[:, 0] + pairs[:, 1]) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * p * p)
    train, test = order[:n_train], order[n_train:]
    return pairs[train], labels[train], pairs[test], labels[test]


def train(model: nn.Module, masks: dict, name: str, data: tuple[torch.Tensor, ...], args: argparse.Namespace, *,
          seed: int) -> dict[str, Any]:
    """A full-batch AdamW run that records when it memorises and when it generalises.

    Sparse runs stop once both happened; the dense run (level 0) goes on to ``settle`` times its
    steps-to-generalise, to give the ticket a settled, generalised network to come from. Every run gets a fresh
    optimizer; the Static sparsifier keeps pruned weights at exactly zero.
    """
    x_train, y_train, x_test, y_test = data

    @torch.no_grad()
    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        return (model(x).argmax(1) == y).float().mean().item()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
        sparsifier = Static(model, opt, masks=masks, total_steps=args.max_steps)
        memorised = generalised = None
        dense = name == "level_0"
        started = time.perf_counter()
        for step in range(1, args.max_steps + 1):
            loss = F.cross_entropy(model(x_train), y_train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sparsifier.step()
            if step % args.eval_every == 0:
                if memorised is None and accuracy(x_train, y_train) >= MEMORISED:
                    memorised = step
                if generalised is None and accuracy(x_test, y_test) >= GENERALISED:
                    generalised = step
                done = memorised is not None and generalised is not None
                if done and (not dense or step >= args.settle * generalised):
                    break
        sparsifier.export()
    result = {"memorised_at": memorised, "generalised_at": generalised, "steps": step,
              "train_accuracy": accuracy(x_train, y_train), "accuracy": accuracy(x_test, y_test),
              "seconds": time.perf_counter() - started}
    print(f"  {name}: memorised at {memorised}, generalised at {generalised} (test acc {result['accuracy']:.3f}, "
          f"{result['seconds']:.0f}s)", flush=True)
    return result


def lottery(model: nn.Module, data: tuple[torch.Tensor, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The dense run, then per level a one-shot ticket (global magnitude) and its two controls.

    Seeds as the library's lottery runs have always used them: stage ``L`` trains under seed ``seed + L``, its
    controls draw from ``seed + 1000 * L``.

    Returns:
        One row per level: ``level``, ``remaining`` (fraction of weights kept) and the metrics of ``ticket`` (the
        dense run at level 0), ``reinit`` and ``random`` (None at level 0).
    """
    init = snapshot(model)
    names = list(select_prunable(model))
    dense_masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in select_prunable(model).items()}
    dense = train(rewind(model, init, dense_masks), dense_masks, "level_0", data, args, seed=args.seed)
    trained = snapshot(model)
    rows = [{"level": 0, "remaining": 1.0, "ticket": dense, "reinit": None, "random": None}]
    rates = layer_rates(names, args.prune_rate, None, None)
    for level in range(1, args.rounds + 1):
        masks = prune_round(trained, dense_masks, rates, scope="global", levels=level)
        report = sparsity_report(masks)
        ticket = train(rewind(model, init, masks), masks, f"level_{level}", data, args, seed=args.seed + level)
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(init)
        reinitialize(fresh, args.seed + 1000 * level)  # fresh values under the ticket's mask
        reinit = train(rewind(model, snapshot(fresh), masks), masks, f"level_{level}/reinit", data, args,
                       seed=args.seed + level)
        shuffled = random_mask_like(masks, args.seed + 1000 * level)
        random = train(rewind(model, init, shuffled), shuffled, f"level_{level}/random", data, args,
                       seed=args.seed + level)
        rows.append({"level": level, "remaining": report.nonzeros / report.numel, "ticket": ticket,
                     "reinit": reinit, "random": random})
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table: steps to memorise / generalise for dense, tickets and controls."""
    def steps(value: Any) -> str:
        return f"not within {args.max_steps}" if value is None else str(value)

    lines = ["| network | sparsity | steps to memorise (train acc >= 99%) | steps to generalise (test acc >= 95%) "
             "| test acc at stop |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        entries = [("dense" if row["level"] == 0 else "ticket (rewound to init)", row["ticket"])]
        if row["level"] > 0:
            entries += [("control: ticket mask, re-initialised", row["reinit"]),
                        ("control: random mask, same init", row["random"])]
        for name, m in entries:
            lines.append(f"| {name} | {1 - row['remaining']:.2f} | {steps(m['memorised_at'])} | "
                         f"{steps(m['generalised_at'])} | {m['accuracy']:.3f} |")
    lines.append(f"\nThe tickets come from the dense network at step {rows[0]['ticket']['steps']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p", type=int, default=P)
    parser.add_argument("--train-fraction", type=float, default=TRAIN_FRACTION)
    parser.add_argument("--embed-dim", type=int, default=EMBED_DIM)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--settle", type=float, default=SETTLE)
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    parser.add_argument("--prune-rate", type=float, default=PRUNE_RATE)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, default=None, help="write the result table to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = modular_addition(args.p, args.train_fraction, args.seed)
    torch.manual_seed(args.seed)
    model = ModularMLP(args.p, args.embed_dim, args.hidden)
    rows = lottery(model, data, args)
    minutes = sum(m["seconds"] for row in rows for m in (row["ticket"], row["reinit"], row["random"]) if m) / 60
    result = table(rows, args)
    print(result)
    if args.write is not None:
        command = "python examples/grokking_tickets.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k != "write" and v != parser.get_default(k))
        args.write.parent.mkdir(parents=True, exist_ok=True)
        cpu = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")]
            cpu = names[0] if names else cpu
        args.write.write_text(
            "# Grokking tickets (modular addition)\n\n"
            f"Command: `{command.strip()} --write {args.write}` (run from the repository root with "
            "`PYTHONPATH=src`).\n\n"
            f"Task: (a + b) mod {args.p}, {args.train_fraction:.0%} of the {args.p ** 2} pairs for training; "
            f"summed embeddings ({args.embed_dim}) -> MLP bottleneck {args.hidden} -> unembedding, no biases; "
            f"full-batch AdamW lr {args.lr}, weight decay "
            f"{args.weight_decay}, betas (0.9, 0.98); budget {args.max_steps} steps per run, evaluated every "
            f"{args.eval_every} steps. Tickets: one-shot global magnitude pruning of every weight matrix "
            "(embedding included) of the dense network after it generalised and trained on to "
            f"{args.settle:g}x its steps-to-generalise; survivors rewound to their initial values and retrained with "
            "the same recipe (pruned weights held at zero). Controls at the same per-layer counts: the ticket's "
            "mask on a fresh initialisation, and a random mask on the same initialisation. Seed "
            f"{args.seed}.\n\n{result}\n\n"
            f"Machine: {torch.get_num_threads()} threads, {cpu}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}; training time summed over the runs {minutes:.1f} min.\n"
        )
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
