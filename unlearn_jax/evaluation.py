"""Population-scale evaluation: the per-example attacks of `unlearn_jax.metrics` between a
population of unlearned models and a population of retrained ones.

`PopulationLogits` predicts with every model of a population (one compiled program per
input shape, reused for every population of a run); `evaluate_population` computes one
population's metrics against the retrained one. Training the populations, running the
methods over them and writing the artifacts (evaluation.csv, report.md, plots) is the
experiment's job (`experiments/population.py`, `experiments/population_report.py`).
"""

from __future__ import annotations

import jax
import numpy as np

from unlearn_jax import metrics as M
from unlearn_jax import parallel
from unlearn_jax import train as train_lib

KLOM_SPLITS = ("forget", "retain", "test")
AUDIT_DELTA = 1e-5    # the δ of the audit's ε lower bound (`metrics.audit_epsilon`)


def model_chunks(n: int, chunk: int) -> list:
  """[(start, stop)] of `n` models in chunks of `chunk` (0: all at once)."""
  chunk = n if chunk <= 0 else chunk
  return [(i, min(n, i + chunk)) for i in range(0, n, chunk)]


class PopulationLogits:
  """[N, n, C] logits of every model of a population on `x`, vmapped over chunks of
  `chunk` models. Built once per run: its program compiles once per input shape and chunk
  size and serves every population (original, retrained, each method's)."""

  def __init__(self, model, chunk: int = 0, eval_batch: int = 1000):
    self.chunk = chunk

    def population_logits(v, xx):
      return train_lib.predict(model, v, xx, eval_batch)
    self._fn = jax.jit(jax.vmap(population_logits, in_axes=(0, None)))

  def __call__(self, variables, x) -> np.ndarray:
    n = jax.tree_util.tree_leaves(variables)[0].shape[0]
    return np.concatenate([parallel.to_host(self._fn(jax.tree_util.tree_map(
        lambda a: a[i:j], variables), x)) for i, j in model_chunks(n, self.chunk)])


def _acc(logits, labels):
  return (np.argmax(logits, -1) == np.asarray(labels)).mean(axis=-1)     # per model


def evaluate_population(name, logits: dict, labels: dict, retrained: dict, random_forget,
                        seconds: float, mia_models: int) -> tuple[dict, np.ndarray, np.ndarray]:
  """Every metric of one population against the retrained one. `logits[split]` [N, n, C]."""
  # Float64 throughout (jax.numpy metrics under x64): the competition's thresholds need it.
  with jax.enable_x64(True):
    row, eps, phi_u = _evaluate_population64(
        name, {k: np.asarray(v, np.float64) for k, v in logits.items()}, labels,
        {k: np.asarray(v, np.float64) for k, v in retrained.items()},
        np.asarray(random_forget, np.float64), seconds, mia_models)
  text = ("method", "num_models", "klom_direction")
  return {k: (float(v) if k not in text else v) for k, v in row.items()}, \
      np.asarray(eps), np.asarray(phi_u)


