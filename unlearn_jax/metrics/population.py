"""Per-example attacks over populations of models (N unlearned vs N retrained).

For every forget example s there are two samples of size N of a statistic: one from the
models the method unlearned, one from models retrained without s. The less an attacker
can tell them apart, the better the unlearning. Inputs are arrays [N, S] (statistics) or
[N, S, C] (logits).

The statistics (`logit_scaled_confidence`, `hinge`) and the scores (`forgetting_quality`,
`competition_score`) are `jax.numpy`: they run under `jit`/`vmap`, in float32, or in float64
inside `jax.enable_x64(True)` (what the evaluation does: the competition's thresholds are
placed on a grid of step 0.01 over φ, and φ near p_y ≈ 1 needs the precision; the tests
check the float32 path against float64). `per_example_epsilons` is `jax.numpy` too (one
computation vmapped over examples); `eps_hat` is float64 NumPy on the host, callable from
traced code (`host.host_metric`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.metrics.host import host_metric

EPS_CAP = 50.0


def _true_and_others(logits, labels):
  z = jnp.asarray(logits)
  y = jnp.asarray(labels)
  onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
  return z_y, jnp.where(onehot, -jnp.inf, z)


def logit_scaled_confidence(logits, labels):
  """φ = ln p_y − ln Σ_{j≠y} p_j  ( = ln(p_y / (1 − p_y)) ), per example.

  Logits [..., C], labels [...] (broadcast against the logits' leading axes); returns [...].
  Computed as z_y − logsumexp_{j≠y} z_j, exact where p_y rounds to 1. Ideal: the retrained
  models' distribution of φ for the same example.
  """
  z_y, others = _true_and_others(logits, labels)
  return z_y - jax.nn.logsumexp(others, axis=-1)


def hinge(logits, labels):
  """h = z_y − max_{j≠y} z_j (the margin), per example; logits [..., C], labels [...].
  Ideal: as for retrained models."""
  z_y, others = _true_and_others(logits, labels)
  return z_y - jnp.max(others, axis=-1)


def _linspace(start, stop, num, size: int):
  """`np.linspace(start, stop, num)` (traced num ≤ size) padded to `size`: k·step + start,
  the last valid entry exactly `stop` (NumPy's rule, so the grids are bitwise NumPy's)."""
  k = jnp.arange(size, dtype=jnp.result_type(start))
  step = (stop - start) / jnp.maximum(num - 1, 1)
  t = jnp.where(num > 1, k * step + start, start)
  return jnp.where((k == num - 1) & (num > 1), stop, t), k < num


def _hankel(x, rows: int, cols: int):
  """H[i, j] = x[i + j] (x of length rows + cols − 1) by tiling and reshaping, no gather:
  row i of tile(x) laid out with stride len(x) + 1 starts at x[i]."""
  n = x.shape[0]
  return jnp.tile(x, rows + 1)[:rows * (n + 1)].reshape(rows, n + 1)[:, :cols]


def _rate_tables(n: int, delta, dtype):
  """For an error count c ∈ [0, n] of two kinds, the rate as the reference computes it —
  `share`: c / n; `rest`: 1 − c / n — indexed by badness b (rate increasing in b: b = c for
  share, b = n − c for rest), with ln(rate) and ln(1 − δ − rate). Tabulated in NumPy float64:
  under `jit` XLA would turn c / n into c · (1/n), and 20 · 0.05 ≠ 1."""
  b = np.arange(n + 1, dtype=np.float64)
  out = {}
  for kind, rate in (("share", b / n), ("rest", 1 - (n - b) / n)):
    rate = jnp.asarray(rate, dtype)
    tiny = jnp.finfo(dtype).tiny
    out[kind] = (rate, jnp.log(jnp.maximum(rate, tiny)),
                 jnp.log(jnp.maximum(1 - delta - rate, tiny)), 1 - delta - rate > 0)
  return out


def _attack_epsilon(bad_fp, fp_table, bad_fn, fn_table, valid):
  """ε of a family of attacks from their error badness indices (see `_rate_tables`; masked
  by `valid`): ∞ if one attack makes no error; attacks with exactly one zero rate skipped;
  else max(0, ln(1−δ−FPR) − ln FNR, ln(1−δ−FNR) − ln FPR).

  Both terms fall as either rate grows, so for each FNR only the smallest positive FPR can
  win the first, and for each FPR only the smallest positive FNR the second: two scatter-mins
  over the attacks, then logarithms of tables of n + 1 entries."""
  fp_rate, fp_log, fp_log_rest, fp_rest_pos = fp_table
  fn_rate, fn_log, fn_log_rest, fn_rest_pos = fn_table
  big = jnp.iinfo(jnp.int32).max
  perfect = jnp.any(valid & (bad_fp == 0) & (bad_fn == 0))
  ok = valid & (bad_fp >= 1) & (bad_fn >= 1)
  best_fp = jnp.full(fn_rate.shape, big, jnp.int32).at[bad_fn].min(jnp.where(ok, bad_fp, big))
  best_fn = jnp.full(fp_rate.shape, big, jnp.int32).at[bad_fp].min(jnp.where(ok, bad_fn, big))

  def side(best, rest_pos, log_rest, log_other):
    found = best < big
    idx = jnp.where(found, best, 0)
    v = jnp.where(found & rest_pos[idx], log_rest[idx] - log_other, -jnp.inf)
    return jnp.max(v, initial=-jnp.inf)

  eps = jnp.maximum(0.0, jnp.maximum(side(best_fp, fp_rest_pos, fp_log_rest, fn_log),
                                     side(best_fn, fn_rest_pos, fn_log_rest, fp_log)))
  return jnp.where(perfect, jnp.inf, eps)


COMPARE_ALL_MAX = 1 << 20          # queries × population size for searchsorted's compare_all
EPSILON_CHUNK_BYTES = 1 << 29      # memory for one chunk of examples' threshold grids
BYTES_PER_THRESHOLD = 96           # the grid, its mask, counts and scatter-mins, per threshold


def _example_epsilon(u, r, delta, max_thresholds: int, num_right: int = 400,
                     num_left: int = 400):
  """ε of one forget example from its two samples u [N_u], r [N_r] (see
  `per_example_epsilons`); every size static, so it vmaps over examples."""
  dtype = u.dtype
  u_s, r_s = jnp.sort(u), jnp.sort(r)
  n_u, n_r = u.shape[0], r.shape[0]
  tab_u, tab_r = _rate_tables(n_u, delta, dtype), _rate_tables(n_r, delta, dtype)
  u_pos = jnp.median(u) >= jnp.median(r)
  ptp_u, ptp_r = u_s[-1] - u_s[0], r_s[-1] - r_s[0]
  degenerate = jnp.minimum(ptp_u, ptp_r) < 0.01 * jnp.maximum(ptp_u, ptp_r)
  lo, hi = jnp.minimum(u_s[0], r_s[0]), jnp.maximum(u_s[-1], r_s[-1])
  # Comparing against every value beats a binary search for small populations (CPU), but
  # holds len(q)·N booleans: a binary search once that is large (a long threshold grid).
  find = lambda s, q, side: jnp.searchsorted(
      s, q, side=side, method="compare_all" if s.shape[0] <= 64 and
      q.shape[0] * s.shape[0] <= COMPARE_ALL_MAX else "scan")
  # Single thresholds: predict positive when φ ≥ t, t on NumPy's linspace grid;
  # FPR = 1 − #(neg < t)/n_neg (badness n_neg − #), FNR = #(pos < t)/n_pos (badness #).
  t, valid = _linspace(lo, hi, jnp.ceil(100 * (hi - lo)).astype(jnp.int32), max_thresholds)
  below_u, below_r = find(u_s, t, "left"), find(r_s, t, "left")
  if n_u == n_r:   # one table for both orientations: choose the counts, score once
    eps = _attack_epsilon(jnp.where(u_pos, n_r - below_r, n_u - below_u), tab_r["rest"],
                          jnp.where(u_pos, below_u, below_r), tab_u["share"], valid)
  else:
    eps = jnp.where(
        u_pos, _attack_epsilon(n_r - below_r, tab_r["rest"], below_u, tab_u["share"], valid),
        _attack_epsilon(n_u - below_u, tab_u["rest"], below_r, tab_r["share"], valid))
  # Intervals: predict A (the narrower population) when l ≤ φ ≤ r.
  a_is_u = ptp_u <= ptp_r
  a_max, w = jnp.where(a_is_u, u_s[-1], r_s[-1]), jnp.where(a_is_u, ptp_u, ptp_r)
  rights, _ = _linspace(a_max - 2, a_max + 2, num_right, num_right)
  offsets, _ = _linspace(-w - 2, -w + 2, num_left, num_left)
  # Left edge (i, j) is rights[i] + offsets[j]; both grids have the step 4/399, so the left
  # edges take one value per diagonal i + j (up to the last bit of the sum): counting below
  # the num_right + num_left − 1 diagonal values instead of all 160,000 edges is the same
  # unless a statistic lies within a few ulps of an edge.
  d = jnp.arange(num_right + num_left - 1)
  i_d = jnp.minimum(d, num_right - 1)
  lefts_d = rights[i_d] + offsets[d - i_d]
  ordered = _hankel(lefts_d, num_right, num_left) <= rights[:, None]   # else no A at all
  inside = lambda s: jnp.where(ordered, jnp.clip(
      find(s, rights, "right")[:, None] - _hankel(find(s, lefts_d, "left"), num_right,
                                                  num_left), 0), 0)
  in_u, in_r = inside(u_s), inside(r_s)
  everywhere = jnp.ones(ordered.shape, bool)
  # FPR = #B inside/n_B (badness #), FNR = 1 − #A inside/n_A (badness n_A − #).
  if n_u == n_r:
    eps_i = _attack_epsilon(jnp.where(a_is_u, in_r, in_u), tab_r["share"],
                            jnp.where(a_is_u, n_u - in_u, n_r - in_r), tab_u["rest"], everywhere)
  else:
    eps_i = jnp.where(
        a_is_u, _attack_epsilon(in_r, tab_r["share"], n_u - in_u, tab_u["rest"], everywhere),
        _attack_epsilon(in_u, tab_u["share"], n_r - in_r, tab_r["rest"], everywhere))
  eps = jnp.maximum(eps, eps_i)
  return jnp.where(degenerate, EPS_CAP, jnp.minimum(eps, EPS_CAP))


def per_example_epsilons(unlearned, retrained, delta: float = 1e-5,
                         max_thresholds: int | None = None, chunk: int = 64):
  """Per-example ε of the NeurIPS 2023 unlearning competition, from statistics [N, S].

  For each forget example s, the unlearned sample u = unlearned[:, s] and the retrained
  sample r = retrained[:, s] (N may differ between them). Positive = the population with
  the larger median. If the smaller range of the two is under 1% of the larger, ε_s = 50.
  Otherwise two attack families: thresholds t on linspace(min, max, ⌈100·range⌉) (positive
  when φ ≥ t) and intervals [l, r] around the narrower population A (400 right edges on
  [max A − 2, max A + 2], for each 400 left edges on [r − w − 2, r − w + 2], w = range of A).
  Per attack FPR/FNR over the models; ε = ∞ if both are 0, attacks with exactly one 0
  skipped, else max(0, ln(1−δ−FPR) − ln FNR, ln(1−δ−FNR) − ln FPR); ε_s = max over attacks,
  clipped to [0, 50]. Ideal: 0 (the populations are indistinguishable). Returns [S].

  One vectorised `jax.numpy` computation (vmapped over examples, `lax.map` over chunks of
  `chunk` examples to bound memory): it runs under `jit`. The threshold grid has a
  data-dependent length, so it is padded to `max_thresholds` (static): from concrete
  inputs it is computed (the largest ⌈100·range⌉); under `jit` pass it (an example whose
  grid is longer raises nothing but is cut, so choose it from the statistics' range, e.g.
  100·(max φ − min φ) + 1). In float64 (inside `jax.enable_x64(True)`, what the evaluation
  does) it equals the competition's float64 code; float32 grids can place a threshold on
  the other side of a tied statistic (tests bound the difference).
  """
  u, r = jnp.asarray(unlearned), jnp.asarray(retrained)
  if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
    raise ValueError(f"expected [N, S] statistics with the same S; got {u.shape}, {r.shape}")
  if max_thresholds is None:
    if isinstance(u, jax.core.Tracer) or isinstance(r, jax.core.Tracer):
      raise ValueError("per_example_epsilons under jit needs max_thresholds (static): at "
                       "least the largest ceil(100 * range) of an example's statistics")
    both = np.concatenate([np.asarray(u), np.asarray(r)])
    max_thresholds = max(1, int(np.max(np.ceil(100 * (both.max(0) - both.min(0))))))
    # Up to a power of two: the padding is masked, and populations whose grids differ a
    # little (one per method) share one compiled program.
    max_thresholds = 1 << (max_thresholds - 1).bit_length()
  dtype = jnp.result_type(u.dtype, r.dtype, jnp.float32)
  # Examples per chunk: at most `chunk`, fewer when the threshold grid is long (a method
  # that spreads the margins over thousands of units asks for millions of thresholds).
  fit = max(1, EPSILON_CHUNK_BYTES // (BYTES_PER_THRESHOLD * int(max_thresholds)))
  return _epsilons(u.astype(dtype), r.astype(dtype), delta, int(max_thresholds),
                   max(1, min(int(chunk), fit, u.shape[1])))


@functools.partial(jax.jit, static_argnames=("max_thresholds", "chunk"))
def _epsilons(u, r, delta, max_thresholds: int, chunk: int):
  """`_example_epsilon` vmapped over chunks of examples, `lax.map` over the chunks."""
  one = lambda ur: _example_epsilon(ur[0], ur[1], delta, max_thresholds)
  n = u.shape[1]
  pad = -n % chunk
  cols = lambda a: jnp.pad(a.T, ((0, pad), (0, 0)), mode="edge").reshape(-1, chunk, a.shape[0])
  return jax.lax.map(jax.vmap(one), (cols(u), cols(r))).reshape(-1)[:n]


def static_int(value, name: str, minimum: int = 1) -> int:
  """`value` as a Python int; a ValueError naming `name` when it is traced (it fixes a
  shape or a bound, so it must be static: mark it in `static_argnames` or close over it)
  or below `minimum`."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f"{name} must be static (a Python int), not a traced value: pass it "
                     f"through jax.jit's static_argnames or close over it")
  if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
    raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
  return int(value)


