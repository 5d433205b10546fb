"""scikit-learn's 8×8 digits (embedded, offline): the MLP recipe, all 1,797 images.

    python -m experiments.unlearn --config=digits
    python -m experiments.unlearn --config=digits --config.scenario=class --config.forget_classes=3

The small set every test and tutorial runs on: a 2-layer MLP (256-256) trained 30 epochs
(SGD Nesterov, one-cycle lr 0.05, batch 64). The original barely memorises its forget set
(retraining keeps ~99% forget accuracy), so the summary warns that a table cannot rank
methods here; the default config (MNIST-1D) is the one that memorises.
"""

from unlearn_jax_experiments.configs import default, recipes


def get_config():
  c = default.get_config()
  c.dataset = "digits"
  c.train_subset = None          # all of it
  c.model = "mlp"
  c.train = recipes.mlp(epochs=30)
  return c
