"""Population-scale evaluation: the per-example attacks of `unlearn_jax.metrics` between a
population of unlearned models and a population of retrained ones.

`PopulationLogits` predicts with every model of a population (one compiled program per
input shape, reused for every population of a run); `evaluate_population` computes one
population's metrics against the retrained one. Training the populations, running the
methods over them and writing the artifacts (evaluation.csv, report.md, plots) is the
experiment's job (`experiments/pipeline/population.py`, `experiments/reports/population.py`).
"""

from __future__ import annotations

import jax
import numpy as np

from unlearn_jax import metrics as M
from unlearn_jax import parallel
from unlearn_jax import train as train_lib
from unlearn_jax.population import PopulationProgram

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
    self._program = PopulationProgram(population_logits, (0, None), chunk=chunk)

  def __call__(self, variables, x) -> np.ndarray:
    return np.asarray(parallel.to_host(self._program(variables, x)))


class PopulationFeatures:
  """[N, n, d] penultimate features (the adapter's `features`) of every model of a
  population on `x`, vmapped over chunks like `PopulationLogits`; `available` is False
  for a model whose adapter gives no features (no head, no features_fn)."""

  def __init__(self, model, chunk: int = 0, eval_batch: int = 1000):
    from unlearn_jax.adapter import as_adapter
    adapter = as_adapter(model)
    self.available = adapter.head is not None or adapter.features_fn is not None
    self.chunk = chunk

    def population_features(v, xx):
      return train_lib.predict_features(model, v, xx, eval_batch)[1]
    self._program = PopulationProgram(population_features, (0, None), chunk=chunk)

  def __call__(self, variables, x) -> np.ndarray:
    return np.asarray(parallel.to_host(self._program(variables, x)))


PROBE_L2 = 1.0     # the ridge probe's λ (`metrics.ridge_probe`)


def probe_forget_accuracy(features: dict, labels: dict, num_classes: int) -> np.ndarray:
  """Per model [N]: the ridge probe fitted on the held-out (test) examples' features, read
  on the forget examples (`metrics.linear_probe_accuracy`, vmapped over the models).
  `features[split]` [N, n, d]."""
  # Model by model, op by op, on this process's device: a host-side metric of a run that
  # may span processes (a jitted program under the run's mesh would be a global one).
  train, evals = (np.asarray(features[s], np.float32) for s in ("test", "forget"))
  return np.asarray([float(M.linear_probe_accuracy(
      train[i], np.asarray(labels["test"]), evals[i], np.asarray(labels["forget"]),
      int(num_classes), PROBE_L2)) for i in range(train.shape[0])])


def _acc(logits, labels):
  return (np.argmax(logits, -1) == np.asarray(labels)).mean(axis=-1)     # per model


KLOM_RESAMPLE_BATCH = 8    # bootstrap redraws of KLOM vmapped at a time (memory: 8 × [h, 21, S])
# The fewest models per side the bootstrap's intervals and verdicts are given at: with fewer,
# every KLOM sits near its ceiling and the redraws of a handful of models misjudge the
# spread, so identical populations are "told apart" (tests/test_intervals.py holds the
# verdicts at 16 per side to what they promise).
MIN_MODELS_PER_SIDE = 16
# The competition's ε grid has ⌈100·range⌉ thresholds per example: a population whose
# margins span thousands of units (a method that blew the logits up) makes every redraw
# cost minutes. Past this many thresholds its ε, F and score get no interval (the row's
# `epsilon_resamples` says 0); a deterministic rule of the data, not of the machine.
EPSILON_BOOTSTRAP_MAX_THRESHOLDS = 1 << 16
# The range each interval is clipped to (the metric's own range).
METRIC_RANGES = {"klom_average_95": (0.0, float("inf")), "forgetting_quality": (0.0, 1.0),
                 "competition_score": (0.0, float("inf")),
                 "epsilon_median": (0.0, M.population.EPS_CAP)}


@jax.jit
def klom_replicates(margins, oracle, idx_side, idx_oracle):
  """KLOM average_95 ({split: margins [h, S]} against the oracles' [h, S]) on every bootstrap
  redraw (index arrays [R, h], `metrics.resample_indices`): [R]. One program per shape."""
  return M.bootstrap_replicates(lambda u, b: M.klom_average_95(u, b)["average_95"],
                                (margins, oracle), (idx_side, idx_oracle),
                                batch_size=KLOM_RESAMPLE_BATCH)