def forgetting_quality(epsilons, num_models: int, variant: str = "code"):
  """F = mean_s H(ε_s) over per-example ε [S]: 1 = every forget example indistinguishable
  from retraining, 0 = all fully exposed. Ideal: 1. `num_models` (N) and `variant` are static.

  `code` (the competition's scoring code): ε_max = ⌈ln(N − 1)⌉, bucket k = ⌊ε/0.5⌋,
  H = 2^−k for ε < ε_max, else 0. `kaggle` (its description): 13 bins of width 0.5 from
  0, H = 2/2^n for bin n = 1..13, 2^−12 beyond.
  """
  num_models = static_int(num_models, "num_models", minimum=2)
  eps = jnp.asarray(epsilons)
  if variant == "code":
    eps_max = math.ceil(math.log(num_models - 1)) if num_models > 2 else 1
    k = jnp.floor(eps / 0.5)
    h = jnp.where(eps < eps_max, 2.0 ** -jnp.minimum(k, 1000), 0.0)
  elif variant == "kaggle":
    n = jnp.floor(eps / 0.5) + 1
    h = jnp.where(n <= 13, 2.0 / 2.0 ** jnp.minimum(n, 1000), 2.0 ** -12)
  else:
    raise ValueError(f"variant={variant!r} is unknown; allowed: code, kaggle")
  return jnp.mean(h)


