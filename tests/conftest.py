"""Shared tiny models and settings for the test suite."""

import pytest
import torch

# Two cores: keep each test process on one thread so xdist workers do not fight.
torch.set_num_threads(1)


@pytest.fixture
def two_threads():
    """Run the test with torch (and the native kernels) on two threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