class SplitHalfReference:
  """What every population is scored against, at the same number of models as its floor.

  The N retrained models (the oracles) are split in two halves of h = N // 2: **B**, the
  reference every population is scored against, and **A**, scored against B like any
  method: the floor, what a perfect method (an independent retrain) scores with h models
  per side. Every population's first h models are scored against the same B, so the floor
  and each row compare h models with h models (a floor computed at N/2 beside rows at N
  would sit above them: KLOM and ε fall as N grows).

  The bootstrap over models (`metrics.bootstrap`): `num_resamples` redraws of h indices for
  the scored side, shared by every population (an unlearned model stays paired with the
  original it came from), and for B, shared too, so the difference of two rows on one
  redraw keeps the reference fixed. `epsilon_resamples` of them (the first) also redraw
  the per-example ε, F and the competition score (each redraw runs the competition's
  attack grid on every forget example, so they cost more)."""

  def __init__(self, retrained: dict, labels: dict, seed: int = 0, num_resamples: int = 200,
               epsilon_resamples: int = 30, confidence: float = 0.95):
    n = retrained["forget"].shape[0]
    if n < 4:
      raise ValueError(f"the retrained population has {n} models; the split-half floor "
                       "needs at least 4 (two halves of 2)")
    if num_resamples < 0 or not 0 <= epsilon_resamples <= max(num_resamples, 0):
      raise ValueError(f"num_resamples={num_resamples} must be >= 0 and epsilon_resamples="
                       f"{epsilon_resamples} in [0, num_resamples]")
    self.h = n // 2
    self.labels = labels
    self.no_intervals = None     # why there are none, when there are none
    if num_resamples and self.h < MIN_MODELS_PER_SIDE:
      self.no_intervals = (f"no intervals: {n} models per population give {self.h} per side, "
                           f"and the bootstrap needs at least {MIN_MODELS_PER_SIDE} per side "
                           f"({2 * MIN_MODELS_PER_SIDE} models)")
      num_resamples = epsilon_resamples = 0
    self.confidence = confidence
    self.b = {s: v[self.h:2 * self.h] for s, v in retrained.items()}
    self.a_forget = retrained["forget"][:self.h]
    # True-class probabilities for RMIA and IAM: the audited forget examples, the test
    # examples (RMIA's population: no model trained on them) and B's retain examples
    # (IAM's fitted level: what trained-on examples look like).
    p = lambda lg, split: np.asarray(M.true_class_probability(
        np.asarray(lg, np.float64), labels[split][None]))
    with jax.enable_x64(True):
      self.b_probs = {s: p(self.b[s], s) for s in ("forget", "test", "retain")}
      self.a_probs = {s: p(retrained[s][:self.h], s) for s in ("forget", "test")}
      self.a_rmia = np.asarray(M.rmia(self.a_probs["forget"], self.b_probs["forget"],
                                      self.a_probs["test"], self.b_probs["test"]))
      self.a_iam = np.asarray(M.iam(self.a_probs["forget"], self.b_probs["forget"],
                                    self.b_probs["retain"]))
    self.b_margins = {s: np.asarray(M.logit_scaled_confidence(self.b[s], labels[s][None]))
                      for s in KLOM_SPLITS}
    key_side, key_b = jax.random.split(jax.random.PRNGKey(seed))
    self.num_resamples, self.epsilon_resamples = num_resamples, epsilon_resamples
    if num_resamples:
      self.idx_side = np.asarray(M.resample_indices(key_side, self.h, num_resamples))
      self.idx_b = np.asarray(M.resample_indices(key_b, self.h, num_resamples))

  def interval(self, estimate, replicates, metric: str | None = None) -> tuple[float, float]:
    """The normal bootstrap interval, clipped to `metric`'s range (`METRIC_RANGES`)."""
    if replicates is None or len(replicates) < 2:
      return float("nan"), float("nan")
    low, high = M.normal_interval(estimate, np.asarray(replicates, np.float64), self.confidence)
    lo_bound, hi_bound = METRIC_RANGES.get(metric, (-float("inf"), float("inf")))
    return float(np.clip(low, lo_bound, hi_bound)), float(np.clip(high, lo_bound, hi_bound))


