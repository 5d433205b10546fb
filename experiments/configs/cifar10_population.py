"""A population benchmark where KLOM can rank methods, on a CPU.

    python -m experiments.evaluate --config=experiments/configs/cifar10_population.py \
        --config.evaluate.num_models=64
    python -m experiments.klom_curve --config=experiments/configs/cifar10_population.py \
        --config.evaluate.sizes=8,16,32,64

Per-example metrics (KLOM, F, U-LiRA) compare populations of N models, so the model must
both memorise (else doing nothing is already indistinguishable from retraining) and be
cheap enough to train many times. An MLP vmaps well on a CPU (one matmul per layer for all
N models), so here: the stratified 2,500-image CIFAR-10 subset of `cifar10_memorise`
(250 per class; 2,000 test images split into validation and test), an MLP with one hidden
layer of 64 units on the flattened pixels (197k parameters: the per-example-gradient
methods, fisher_forgetting and influence, stay cheap for 64 models), 30 epochs of SGD
(batch 64, lr 0.02, no augmentation): it memorises its training set while generalising
poorly, so the forget examples' margins move when they are removed. Every data method;
populations vmapped in one program each and cached in runs/references (`references_dir`),
where experiments.klom_curve and a second evaluation find them.
Measured figures: docs/results/population/.
"""

from unlearn_jax_experiments.configs import cifar10_memorise


def get_config():
  c = cifar10_memorise.get_config()    # the memorising subset, 30 epochs, batch 64, no aug.
  c.model = "mlp:64"
  c.seed_loop = "vmap"
  c.train.lr = 0.02
  c.references_dir = "runs/references"
  return c
