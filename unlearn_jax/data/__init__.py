"""Data: datasets by name, split specs, the offline digits builder."""
from unlearn_jax.data.datasets import (CIFAR_PYTHON, DATASET_CHOICES, TFDS_NAMES, Dataset, DatasetError,
                                       cache_dir, cache_lock,
                                       load_dataset, stratified_subset)
from unlearn_jax.data.splits import (SCENARIOS, Split, SplitError, SplitSpec, make_split,
                                     sha256_indices)
