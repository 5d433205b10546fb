"""CIFAR-10 (the shared JPEG archive) with the small CNN: the CPU configuration.

    python -m experiments.unlearn --config=experiments/configs/cifar10_cnn.py \
        --dataset=image_folder:/path/to/cifar10-jpeg.tar.gz --train_subset=10000

The CNN recipe: SGD Nesterov momentum 0.9, one-cycle lr 0.1, wd 5e-4, crop+flip,
batch 128, 10 epochs. On the whole train set it reaches >= 82% test accuracy.
"""

try:  # an installed wheel (`unlearn-jax run --config=...`)

  from unlearn_jax_experiments.configs import default

except ImportError:  # the checkout (`python -m experiments.unlearn`)

  from experiments.configs import default


def get_config():
  c = default.get_config()
  c.dataset = "image_folder:../shared/data/cifar10-jpeg.tar.gz"
  c.model = "cnn"
  c.seeds = 2
  return c
