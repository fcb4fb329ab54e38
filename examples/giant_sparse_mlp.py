"""Train an MLP whose dense form cannot exist on this machine: two hidden layers of 65,536 units at 99.9% sparsity.

    python examples/giant_sparse_mlp.py --method set   # or --method rigl; --hidden 4096 --sparsity 0.99: a quick look

MNIST-1D (40 inputs, 10 classes) through 40 -> 65,536 -> 65,536 -> 10. The middle layer alone has 4.3 billion
weights: 16 GiB dense in float32, 48 GiB with its gradient and SGD's momentum, on a 24 GiB machine. On sparse storage
(``backend="sparse"``) only the 0.1% active weights exist, with their gradient and momentum:

* the model is built on the ``meta`` device, so no dense weight is ever allocated; attaching the sparsifier
  materialises each Linear sparse, drawing its active weights from nn.Linear's default initialisation, then
  scales each unit's to its active fan-in (``sparse_init="fan_in"``, the default; Evci et al. 2022);
* the random initial masks (ERK) are drawn in blocks of scores, never as a dense score or bool tensor;
* SET's random growth is drawn in row blocks; RigL's dense gradient is computed on its update steps only, one layer
  at a time, in row blocks, each block ranked on the fly (``sparsetrain.streaming_topk.topk_positions``).

The script prints the time, the peak resident memory and the test accuracy; docs/sparse_backend.md records a run.
"""

import argparse
import math
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import sparsetrain
from sparsetrain.data import get_dataset

# -- settings (the command line can change the first five) ------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--method", choices=("set", "rigl"), default="set")
parser.add_argument("--hidden", type=int, default=65536, help="units in each of the two hidden layers")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--threads", type=int, default=1, help="torch and kernel threads (1: a shared machine)")
parser.add_argument("--sparsity", type=float, default=0.999,
                    help="over all three weight matrices; ERK gives the wide middle layer the most zeros")
args = parser.parse_args()
sparsity = args.sparsity
distribution = "erk"   # Evci et al. 2020: layer density ∝ (fan_in + fan_out) / (fan_in * fan_out)
batch_size = 128
lr = 0.1               # SGD with momentum, cosine-decayed per step
momentum = 0.9
update_every = 50      # ΔT: drop and grow every 50 steps, until 75% of the run (RigL's T_end)
seed = 0

# -- data and model -----------------------------------------------------------------------------------------------
torch.set_num_threads(args.threads)
torch.manual_seed(seed)
data = get_dataset("mnist1d", seed=0, val_fraction=0.0)  # 4,000 train / 1,000 test signals of length 40
loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
total_steps = args.epochs * len(loader)
with torch.device("meta"):  # shapes only: the dense weights are never allocated
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden),
                          nn.ReLU(), nn.Linear(args.hidden, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)  # swapped to the values at attach
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
method = {"set": sparsetrain.SET, "rigl": sparsetrain.RigL}[args.method]
started = time.perf_counter()
sparsifier = method(model, optimizer, sparsity=sparsity, total_steps=total_steps, distribution=distribution,
                    update_every=update_every, seed=seed, backend="sparse")
print(f"{args.method}: {sparsifier.current_sparsity():.4%} sparse, attached in {time.perf_counter() - started:.0f}s")
dense_weights = sum(math.prod(sparsifier.params[name].shape) for name in sparsifier.params)
print(f"{sparsifier.report()}\ndense form: {dense_weights:,} weights = {dense_weights * 4 / 2**30:.1f} GiB "
      f"(x3 with gradient and momentum)")


@torch.no_grad()
def accuracy(split, batch: int = 250) -> float:
    model.eval()
    correct = sum(int((model(split.inputs[i:i + batch]).argmax(-1) == split.targets[i:i + batch]).sum())
                  for i in range(0, len(split.targets), batch))
    model.train()
    return correct / len(split.targets)


# -- training loop --------------------------------------------------------------------------------------------------
started = time.perf_counter()
for epoch in range(1, args.epochs + 1):
    for inputs, targets in loader:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sparsifier.step()  # drop and grow on update steps, on the active weights and row blocks only
        scheduler.step()
    print(f"epoch {epoch:2d}  loss {loss.item():.3f}  test acc {accuracy(data.test):.3f}  "
          f"ITOP {sparsifier.itop_rate():.5f}  ({time.perf_counter() - started:.0f}s)", flush=True)

peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(f"{args.method}, hidden {args.hidden}: test accuracy {accuracy(data.test):.4f}, sparsity "
      f"{sparsifier.report().sparsity:.5f}, {time.perf_counter() - started:.0f}s for {total_steps} steps, "
      f"peak resident memory {peak:.2f} GiB")
