"""sparsetrain: sparse neural network training and lottery-ticket science on PyTorch."""

__version__ = "0.1.0"
