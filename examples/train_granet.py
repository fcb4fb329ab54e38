"""Train a 1-D CNN on MNIST-1D with GraNet at 90% sparsity, through the library API alone (no CLI).

    python examples/train_granet.py

One file that reads top to bottom: the settings, the data and model, then a plain PyTorch loop with the two
sparsetrain lines in it (construct the sparsifier; call ``sparsifier.step()`` after ``optimizer.step()``).
The ``sparsetrain train`` command runs the same recipe with checkpoints, resume, metrics files and plots.
"""

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import sparsetrain
from sparsetrain.data import get_dataset
from sparsetrain.models import build_model

# -- settings ---------------------------------------------------------------------------------------------------
dataset = "mnist1d"    # generated locally by the mnist1d package (4,000 train / 1,000 test signals of length 40)
model_name = "cnn1d"   # the MNIST-1D paper's small CNN: three Conv1d layers of 25 filters, then a linear layer
sparsity = 0.9         # final fraction of zeros in every Conv/Linear weight (biases stay dense)
epochs = 30            # 113 steps per epoch at batch 32: about 3,400 optimizer steps
batch_size = 32
lr = 0.05              # SGD peak learning rate, cosine-decayed to 0 over the run, per step
momentum = 0.9         # with Nesterov, as in GraNet's CIFAR recipe
weight_decay = 5e-4    # GraNet's CIFAR recipe
update_every = 100     # ΔT: prune and regrow every 100 steps (GraNet's 1000 is for 160-epoch CIFAR runs)
seed = 0               # model init, data order and the sparsifier's own generator
threads = 1            # a tiny model trains fastest on one thread, and does not fight other jobs for cores
checkpoint_path = "granet_mnist1d.pt"

# -- data and model ---------------------------------------------------------------------------------------------
torch.set_num_threads(threads)
torch.manual_seed(seed)
data = get_dataset(dataset, seed=0)  # train / val (10% of train, stratified) / test splits, in memory
model = build_model(model_name, data.input_shape, data.num_classes)
loader = DataLoader(data.train, batch_size=batch_size, shuffle=True,
                    generator=torch.Generator().manual_seed(seed))
total_steps = epochs * len(loader)  # GraNet's schedules (pruning window, drop fraction) are fractions of this

optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
# The one sparsetrain object: it starts dense (initial_sparsity=0), prunes by global magnitude on the cubic
# schedule over the first half of the run and regrows by gradient at every update step.
sparsifier = sparsetrain.GraNet(model, optimizer, sparsity=sparsity, total_steps=total_steps,
                                update_every=update_every, seed=seed)


@torch.no_grad()
def accuracy(split) -> float:
    """Full-batch accuracy: the splits are small tensors already in memory."""
    model.eval()
    predictions = model(split.inputs).argmax(-1)
    model.train()
    return (predictions == split.targets).float().mean().item()


# -- training loop ----------------------------------------------------------------------------------------------
print(f"GraNet to {sparsity:.0%} sparsity: {model_name} on {dataset}, {total_steps} steps")
start = time.perf_counter()
for epoch in range(1, epochs + 1):
    model.train()
    for inputs, targets in loader:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sparsifier.step()  # right after optimizer.step(): counts the step; prunes and regrows on update steps
        scheduler.step()
    print(f"epoch {epoch:2d}  loss {loss.item():.3f}  val acc {accuracy(data.val):.3f}  "
          f"sparsity {sparsifier.current_sparsity():.3f}  ({time.perf_counter() - start:.0f}s)")

print(f"test accuracy {accuracy(data.test):.4f} at sparsity {sparsifier.report().sparsity:.4f} "
      f"(measured from the weights), ITOP rate {sparsifier.itop_rate():.3f}")
print(sparsifier.report())

# One checkpoint dict; the sparsifier's state (masks, step, generator) resumes exactly with load_state_dict.
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "sparsifier": sparsifier.state_dict()}, checkpoint_path)
print(f"checkpoint written to {checkpoint_path}")
