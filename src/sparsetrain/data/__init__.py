"""Offline datasets registered by name: `get_dataset(name, ...)` returns a train/val/test `DatasetBundle`.

Nothing downloads. Generated or package-embedded: "mnist1d", "mnist-small", "digits", "modular",
"synthetic". Read from the user's files in `data_dir`: "cifar10", "cifar100", "mnist", "fashion-mnist",
"imagefolder". Importing a loader module registers it; all are imported here.
"""

from sparsetrain.data import cifar, embedded, idx, imagefolder, modular, synthetic  # noqa: F401  (register)
from sparsetrain.data.bundle import ArrayDataset, DataError, DatasetBundle, DatasetKind
from sparsetrain.data.registry import (
    RawSplits,
    dataset_options,
    get_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "ArrayDataset",
    "DataError",
    "DatasetBundle",
    "DatasetKind",
    "RawSplits",
    "dataset_options",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]
