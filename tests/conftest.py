"""Shared tiny models and settings for the test suite."""

import torch

# Two cores: keep each test process on one thread so xdist workers do not fight.
torch.set_num_threads(1)