def evaluate_population(name, logits: dict, labels: dict, reference: SplitHalfReference,
                        random_forget, seconds: float, mia_models: int
                        ) -> tuple[dict, np.ndarray, np.ndarray, dict]:
  """Every metric of one population (`logits[split]` [N, n, C]) against the reference's
  oracles B (`SplitHalfReference`): the row, the per-example ε [S], the forget margins of
  the scored models [h, S] and the bootstrap replicates ({metric: [R]}, for
  `compare_to_floor`). The `retrain` population's scored half is A: its row is the floor."""
  # Float64 throughout (jax.numpy metrics under x64): the competition's thresholds need it.
  with jax.enable_x64(True):
    row, eps, phi_u, reps = _evaluate_population64(
        name, {k: np.asarray(v, np.float64) for k, v in logits.items()}, labels, reference,
        np.asarray(random_forget, np.float64), seconds, mia_models)
  text = ("method", "num_models", "klom_direction", "models_per_side", "epsilon_resamples")
  return ({k: (float(v) if k not in text else v) for k, v in row.items()}, np.asarray(eps),
          np.asarray(phi_u), reps)


def _evaluate_population64(name, logits, labels, ref, random_forget, seconds, mia_models):
  n, h = logits["forget"].shape[0], ref.h
  side = {s: v[:h] for s, v in logits.items()}      # A for the retrain population
  b = {s: np.asarray(v, np.float64) for s, v in ref.b.items()}
  phi_u = np.asarray(M.logit_scaled_confidence(side["forget"], labels["forget"][None]))
  phi_b = np.asarray(M.logit_scaled_confidence(b["forget"], labels["forget"][None]))
  eps = M.per_example_epsilons(phi_u, phi_b)
  eh, eh_med = M.eps_hat(side["forget"], b["forget"], labels["forget"])
  ra, fa, ta = (_acc(logits[s], labels[s]) for s in ("retain", "forget", "test"))
  ra_s, ta_s = _acc(side["retain"], labels["retain"]), _acc(side["test"], labels["test"])
  ra_b, ta_b = _acc(b["retain"], labels["retain"]), _acc(b["test"], labels["test"])
  # U-LiRA: first halves are the shadow populations (the retrained one's: A), second
  # halves the targets (B).
  if name == "retrain":
    ul = {"accuracy": float("nan")}
  else:
    phi_all = np.asarray(M.logit_scaled_confidence(logits["forget"], labels["forget"][None]))
    phi_a = np.asarray(M.logit_scaled_confidence(ref.a_forget, labels["forget"][None]))
    ul = M.ulira(phi_all[:h], phi_a, np.concatenate([phi_all[h:2 * h], phi_b]),
                 np.arange(2 * h) < h)
  # RMIA and IAM: B the references, the scored half the targets, against A as targets
  # (an attacker's AUC telling the population from independent retrains; 0.5 ideal).
  if name == "retrain":
    row_rmia = row_iam = float("nan")
  else:
    probs = {s: np.asarray(M.true_class_probability(side[s], labels[s][None]))
             for s in ("forget", "test")}
    row_rmia = M.roc_summary(np.asarray(M.rmia(probs["forget"], ref.b_probs["forget"],
                                               probs["test"], ref.b_probs["test"])),
                             ref.a_rmia)["auc"]
    row_iam = M.roc_summary(1 - np.asarray(M.iam(probs["forget"], ref.b_probs["forget"],
                                                 ref.b_probs["retain"])),
                            1 - ref.a_iam)["auc"]
  mia = np.mean([M.mia_efficacy(logits["retain"][i], labels["retain"], logits["test"][i],
                                labels["test"], logits["forget"][i], labels["forget"])
                 for i in range(min(n, mia_models))])
  f = M.forgetting_quality(eps, h)
  row = {"method": name, "num_models": n, "models_per_side": h,
         "forgetting_quality": f,
         "forgetting_quality_kaggle": M.forgetting_quality(eps, h, "kaggle"),
         "competition_score": M.competition_score(eps, h, ra_s, ra_b, ta_s, ta_b),
         "epsilon_median": float(np.median(np.asarray(eps))),
         "eps_hat_median": eh_med, "eps_hat_inf_fraction": float(np.mean(np.isinf(eh))),
         "ulira_accuracy": ul["accuracy"], "rmia_auc": float(row_rmia),
         "iam_auc": float(row_iam), "mia_efficacy": float(mia),
         "retain_acc": float(ra.mean()), "forget_acc": float(fa.mean()),
         "test_acc": float(ta.mean()), "seconds": seconds,
         "js_to_retrain": float(np.mean([M.js_to_retrain(side["forget"][i], b["forget"][i])
                                         for i in range(h)])),
         "activation_distance": float(np.mean([M.activation_distance(
             side["forget"][i], b["forget"][i]) for i in range(h)])),
         "zrf": float(np.mean([M.zrf(logits["forget"][i], random_forget[i]) for i in range(n)]))}
  margins = {s: np.asarray(M.logit_scaled_confidence(side[s], labels[s][None]))
             for s in KLOM_SPLITS}
  row.update(_klom_columns(margins, ref.b_margins))
  # The audit: an ε that holds with 95% confidence, from the attack "unlearned when the
  # forget examples' confidence is high", on the same h models against B.
  row["audit_epsilon_lb"] = M.audit_epsilon(phi_u, phi_b, delta=AUDIT_DELTA)["epsilon_lower_bound"]
  reps = _replicates(ref, margins, phi_u, phi_b, (ra_s, ra_b, ta_s, ta_b))
  row["epsilon_resamples"] = len(reps.get("forgetting_quality", ()))
  for metric in ("klom_average_95", "forgetting_quality", "competition_score", "epsilon_median"):
    row[f"{metric}_low"], row[f"{metric}_high"] = ref.interval(row[metric], reps.get(metric),
                                                               metric)
  return row, eps, phi_u, reps


