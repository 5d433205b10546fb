"""CIFAR-10 with the small CNN: the CPU configuration.

    python -m experiments.unlearn --config=experiments/configs/cifar10_cnn.py \
        --dataset=cifar10:/path/to/cifar-10-python.tar.gz --train_subset=10000

The CNN recipe: SGD Nesterov momentum 0.9, one-cycle lr 0.1, wd 5e-4, crop+flip,
batch 128, 10 epochs. On the whole train set it reaches >= 82% test accuracy.
"""

try:  # an installed wheel (`unlearn-jax run --config=...`)

  from unlearn_jax_experiments.configs import default

except ImportError:  # the checkout (`python -m experiments.unlearn`)

  from experiments.configs import default


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --dataset=cifar10:PATH for the python archive
  c.model = "cnn"
  c.seeds = 2
  return c