def competition_score(epsilons, num_models: int, retain_acc_unlearned, retain_acc_retrained,
                      test_acc_unlearned, test_acc_retrained, variant: str = "code"):
  """F × (RA_U / RA_R) × (TA_U / TA_R), accuracies (any shape, e.g. [N]) averaged over the
  models. Ideal: 1 (retrain against itself scores ≈ 1)."""
  f = forgetting_quality(epsilons, num_models, variant)
  return (f * jnp.mean(jnp.asarray(retain_acc_unlearned)) / jnp.mean(jnp.asarray(retain_acc_retrained))
          * jnp.mean(jnp.asarray(test_acc_unlearned)) / jnp.mean(jnp.asarray(test_acc_retrained)))


def _gauss_logpdf(x, mu, sigma):
  sigma = np.maximum(sigma, 1e-8)
  return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)


def _eps_hat_example(hu, hr, delta):
  mu_u, sd_u, mu_r, sd_r = hu.mean(), hu.std(), hr.mean(), hr.std()
  score = lambda h: _gauss_logpdf(h, mu_u, sd_u) - _gauss_logpdf(h, mu_r, sd_r)
  su, sr = score(hu), score(hr)
  pos, neg = (su, sr) if np.median(su) >= np.median(sr) else (sr, su)
  thresholds = np.unique(np.concatenate([su, sr]))
  pos_s, neg_s = np.sort(pos), np.sort(neg)
  fpr = 1 - np.searchsorted(neg_s, thresholds, "left") / neg.size   # neg predicted pos (≥ t)
  fnr = np.searchsorted(pos_s, thresholds, "left") / pos.size       # pos predicted neg (< t)
  if np.any((fpr == 0) & (fnr == 0)):
    return math.inf
  keep = ~((fpr == 0) ^ (fnr == 0))
  fpr, fnr = fpr[keep], fnr[keep]
  if fpr.size == 0:
    return 0.0
  with np.errstate(invalid="ignore"):
    a = np.log(np.maximum(1 - delta - fpr + 1e-8, 1e-300)) - np.log(fnr + 1e-8)
    b = np.log(np.maximum(1 - delta - fnr + 1e-8, 1e-300)) - np.log(fpr + 1e-8)
  return float(max(0.0, np.max(a), np.max(b)))


