"""CIFAR-10 with the small CNN: the CPU configuration.

    python -m experiments.unlearn --config=experiments/configs/cifar10_cnn.py \
        --config.dataset=cifar10:/path/to/cifar-10-python.tar.gz --config.train_subset=10000

The CNN recipe: SGD Nesterov momentum 0.9, one-cycle lr 0.1, wd 5e-4, crop+flip,
batch 128, 10 epochs. On the whole train set it reaches >= 82% test accuracy.
"""

from unlearn_jax_experiments.configs import default, recipes


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --config.dataset=cifar10:PATH for the python archive
  c.model = "cnn"
  c.train = recipes.cnn(color=True)
  c.seeds = 2
  return c
