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

Everything runs through :func:`sparsetrain.lottery.run_lottery` (one-shot variant): the run directory holds one
``level_<k>/`` per sparsity, and a stopped run resumes. Reported: the steps to memorise (train accuracy >= 99%)
and to generalise (test accuracy >= 95%); sparse runs stop once both happened (the budget otherwise). About
12,000 training steps in all with the defaults: a few minutes on 2 idle CPU cores.

    python examples/grokking_tickets.py --write docs/results/grokking.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.lottery import LotteryConfig, lottery_curve, run_lottery
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


def make_train_fn(data: tuple[torch.Tensor, ...], args: argparse.Namespace):
    """A full-batch AdamW loop that records when the run memorises and when it generalises.

    Sparse runs stop once both happened; the dense run (level 0) goes on to ``settle`` times its
    steps-to-generalise, to give the ticket a settled, generalised network to come from.
    """
    x_train, y_train, x_test, y_test = data

    @torch.no_grad()
    def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return (model(x).argmax(1) == y).float().mean().item()

    def train(model: nn.Module, masks: dict, level_dir: Path, *, start_step: int = 0, on_step=None) -> dict[str, Any]:
        # Fresh optimizer every round; the Static sparsifier keeps pruned weights at exactly zero.
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
        sparsifier = Static(model, opt, masks=masks, total_steps=args.max_steps)
        memorised = generalised = None
        dense = level_dir.name == "level_0"
        started = time.perf_counter()
        for step in range(start_step + 1, args.max_steps + 1):
            loss = F.cross_entropy(model(x_train), y_train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sparsifier.step()
            if on_step is not None:
                on_step(step, model)
            if step % args.eval_every == 0:
                if memorised is None and accuracy(model, x_train, y_train) >= MEMORISED:
                    memorised = step
                if generalised is None and accuracy(model, x_test, y_test) >= GENERALISED:
                    generalised = step
                done = memorised is not None and generalised is not None
                if done and (not dense or step >= args.settle * generalised):
                    break
        sparsifier.export()
        result = {"memorised_at": memorised, "generalised_at": generalised, "steps": step,
                  "train_accuracy": accuracy(model, x_train, y_train),
                  "accuracy": accuracy(model, x_test, y_test), "seconds": time.perf_counter() - started}
        print(f"  {level_dir.parent.name}/{level_dir.name}: memorised at {memorised}, generalised at "
              f"{generalised} (test acc {result['accuracy']:.3f}, {result['seconds']:.0f}s)", flush=True)
        return result

    return train


def table(run_dir: Path, args: argparse.Namespace) -> str:
    """Markdown table: steps to memorise / generalise for dense, tickets and controls."""
    def steps(value: Any) -> str:
        return f"not within {args.max_steps}" if value is None else str(value)

    lines = ["| network | sparsity | steps to memorise (train acc >= 99%) | steps to generalise (test acc >= 95%) "
             "| test acc at stop |", "|---|---:|---:|---:|---:|"]
    dense_steps = None
    for row in lottery_curve(run_dir):
        where = run_dir / f"level_{row['level']}"
        entries = [("dense" if row["level"] == 0 else "ticket (rewound to init)", where)]
        if row["level"] > 0:
            entries += [("control: ticket mask, re-initialised", where / "reinit"),
                        ("control: random mask, same init", where / "random")]
        for name, path in entries:
            m = json.loads((path / "metrics.json").read_text())
            lines.append(f"| {name} | {1 - row['remaining']:.2f} | {steps(m['memorised_at'])} | "
                         f"{steps(m['generalised_at'])} | {m['accuracy']:.3f} |")
            if row["level"] == 0:
                dense_steps = m["steps"]
    lines.append(f"\nThe tickets come from the dense network at step {dense_steps}.")
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
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--write", type=Path, default=None, help="write the result table to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = modular_addition(args.p, args.train_fraction, args.seed)
    torch.manual_seed(args.seed)
    model = ModularMLP(args.p, args.embed_dim, args.hidden)
    config = LotteryConfig(
        rounds=args.rounds, prune_rate=args.prune_rate, output_rate=None, scope="global", one_shot=True,
        rewind_step=0, seed=args.seed, notes={k: str(v) for k, v in vars(args).items() if k not in ("out", "write")},
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="grokking_tickets_"))
    print(f"run directory: {out}")
    run_lottery(model, config, make_train_fn(data, args), out)
    minutes = sum(json.loads(p.read_text())["seconds"] for p in out.rglob("metrics.json")) / 60
    result = table(out, args)
    print(result)
    if args.write is not None:
        command = "python examples/grokking_tickets.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k not in ("out", "write") and v != parser.get_default(k))
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