@host_metric(lambda u, r, y: ((u[1],), ()))
def eps_hat(unlearned_logits, retrained_logits, labels, delta: float = 0.05):
  """ε̂ of "Forget with Precision" (Krahenmann et al.): a Gaussian likelihood-ratio attack per example.

  Statistic: the hinge. Per forget example, fit N(μ, σ) (population std) to the
  unlearned and to the retrained hinges; score all 2N by log N(h; μ_U, σ_U) −
  log N(h; μ_R, σ_R); positive = the population with the larger median score; sweep every
  threshold: ε = ∞ if one separates perfectly, thresholds with exactly one zero rate
  dropped, else ε = max over thresholds of ln(1−δ−FPR+1e-8) − ln(FNR+1e-8) and the
  symmetric term. Inputs: logits [N, S, C], labels [S]. Returns (ε per example [S],
  median ε). Ideal: 0. Host NumPy (float64).
  """
  with jax.enable_x64(True):
    hu = np.asarray(hinge(np.asarray(unlearned_logits, np.float64), np.asarray(labels)))
    hr = np.asarray(hinge(np.asarray(retrained_logits, np.float64), np.asarray(labels)))
  eps = np.asarray([_eps_hat_example(hu[:, s], hr[:, s], delta) for s in range(hu.shape[1])])
  return eps, float(np.median(eps))


