"""The Easy Data Unlearning Bench's ResNet-9 population on CIFAR-10, for GPUs and TPUs.

    python -m experiments.unlearn --config=experiments/configs/cifar10_resnet9.py \
        --dataset=cifar10:/path/to/cifar-10-python.tar.gz --workdir=runs/cifar10_resnet9

The benchmark's model (`resnet9`, easydub/EasyDUB-code `easydub/models.py`) and recipe
(`train_models.py`): SGD with plain momentum 0.9, weight decay 5e-4, batch 256, 24 epochs,
a linear one-cycle schedule from 0 to lr 0.4 at epoch 5 and back to 0, no augmentation,
every model with its own data order. The benchmark trains its models stacked as one
network of `groups=M` convolutions; here the seeds are one vmapped program (`seed_loop`),
which is the same computation. On a CPU use a reduced width, e.g. `--model=resnet9:16-32-64-32`
with `--train_subset=5000`.
"""

try:  # an installed wheel (`unlearn-jax run --config=...`)

  from unlearn_jax_experiments.configs import default

except ImportError:  # the checkout (`python -m experiments.unlearn`)

  from experiments.configs import default


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --dataset=cifar10:PATH for the python archive
  c.model = "resnet9"
  c.seeds = 4
  c.seed_loop = "vmap"            # the population as one program: the accelerator path
  c.checkpoint_every = 4
  c.train.epochs = 24
  c.train.batch_size = 256
  c.train.lr = 0.4
  c.train.momentum = 0.9
  c.train.nesterov = 0
  c.train.weight_decay = 5e-4
  c.train.schedule = "linear_onecycle"
  c.train.peak_fraction = 5 / 24
  c.train.augment = 0
  return c