def _evaluate_population64(name, logits, labels, retrained, random_forget, seconds, mia_models):
  n = logits["forget"].shape[0]
  phi_u = np.asarray(M.logit_scaled_confidence(logits["forget"], labels["forget"][None]))
  phi_r = np.asarray(M.logit_scaled_confidence(retrained["forget"], labels["forget"][None]))
  if name == "retrain":
    # Retrain against retrain: two disjoint halves, the noise floor of the attack at N/2.
    h = n // 2
    eps = M.per_example_epsilons(phi_r[:h], phi_r[h:2 * h])
    f_n = h
    eh, eh_med = M.eps_hat(retrained["forget"][:h], retrained["forget"][h:2 * h],
                           labels["forget"])
  else:
    eps = M.per_example_epsilons(phi_u, phi_r)
    f_n = n
    eh, eh_med = M.eps_hat(logits["forget"], retrained["forget"], labels["forget"])
  ra, fa, ta = (_acc(logits[s], labels[s]) for s in ("retain", "forget", "test"))
  ra_r, ta_r = _acc(retrained["retain"], labels["retain"]), _acc(retrained["test"], labels["test"])
  # U-LiRA: first halves are the shadow populations, second halves the targets.
  h = n // 2
  if name == "retrain":
    ul = {"accuracy": float("nan")}
  else:
    ul = M.ulira(phi_u[:h], phi_r[:h], np.concatenate([phi_u[h:2 * h], phi_r[h:2 * h]]),
                 np.arange(2 * h) < h)
  mia = np.mean([M.mia_efficacy(logits["retain"][i], labels["retain"], logits["test"][i],
                                labels["test"], logits["forget"][i], labels["forget"])
                 for i in range(min(n, mia_models))])
  row = {"method": name, "num_models": n,
         "forgetting_quality": M.forgetting_quality(eps, f_n),
         "forgetting_quality_kaggle": M.forgetting_quality(eps, f_n, "kaggle"),
         "competition_score": M.competition_score(eps, f_n, ra, ra_r, ta, ta_r),
         "eps_hat_median": eh_med, "eps_hat_inf_fraction": float(np.mean(np.isinf(eh))),
         "ulira_accuracy": ul["accuracy"], "mia_efficacy": float(mia),
         "retain_acc": float(ra.mean()), "forget_acc": float(fa.mean()),
         "test_acc": float(ta.mean()), "seconds": seconds,
         "js_to_retrain": float(np.mean([M.js_to_retrain(logits["forget"][i], retrained["forget"][i])
                                         for i in range(n)])),
         "activation_distance": float(np.mean([M.activation_distance(
             logits["forget"][i], retrained["forget"][i]) for i in range(n)])),
         "zrf": float(np.mean([M.zrf(logits["forget"][i], random_forget[i]) for i in range(n)]))}
  row.update(_klom_columns(name, logits, retrained, labels))
  # The audit: an ε that holds with 95% confidence, from the attack "unlearned when the
  # forget examples' confidence is high" (retrain: its two halves, the floor).
  pos, neg = (phi_r[:h], phi_r[h:2 * h]) if name == "retrain" else (phi_u, phi_r)
  row["audit_epsilon_lb"] = M.audit_epsilon(pos, neg, delta=AUDIT_DELTA)["epsilon_lower_bound"]
  return row, eps, phi_u


def _klom_columns(name, logits, retrained, labels) -> dict:
  """KLOM (the Easy Data Unlearning Bench's rule, `metrics.klom`) over the forget, retain
  and held-out (test) examples: the margins of the N unlearned models against the N
  retrained ones; for retrain itself two disjoint halves (the floor at N/2, as for ε).
  Median and 95th percentile per split and `klom_average_95` (the mean of the three 95th
  percentiles) in the benchmark's direction KL(unlearned ‖ oracle), named in
  `klom_direction`; the forget p95 and average_95 also in the other direction."""
  out, p95, p95_reverse = {"klom_direction": "unlearned_oracle"}, [], []
  for split in KLOM_SPLITS:
    phi_r = M.logit_scaled_confidence(retrained[split], labels[split][None])
    if name == "retrain":
      h = phi_r.shape[0] // 2
      pair = (phi_r[:h], phi_r[h:2 * h])
    else:
      pair = (M.logit_scaled_confidence(logits[split], labels[split][None]), phi_r)
    values = M.klom(*pair)
    for key, v in M.klom_percentiles(values).items():
      out[f"klom_{split}_{key}"] = float(v)
    p95.append(out[f"klom_{split}_p95"])
    p95_reverse.append(float(np.percentile(np.asarray(
        M.klom(*pair, direction="oracle_unlearned")), 95)))
  out["klom_average_95"] = float(np.mean(p95))
  out["klom_oracle_unlearned_forget_p95"] = p95_reverse[KLOM_SPLITS.index("forget")]
  out["klom_oracle_unlearned_average_95"] = float(np.mean(p95_reverse))
  return out