KLOM_BINS = 20
KLOM_FLOOR = 1e-5
KLOM_CLIP = 100.0
KLOM_DIRECTIONS = ("unlearned_oracle", "oracle_unlearned")


def klom(unlearned_margins, oracle_margins, bins: int = KLOM_BINS, floor: float = KLOM_FLOOR,
         clip: float = KLOM_CLIP, direction: str = "unlearned_oracle"):
  """KLOM (KL divergence Of Margins; Georgiev et al., "Attribute-to-Delete", ICLR 2025), per
  example, exactly as the Easy Data Unlearning Bench computes it (`binned_kl_divergence`
  in easydub/EasyDUB-code, `easydub/eval.py`).

  With P the margins of one example over the unlearned models and Q over the oracle
  (retrained) models (`direction="unlearned_oracle"`, EasyDUB's and the KLOM paper's
  first release: KL(unlearned ‖ oracle); `"oracle_unlearned"` swaps them, as
  RoyRin/data-unlearning-bench's latest code passes them):

  1. margins φ = z_y − logsumexp_{j≠y} z_j (`logit_scaled_confidence`), each value
     clipped to [−clip, clip];
  2. `bins` equal-width bins over the pooled [min, max] of the clipped values (if
     min ≥ max, max = min + 1): edges = linspace(lo, hi, bins + 1); a value goes to bin c
     when edges[c−1] ≤ v < edges[c] (NumPy's `digitize`), so a value equal to the pooled
     maximum is in no bin and is not counted;
  3. P_c, Q_c = counts / each population's counted total (no additive smoothing);
  4. Q floored at `floor` only in bins where P > 0 (not renormalised);
  5. KLOM = Σ_{c: P_c > 0} P_c ln(P_c / Q_c), in nats.

  Identical populations give 0; disjoint ones ln(1/floor) − H(P) (≤ 11.5 at 1e-5).
  Inputs: margins [N, S] (or [N] for one example) of each population (N may differ).
  `bins` and `direction` are static. Returns [S] (or a scalar). `jax.numpy`: runs under
  `jit` and `vmap`. Ideal: 0; report per split with `klom_report`.
  """
  u, r = jnp.asarray(unlearned_margins), jnp.asarray(oracle_margins)
  if u.ndim not in (1, 2) or u.ndim != r.ndim or u.shape[1:] != r.shape[1:]:
    raise ValueError(f"klom takes margins [N, S] (or [N]) for both populations; got shapes "
                     f"{u.shape} and {r.shape}")
  bins = static_int(bins, "bins", minimum=1)
  if direction not in KLOM_DIRECTIONS:
    raise ValueError(f"direction={direction!r} is unknown; allowed: {', '.join(KLOM_DIRECTIONS)}")
  dtype = jnp.result_type(u.dtype, r.dtype, jnp.float32)
  p_samples, q_samples = (u, r) if direction == "unlearned_oracle" else (r, u)
  p_samples = jnp.clip(p_samples.astype(dtype), -clip, clip)
  q_samples = jnp.clip(q_samples.astype(dtype), -clip, clip)
  lo = jnp.minimum(p_samples.min(axis=0), q_samples.min(axis=0))
  hi = jnp.maximum(p_samples.max(axis=0), q_samples.max(axis=0))
  hi = jnp.where(lo >= hi, lo + 1.0, hi)
  # As NumPy's linspace: k·step + start, the last edge exactly the stop.
  k = jnp.arange(bins + 1, dtype=dtype).reshape((-1,) + (1,) * lo.ndim)
  edges = k * ((hi - lo) / bins) + lo
  edges = edges.at[-1].set(hi)

  def probabilities(values):
    # digitize: index c with edges[c-1] <= v < edges[c]; 0 and bins + 1 fall outside.
    counts = jnp.sum((values[:, None] >= edges[None, :-1]) & (values[:, None] < edges[None, 1:]),
                     axis=0).astype(dtype)                              # [bins, S]
    total = counts.sum(axis=0)
    return jnp.where(total > 0, counts / jnp.maximum(total, 1), 0.0)

  p, q = probabilities(p_samples), probabilities(q_samples)
  q = jnp.where(p > 0, jnp.maximum(q, floor), q)
  terms = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) -
                                jnp.log(jnp.where(p > 0, q, 1.0))), 0.0)
  return jnp.sum(terms, axis=0)


