"""Airbench's 94% CIFAR-10 network and recipe as an unlearning population, for GPUs.

    python -m experiments.unlearn --config=experiments/configs/cifar10_airbench94.py \
        --config.dataset=cifar10:/path/to/cifar-10-python.tar.gz --workdir=runs/cifar10_airbench94

The model is `airbench94` (KellerJordan/cifar10-airbench `airbench94.py`: a frozen 2×2
whitening convolution fitted to the first 5,000 retain images, three conv groups of widths
64-256-256, BatchNorm without trained scale) and the recipe is its own (the library's
`recipes.airbench94`): batch 1,024, Nesterov momentum
0.85, lr 1.5 on the mean loss (airbench's 11.5 per 1,024 examples on the summed loss),
weight decay 0.0153 / (1 + 1 / 0.15) / 1.5 coupled (airbench's decoupled 0.0153), BatchNorm
biases at lr × 64 with weight decay ÷ 64, label smoothing 0.2, a triangle 0.2·lr → lr at
23% → 0.07·lr, the lookahead EMA every 5 steps from epoch 3 (decay 0.95⁵ × (t/T)³), random
translation by 2 pixels (reflect padding) with alternating flips, 10 epochs (airbench:
9.9 with last batches dropped). Each seed has its own initialisation, data order,
translations and flips inside the one vmapped program. Airbench's lr is per 1,024
examples: with another --config.train.batch_size scale --config.train.lr by batch / 1,024.

Differences from airbench, by design: the whitening bias trains throughout (airbench
freezes it after 3 epochs); the lookahead averages the weights, not the BatchNorm running
statistics; test-time augmentation (`train.predict_tta`, level 2) is used by the GPU
script's accuracy, while the unlearning metrics read plain logits, as for every model.
On a CPU use a reduced width, e.g. --config.model=airbench94:16-32-32 with --config.train_subset=5000.
"""

from unlearn_jax_experiments.configs import default, recipes


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --config.dataset=cifar10:PATH for the python archive
  c.model = "airbench94"
  c.seeds = 4
  c.seed_loop = "vmap"            # the population as one program: the accelerator path
  c.checkpoint_every = 2
  # The recipe is the library's for `airbench94` (`recipes.airbench94`: every field the
  # docstring lists), written once there; --config.train.<field>=... overrides any of it.
  c.train = recipes.airbench94(color=True)
  return c
