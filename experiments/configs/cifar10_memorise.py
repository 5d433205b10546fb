"""The memorising CPU benchmark: a CIFAR-10 setup where forgetting is visible.

    python -m experiments.unlearn --config=experiments/configs/cifar10_memorise.py \
        --config.dataset=cifar10:cifar-10-python.tar.gz
    python -m experiments.unlearn --config=experiments/configs/cifar10_memorise.py \
        --config.dataset=cifar10:cifar-10-python.tar.gz --config.scenario=class --config.forget_classes=3
    python -m experiments.evaluate --config=experiments/configs/cifar10_memorise.py \
        --config.dataset=cifar10:cifar-10-python.tar.gz --config.evaluate.num_models=8 \
        --methods=finetune,ssd,salun,scrub,l1_sparse

From an installed wheel: `unlearn-jax run --config=cifar10_memorise
--config.dataset=cifar10:cifar-10-python.tar.gz`. The archive is CIFAR-10's official python
version (`curl -O https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz`, 163 MB),
decoded once into the cache; `--config.dataset=cifar10` reads it through tfds instead.

Why this shape. A table can only rank unlearning methods when the original memorises its
forget set: then retraining without D_f loses accuracy on D_f, and "doing nothing" is far
from retrain. The default digits MLP does not (original FA 100 vs retrain 98.7), nor does
the CIFAR CNN on all 50,000 images with augmentation (train 86.7 / test 82.7), nor on a
5,000-image subset for 10 epochs (under-fit, train 56.8). Here:

* a stratified subset of 2,500 training images (250 per class; test: 2,000, split into
  1,000 validation and 1,000 test) — few examples per class, so the CNN memorises them;
* no augmentation and 30 epochs (SGD Nesterov, one-cycle lr 0.05, wd 5e-4, batch 64): the
  original reaches 100% train accuracy by epoch ~20;
* the CNN at widths 16-32-64 (dense 256): ~1,600 images/s in `lax.scan` on 2 CPU cores, so
  one training run takes ~45 s and every data method × 3 seeds × 2 scenarios fits in
  about an hour.

Retrain's forget accuracy then equals its test accuracy, against the original's 100%:
a memorisation signal large enough to rank methods (measured runs: the results pages).
"""

from unlearn_jax import methods
from unlearn_jax_experiments.configs import default, recipes


def data_methods():
  """Every registered method that reads data (the zero-shot ones left out), at its
  defaults."""
  return default.methods_config([m for m in methods.list_methods()
                                 if methods.get_method(m).reads])


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"          # tfds; --config.dataset=cifar10:PATH for the python archive
  c.train_subset = 2500          # of 50,000
  c.test_subset = 2000
  c.model = "cnn:16-32-64"
  c.methods = data_methods()
  c.seeds = 3
  c.train = recipes.cnn(color=True)
  c.train.epochs = 30
  c.train.batch_size = 64
  c.train.lr = 0.05
  c.train.augment = False
  # Class scenario: the anamnesis index relearns every model on D_f for a fixed number of
  # steps (one lax.scan, no early exit), each step scored on `eval_size` forget examples;
  # the digits defaults (200 steps, 256 examples) cost ~45 s per CNN model here.
  c.ain.max_steps = 100
  c.ain.eval_size = 128
  return c