def klom_report(unlearned: dict, oracle: dict, direction: str = "unlearned_oracle",
                **klom_kwargs) -> dict:
  """KLOM per split as the Easy Data Unlearning Bench reports it.

  `unlearned`, `oracle`: {split: margins [N, S_split]} with the same splits (EasyDUB's are
  `retain`, `forget` and `val`). Returns, for each split, `klom_p95_<split>`,
  `klom_p99_<split>`, `klom_mean_<split>` and `klom_std_<split>` over the split's
  examples, and `average_95`, the mean of the splits' 95th percentiles (NumPy's linear
  percentile). Floats. Ideal: 0 everywhere.

  Host-side: it returns Python floats, so call it on concrete arrays, not under `jit`
  (`klom` and `klom_percentiles` are the jittable parts).
  """
  if set(unlearned) != set(oracle) or not unlearned:
    raise ValueError(f"unlearned and oracle must name the same splits; got "
                     f"{sorted(unlearned)} and {sorted(oracle)}")
  out, p95 = {}, []
  for split in unlearned:
    values = np.asarray(klom(unlearned[split], oracle[split], direction=direction, **klom_kwargs))
    values = np.atleast_1d(values).astype(np.float64)
    out[f"klom_p95_{split}"] = float(np.percentile(values, 95))
    out[f"klom_p99_{split}"] = float(np.percentile(values, 99))
    out[f"klom_mean_{split}"] = float(np.mean(values))
    out[f"klom_std_{split}"] = float(np.std(values))
    p95.append(out[f"klom_p95_{split}"])
  out["average_95"] = float(np.mean(p95))
  return out


