"""Population membership-inference attacks (one attacker for all examples)."""

from __future__ import annotations

import numpy as np

from unlearn_jax.metrics.host import SCALAR, host_metric


@host_metric(SCALAR)
def mia_loss_lr(forget_losses, test_losses, n_splits: int = 10, seed: int = 0) -> float:
  """Loss-threshold MIA of the NeurIPS 2023 unlearning starting kit.

  Feature: per-example CE loss with the true label. Members (label 1) = forget set,
  non-members (label 0) = held-out test examples; the larger group is subsampled (fixed
  seed) to the smaller's size. Attacker: logistic regression; score = mean accuracy
  over `n_splits` stratified shuffle splits with 10% held out:

      MIA = mean_k acc_k(LR fitted on split k's train part, scored on its test part)

  Inputs: per-example losses [n_forget] and [n_test] (1-D: a population [N, S] would be
  pooled silently, so it is refused). Returns a scalar. Host NumPy/scikit-learn (under
  `jit` through `jax.pure_callback`). Ideal: the retrained model's value (≈ 0.5: forget
  examples look unseen).
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

  forget = np.asarray(forget_losses, np.float64)
  test = np.asarray(test_losses, np.float64)
  if forget.ndim != 1 or test.ndim != 1:
    raise ValueError(f"mia_loss_lr takes 1-D per-example losses; got shapes {forget.shape} "
                     f"and {test.shape} (score one model at a time)")
  n = min(len(forget), len(test))
  if n < 10:  # each 10% held-out part must hold both classes
    raise ValueError(f"mia_loss_lr needs >= 10 forget and test examples, got "
                     f"{len(forget)} and {len(test)}")
  rng = np.random.default_rng(seed)
  forget = forget[rng.permutation(len(forget))[:n]]
  test = test[rng.permutation(len(test))[:n]]
  x = np.concatenate([test, forget]).reshape(-1, 1)
  y = np.concatenate([np.zeros(n), np.ones(n)])
  # Huge losses (diverged ascent) would dominate the solver; clip to a finite range.
  x = np.clip(np.nan_to_num(x, nan=1e3, posinf=1e3), 0.0, 1e3)
  cv = StratifiedShuffleSplit(n_splits=n_splits, test_size=0.1, random_state=seed)
  scores = cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy")
  return float(np.mean(scores))
