"""Adapters for training frameworks, each an optional extra imported on its own.

- :mod:`sparsetrain.integrations.lightning`: ``SparsifierCallback``, a PyTorch Lightning ``Callback``
  (``pip install lightning``).
- :mod:`sparsetrain.integrations.huggingface`: ``SparsifierTrainerCallback``, a Hugging Face ``TrainerCallback``
  (``pip install transformers accelerate``).

Nothing here is imported by ``import sparsetrain``; import the submodule you need.
"""

__all__: list[str] = []