def klom_average_95(unlearned: dict, oracle: dict, direction: str = "unlearned_oracle",
                    **klom_kwargs) -> dict:
  """The Easy Data Unlearning Bench's headline, jittable: {"p95_<split>": the 95th
  percentile over the split's examples of `klom`, "average_95": their mean} (NumPy's
  linear percentile, as `klom_report`). `unlearned`, `oracle`: {split: margins [N, S]}
  with the same splits. `jax.numpy`: it runs under `jit` and inside
  `bootstrap.bootstrap_replicates`. Ideal: 0; read it against the floor at the same N
  (`evaluation.SplitHalfReference`)."""
  if set(unlearned) != set(oracle) or not unlearned:
    raise ValueError(f"unlearned and oracle must name the same splits; got "
                     f"{sorted(unlearned)} and {sorted(oracle)}")
  out = {f"p95_{s}": jnp.percentile(klom(unlearned[s], oracle[s], direction=direction,
                                         **klom_kwargs), 95.0) for s in sorted(unlearned)}
  out["average_95"] = jnp.mean(jnp.stack([out[f"p95_{s}"] for s in sorted(unlearned)]))
  return out


def klom_percentiles(values, percentiles=(50.0, 95.0)) -> dict:
  """{"p50": …, "p95": …}: percentiles of per-example KLOM values [S] (Easy Data
  Unlearning Bench ranks by the 95th over the forget, retain and validation examples)."""
  v = jnp.asarray(values)
  return {f"p{q:g}": jnp.percentile(v, q) for q in percentiles}
