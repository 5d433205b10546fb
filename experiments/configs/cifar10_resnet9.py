"""The Easy Data Unlearning Bench's ResNet-9 population on CIFAR-10, for GPUs and TPUs.

    python -m experiments.unlearn --config=experiments/configs/cifar10_resnet9.py \
        --config.dataset=cifar10:/path/to/cifar-10-python.tar.gz --workdir=runs/cifar10_resnet9

The benchmark's model (`resnet9`, easydub/EasyDUB-code `easydub/models.py`) and recipe
(`train_models.py`): SGD with plain momentum 0.9, weight decay 5e-4, batch 256, 24 epochs,
a linear one-cycle schedule from 0 to lr 0.4 at epoch 5 and back to 0, no augmentation,
every model with its own data order. The benchmark trains its models stacked as one
network of `groups=M` convolutions; here the seeds are one vmapped program (`seed_loop`),
which is the same computation. On a CPU use a reduced width, e.g. `--config.model=resnet9:16-32-64-32`
with `--config.train_subset=5000`.
"""

from unlearn_jax_experiments.configs import default, recipes


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --config.dataset=cifar10:PATH for the python archive
  c.model = "resnet9"
  c.seeds = 4
  c.seed_loop = "vmap"            # the population as one program: the accelerator path
  c.checkpoint_every = 4
  c.train = recipes.resnet9()    # the benchmark's: 24 epochs, batch 256, lr 0.4, no aug.
  return c