def _replicates(ref, margins, phi_u, phi_b, accuracies) -> dict:
  """The bootstrap replicates of one population's KLOM average_95, F, competition score
  and median per-example ε (`SplitHalfReference` for the redraws)."""
  if not ref.num_resamples:
    return {}
  out = {"klom_average_95": np.asarray(klom_replicates(
      margins, ref.b_margins, ref.idx_side, ref.idx_b), np.float64)}
  ra_s, ra_b, ta_s, ta_b = accuracies
  f, score, med = [], [], []
  both = np.concatenate([phi_u, phi_b])
  grid = float(np.max(np.ceil(100 * (both.max(0) - both.min(0))))) if both.size else 0.0
  for r in range(ref.epsilon_resamples if grid <= EPSILON_BOOTSTRAP_MAX_THRESHOLDS else 0):
    iu, ib = ref.idx_side[r], ref.idx_b[r]
    e = M.per_example_epsilons(phi_u[iu], phi_b[ib])
    f.append(float(M.forgetting_quality(e, ref.h)))
    score.append(float(M.competition_score(e, ref.h, ra_s[iu], ra_b[ib], ta_s[iu], ta_b[ib])))
    med.append(float(np.median(np.asarray(e))))
  if f:
    out.update(forgetting_quality=np.asarray(f), competition_score=np.asarray(score),
               epsilon_median=np.asarray(med))
  return out


def compare_to_floor(rows: list, replicates: dict, reference: SplitHalfReference) -> None:
  """Adds to every row the floor's KLOM average_95 (`klom_floor_average_95`, the retrain
  row's: A against B) and whether the row is told apart from the floor and from doing
  nothing: `klom_distinguishable_from_floor` / `_from_original` are True when the normal
  bootstrap interval of the difference (the two rows' replicates on the same redraws)
  excludes 0, None where the comparison is the row itself or has no replicates."""
  by = {r["method"]: r for r in rows}
  floor = by.get("retrain")
  for r in rows:
    r["klom_floor_average_95"] = floor["klom_average_95"] if floor else float("nan")
    for other, column in (("retrain", "klom_distinguishable_from_floor"),
                          ("original", "klom_distinguishable_from_original")):
      r[column] = None
      if other in by and other != r["method"] and r["method"] in replicates and \
          "klom_average_95" in replicates[r["method"]]:
        d = r["klom_average_95"] - by[other]["klom_average_95"]
        low, high = reference.interval(d, replicates[r["method"]]["klom_average_95"]
                                       - replicates[other]["klom_average_95"])
        r[column] = bool(low > 0 or high < 0) if low == low else None


def _klom_columns(margins: dict, oracle: dict) -> dict:
  """KLOM (the Easy Data Unlearning Bench's rule, `metrics.klom`) over the forget, retain
  and held-out (test) examples: the margins of h scored models against the h oracles of B.
  Median and 95th percentile per split and `klom_average_95` (the mean of the three 95th
  percentiles) in the benchmark's direction KL(unlearned ‖ oracle), named in
  `klom_direction`; the forget p95 and average_95 also in the other direction."""
  out, p95, p95_reverse = {"klom_direction": "unlearned_oracle"}, [], []
  for split in KLOM_SPLITS:
    pair = (margins[split], oracle[split])
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
