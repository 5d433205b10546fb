"""CIFAR-10 at full size with ResNet-18: the seeds' own setting, for GPUs and TPUs.

    python -m experiments.unlearn --config=experiments/configs/cifar10_resnet18.py \
        --config.dataset=cifar10:/path/to/cifar-10-python.tar.gz --workdir=runs/cifar10_resnet18

(or `--config.dataset=cifar10` with tfds, online). The recipe: SGD momentum 0.9, lr 0.1 with
cosine decay, weight decay 5e-4, random crop (pad 4) + horizontal flip, batch 256,
40 epochs, 3 seeds vmapped in one compiled loop, the batch split over every visible device
(`--config.mesh_data`); `--config.mesh_seeds=N` puts seeds on their own mesh axis instead. Train states
are checkpointed every 5 epochs: rerun the same command to resume a killed job.

On a CPU this is ~13 images/s (days); use experiments/configs/cifar10_cnn.py there.
"""

from unlearn_jax_experiments.configs import default, recipes


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --config.dataset=cifar10:PATH for the python archive
  c.model = "resnet18"
  c.seeds = 3
  c.seed_loop = "vmap"            # seeds in one program: the accelerator path
  c.checkpoint_every = 5
  c.train = recipes.resnet18(color=True)   # 40 epochs, cosine lr 0.1, crop + flip
  c.train.batch_size = 256
  return c
