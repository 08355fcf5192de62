"""Datasets: real loaders (no downloads at run time), deterministic batching, the attacker's
auxiliary split, and IID / Dirichlet client partitions.

    ds = load("digits")                                   # Dataset, float32 NHWC in [0, 1]
    private, aux = split_aux(ds, aux_size=200, key=k1)    # disjoint training subsets
    idx = shuffled_batches(private.num_train, 64, key=k2) # (steps, 64) int32, jit-friendly

``list_datasets()`` says which datasets this machine has and how to get the others;
``bash scripts/get-data.sh all`` installs the optional ones (Fashion-MNIST, mnist10k).
"""

from split_workbench.data.base import Dataset, check_key, shuffled_batches, split_aux, split_indices, subset
from split_workbench.data.formats import DatasetFormatError, DatasetNotFoundError, parse_idx, read_cifar_batch, read_idx
from split_workbench.data.loaders import (
                                    ENV_VAR,
                                    FASHION_MNIST_SYSTEM_DIR,
                                    DatasetInfo,
                                    available,
                                    list_datasets,
                                    load,
                                    register_dataset,
                                    search_dirs,
)
from split_workbench.data.partition import label_entropy, partition_dirichlet, partition_iid

__all__ = [
    "Dataset",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ENV_VAR",
    "FASHION_MNIST_SYSTEM_DIR",
    "available",
    "check_key",
    "label_entropy",
    "list_datasets",
    "load",
    "parse_idx",
    "partition_dirichlet",
    "partition_iid",
    "read_cifar_batch",
    "read_idx",
    "register_dataset",
    "search_dirs",
    "shuffled_batches",
    "split_aux",
    "split_indices",
    "subset",
]
