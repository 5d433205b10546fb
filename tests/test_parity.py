"""Parity with the reference codes: batch means over short last batches, SSD's loaders,
SalUn's mask and schedule (BUILD_NOTES, "Parity with the reference code").

Every reference here is written in the test from the reference code's rule: gradients with
`jax.grad` of a cross-entropy spelled out below, masks and dampening in NumPy; none of
the library's internals."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import methods, models, train
from unlearn_jax import batching, losses
from unlearn_jax.importance import saliency_mask, top_fraction_mask, weight_importance
from unlearn_jax.methods.dampening import assd_alpha, dampen, union_set

# Parity depends on the compiled program (fusion, reduction order): the optimised lane.
pytestmark = pytest.mark.optimised

tree_map = jax.tree_util.tree_map


@pytest.fixture(scope="module")
def setup(digits, digits_split):
  m = models.get_model("mlp", 10, hidden=(32,))
  v0 = models.init_variables(m, jax.random.PRNGKey(0), digits.input_shape)
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  cfg = train.TrainConfig(epochs=5, batch_size=64, lr=0.05)
  v, _ = jax.jit(train.fit, static_argnums=(0, 1))(m, cfg, v0, x, y, jax.random.PRNGKey(1))
  # Sizes that are not multiples of any batch size used below.
  forget = (x[digits_split.forget][:37], y[digits_split.forget][:37])
  retain = (x[digits_split.retain][:101], y[digits_split.retain][:101])
  ctx = methods.MethodContext(m, 10, digits.input_shape, (), "mlp")
  return m, v, forget, retain, ctx


def _loader(data, batch_size):
  """A PyTorch DataLoader without shuffling: consecutive slices, the last one short."""
  n = data[0].shape[0]
  return [(data[0][i:i + batch_size], data[1][i:i + batch_size]) for i in range(0, n, batch_size)]


def _ce_grad(m, v, x, y):
  """∇θ of the batch-mean cross-entropy, as PyTorch's CrossEntropyLoss(reduction='mean')."""
  def loss(params):
    logits = m.apply({**v, "params": params}, x)
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
  return jax.grad(loss)(v["params"])


def _reference_importance(m, v, data, batch_size):
  """SSD's calc_importance: Σ over loader batches of (∇ mean-batch CE)², / len(loader)."""
  batches = _loader(data, batch_size)
  grads = [tree_map(jnp.square, _ce_grad(m, v, xb, yb)) for xb, yb in batches]
  return tree_map(lambda *g: sum(g) / len(batches), *grads)


def _np_dampen(params, imp_f, imp_d, alpha, lam):
  """SSD's modify_weight: where I_f > α·I_D, θ ← min(λ·I_D / I_f, 1)·θ (float64)."""
  def one(p, f, d):
    p, f, d = (np.asarray(a, np.float64) for a in (p, f, d))
    selected = f > alpha * d
    beta = np.minimum(lam * d / np.where(selected, f, 1.0), 1.0)
    return np.where(selected, beta * p, p)
  return tree_map(one, params, imp_f, imp_d)


def _np_top_fraction_mask(scores, keep):
  """SalUn's generate_mask: ranks of the flattened scores from a stable descending argsort,
  marked where rank < ⌊N·keep⌋."""
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in leaves])
  marked = np.zeros(flat.size, bool)
  marked[np.argsort(-flat, kind="stable")[:int(flat.size * keep)]] = True
  sizes = np.cumsum([a.size for a in leaves])[:-1]
  return jax.tree_util.tree_unflatten(
      treedef, [part.reshape(a.shape) for part, a in zip(np.split(marked, sizes), leaves)])


def test_fixed_batches_mark_the_padding_of_the_short_last_batch():
  data = (jnp.arange(23.0), jnp.arange(23))
  (xb, yb), valid = batching.fixed_batches(data, 8)
  assert xb.shape == (3, 8) and valid.shape == (3, 8)
  assert valid.sum() == 23 and not valid[2, 7]
  np.testing.assert_array_equal(np.asarray(xb[valid]), np.arange(23.0))
  # Every reduction leaves the padding out: exact means whatever the batch size.
  mean = batching.weighted_batch_mean(lambda b, ok: batching.masked_mean(b[0], ok), data, 8)
  np.testing.assert_allclose(float(mean), 11.0)
  np.testing.assert_allclose(float(batching.example_mean(lambda b: b[0], data, 8)), 11.0)
  batch_means = batching.batched_mean(lambda b, ok: batching.masked_mean(b[0], ok), data, 8)
  np.testing.assert_allclose(float(batch_means), (3.5 + 11.5 + 19.0) / 3)


def test_batch_importance_equals_the_reference_loop_on_a_short_last_batch(setup):
  m, v, forget, _, _ = setup
  ours = weight_importance(m, v, forget, 16, "batch")       # 37 = 16 + 16 + 5
  chex.assert_trees_all_close(ours, _reference_importance(m, v, forget, 16), rtol=1e-5,
                              atol=1e-12)
  fisher = weight_importance(m, v, forget, 16, "fisher")
  by_hand = tree_map(lambda *g: sum(gi ** 2 for gi in g) / 37,
                     *[_ce_grad(m, v, forget[0][i:i + 1], forget[1][i:i + 1]) for i in range(37)])
  chex.assert_trees_all_close(fisher, by_hand, rtol=1e-4, atol=1e-12)


def test_ssd_selection_matches_the_reference_loaders(setup):
  """D_f in one batch of 128 (a short one: 37), D = D_r then D_f unshuffled in batches of
  64 (138 = 64 + 64 + 10): the weights SSD dampens are the reference's."""
  m, v, forget, retain, ctx = setup
  both = union_set(forget, retain, jax.random.PRNGKey(0), "ordered")
  np.testing.assert_array_equal(np.asarray(both[1]),
                                np.concatenate([np.asarray(retain[1]), np.asarray(forget[1])]))
  imp_f = _reference_importance(m, v, forget, 128)
  reference_d = tuple(jnp.concatenate([r, f]) for r, f in zip(retain, forget))
  imp_d = _reference_importance(m, v, reference_d, 64)
  expected = _np_dampen(v["params"], imp_f, imp_d, alpha=1.0, lam=1.0)
  out, aux = jax.jit(methods.make_method("ssd", ctx, alpha=1.0))(
      v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  # The same weights are selected; factors agree to float32 summation order.
  selected = lambda t: [np.asarray(a != b) for a, b in zip(jax.tree_util.tree_leaves(t),
                                                           jax.tree_util.tree_leaves(v["params"]))]
  for ours, ref in zip(selected(out["params"]), selected(expected)):
    np.testing.assert_array_equal(ours, ref)
  chex.assert_trees_all_close(out["params"], expected, rtol=1e-4, atol=1e-7)
  changed = sum(int(jnp.sum(a != b)) for a, b in zip(jax.tree_util.tree_leaves(expected),
                                                      jax.tree_util.tree_leaves(v["params"])))
  assert changed > 0 and int(aux["dampened_weights"]) == changed
  # Shuffling D is a documented option and selects differently.
  shuffled, _ = jax.jit(methods.make_method("ssd", ctx, alpha=1.0, union="shuffled"))(
      v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree_util.tree_leaves(shuffled),
                                                   jax.tree_util.tree_leaves(out)))


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_saliency_mask_with_ties_marks_exactly_floor_n_keep(keep):
  # 7 + 6 = 13 scores (odd N), most of them tied at exactly 0 like dead-unit gradients.
  scores = {"a": jnp.array([0.0, 3.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
            "b": jnp.array([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])}
  mask = top_fraction_mask(scores, keep)
  chex.assert_trees_all_equal(mask, _np_top_fraction_mask(scores, keep))
  flat = np.concatenate([np.asarray(mask["a"]).ravel(), np.asarray(mask["b"]).ravel()])
  k = int(13 * keep)
  assert flat.sum() == k
  values = np.concatenate([np.asarray(scores["a"]), np.asarray(scores["b"]).ravel()])
  order = np.argsort(-values, kind="stable")    # the reference's ranks, ties by position
  np.testing.assert_array_equal(np.flatnonzero(flat), np.sort(order[:k]))


def test_saliency_mask_uses_the_short_last_forget_batch(setup):
  m, v, forget, _, _ = setup
  mask = saliency_mask(m, v, forget, 16, 0.5)
  batches = _loader(forget, 16)
  grads = tree_map(lambda *g: jnp.abs(sum(g)), *[_ce_grad(m, v, xb, yb) for xb, yb in batches])
  chex.assert_trees_all_equal(mask, _np_top_fraction_mask(grads, 0.5))
  total = sum(x.size for x in jax.tree_util.tree_leaves(v["params"]))
  assert sum(int(x.sum()) for x in jax.tree_util.tree_leaves(mask)) == int(total * 0.5)


def test_salun_reference_schedule_keeps_masked_weights_and_draws_all_classes(setup):
  m, v, forget, retain, ctx = setup
  fn = methods.make_method("salun", ctx, schedule="reference", epochs=1, batch_size=16)
  out, aux = jax.jit(fn)(v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  mask = _np_top_fraction_mask(tree_map(lambda *g: jnp.abs(sum(g)), *[
      _ce_grad(m, v, xb, yb) for xb, yb in _loader(forget, 16)]), 0.5)
  for keep, new, old in zip(jax.tree_util.tree_leaves(mask),
                            jax.tree_util.tree_leaves(out["params"]),
                            jax.tree_util.tree_leaves(v["params"])):
    keep = np.asarray(keep)
    np.testing.assert_array_equal(np.asarray(new)[~keep], np.asarray(old)[~keep])
    assert np.any(np.asarray(new)[keep] != np.asarray(old)[keep])
  paired, _ = jax.jit(methods.make_method("salun", ctx, epochs=1, batch_size=16))(
      v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree_util.tree_leaves(paired),
                                                   jax.tree_util.tree_leaves(out)))
  with pytest.raises(methods.HyperparameterError, match="schedule"):
    methods.make_method("salun", ctx, schedule="interleaved")


# ----------------------------------------------------------------------------- one fixed batch
# Each reference loss written out in NumPy from the reference code's formula (float64), and
# compared with the library's loss on one fixed batch. The differences that remain are in
# BUILD_NOTES' parity table.
def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_scrub_kl_is_the_reference_distill_kl(setup):
  """SCRUB's DistillKL: kl_div(log_softmax(s/T), softmax(t/T), sum)·T²/batch."""
  m, v, forget, _, _ = setup
  x = forget[0][:16]
  t = np.asarray(m.apply(v, x)) * 1.3
  s = np.asarray(m.apply(v, x))
  tau = 4.0
  p_t = np.exp(_np_log_softmax(t / tau))
  ref = np.sum(p_t * (np.log(p_t) - _np_log_softmax(s / tau))) * tau ** 2 / x.shape[0]
  np.testing.assert_allclose(float(losses.kl_divergence(jnp.asarray(t), jnp.asarray(s), tau)),
                             ref, rtol=1e-5)


def test_bad_teacher_loss_is_the_reference_loss_times_num_classes(setup):
  """Bad teacher's UnlearnerLoss: kl_div(log_softmax(s/T), l·softmax(T_i/T) +
  (1−l)·softmax(T_c/T)) with reduction 'mean' (÷ batch·C). Ours is the batch mean of the
  per-example KL: C times the reference's value, the same Adam update up to Adam's ε."""
  from unlearn_jax.methods.distillation import _teacher_mix_loss
  m, v, forget, retain, _ = setup
  incompetent = models.init_variables(m, jax.random.PRNGKey(7), (8, 8, 1))
  x = jnp.concatenate([forget[0][:8], retain[0][:8]])
  is_forget = jnp.concatenate([jnp.ones(8), jnp.zeros(8)])
  student = jax.tree_util.tree_map(lambda a: a * 0.9, v)
  from unlearn_jax.steps import StepState
  state = StepState(None, const={"competent": v, "incompetent": incompetent})
  ours = float(_teacher_mix_loss(m, 1.0)(state, student, (x, is_forget),
                                         jax.random.PRNGKey(0))[0])
  l = np.asarray(is_forget)[:, None]
  target = (l * np.exp(_np_log_softmax(m.apply(incompetent, x))) +
            (1 - l) * np.exp(_np_log_softmax(m.apply(v, x))))
  ref = np.mean(target * (np.log(target) - _np_log_softmax(m.apply(student, x))))
  np.testing.assert_allclose(ours, ref * 10, rtol=1e-5)


def test_l1_sparse_step_is_ce_plus_the_reference_l1_norm(setup):
  """ℓ1-sparse's first step: θ − η·(∇CE + α·sign θ), the ℓ1 norm over every parameter
  (the reference's l1_regularization); one full batch, no momentum, α_0 = α, η_0 = η."""
  m, v, _, retain, ctx = setup
  x, y = retain[0][:48], retain[1][:48]
  alpha, lr = 1e-3, 0.1
  fn = methods.make_method("l1_sparse", ctx, alpha=alpha, lr=lr, epochs=1, batch_size=48,
                           momentum=0.0)
  out, _ = jax.jit(fn)(v, methods.UnlearnData(None, (x, y)), jax.random.PRNGKey(0))
  g_ce = _ce_grad(m, v, x, y)
  expected = tree_map(lambda p, g: p - lr * (g + alpha * jnp.sign(p)), v["params"], g_ce)
  chex.assert_trees_all_close(out["params"], expected, rtol=1e-4, atol=1e-6)


def test_mia_efficacy_is_salun_svc_on_true_class_confidence(setup):
  """SalUn's SVC_MIA (confidence): SVC(C=3, rbf, γ='auto') on p_y, shadow members = the
  first |test| retain examples, non-members = test; efficacy = 1 − mean(pred on D_f)."""
  from sklearn.svm import SVC
  from unlearn_jax import metrics
  m, v, forget, retain, _ = setup
  test = (retain[0][60:], retain[1][60:])
  conf = lambda d: np.take_along_axis(np.exp(_np_log_softmax(m.apply(v, d[0]))),
                                      np.asarray(d[1])[:, None], 1)
  n = len(test[1])
  clf = SVC(C=3, kernel="rbf", gamma="auto").fit(
      np.concatenate([conf((retain[0][:n], retain[1][:n])), conf(test)]),
      np.concatenate([np.ones(n), np.zeros(n)]))
  ref = 1 - clf.predict(conf(forget)).mean()
  ours = metrics.mia_efficacy(m.apply(v, retain[0]), retain[1], m.apply(v, test[0]), test[1],
                              m.apply(v, forget[0]), forget[1])
  np.testing.assert_allclose(float(ours), ref, atol=1e-6)


@pytest.mark.parametrize("forget_fraction", [0.01, 0.1, 0.5])
def test_assd_threshold_passes_the_top_log_percent_of_relative_importance(forget_fraction):
  """α = percentile_p(I_f/I_D), p = 100 − ln(1 + 100·|D_f|/|D|): SSD's test I_f > α·I_D then
  passes ln(1 + 100·|D_f|/|D|) % of the weights (zero-importance ones left out of the
  ratios, as non-finite)."""
  key_f, key_d = jax.random.split(jax.random.PRNGKey(0))
  imp_f = {"a": jax.random.uniform(key_f, (400, 25)), "b": jnp.zeros((7,))}
  imp_d = {"a": jax.random.uniform(key_d, (400, 25)) + 0.1, "b": jnp.zeros((7,))}
  alpha = assd_alpha(imp_f, imp_d, forget_fraction)
  passed = float(jnp.mean(imp_f["a"] > alpha * imp_d["a"]))
  np.testing.assert_allclose(100 * passed, np.log1p(100 * forget_fraction), atol=0.02)
  params = {"a": jnp.ones((400, 25)), "b": jnp.ones((7,))}
  out = dampen(params, imp_f, imp_d, alpha, 1.0)
  chex.assert_trees_all_close(out, _np_dampen(params, imp_f, imp_d, float(alpha), 1.0),
                              rtol=1e-6)
  assert float(jnp.mean(out["a"] != 1.0)) == passed and bool(jnp.all(out["b"] == 1.0))


@pytest.mark.parametrize("importance_set", ["retain", "full"])
def test_assd_is_the_authors_rule(setup, importance_set):
  """error_unlearning.ipynb: I_f on D_f, I_D on D_r (SUPREME's variant: on D_r then D_f);
  α = np.nanpercentile of I_f/I_D over all weights with NaN and inf dropped, at
  p = 100 − ln(1 + 100·|D_f|/|D|); λ = 1 dampening. All in NumPy here."""
  m, v, forget, retain, ctx = setup
  imp_f = _reference_importance(m, v, forget, 128)
  reference = retain if importance_set == "retain" else tuple(
      jnp.concatenate([r, f]) for r, f in zip(retain, forget))
  imp_d = _reference_importance(m, v, reference, 64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratios = np.concatenate([(np.asarray(f, np.float64) / np.asarray(d, np.float64)).ravel()
                             for f, d in zip(jax.tree_util.tree_leaves(imp_f),
                                             jax.tree_util.tree_leaves(imp_d))])
  ratios = ratios[~np.isnan(ratios)]
  ratios = ratios[~np.isinf(ratios)]
  n_f, n_r = len(forget[1]), len(retain[1])
  alpha = np.nanpercentile(ratios, 100 - np.log(1 + 100 * n_f / (n_f + n_r)))
  expected = _np_dampen(v["params"], imp_f, imp_d, alpha, 1.0)
  out, aux = jax.jit(methods.make_method("assd", ctx, importance_set=importance_set))(
      v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(aux["alpha"]), alpha, rtol=1e-4)
  # Weights whose ratio sits on the threshold itself (within 1e-4 of α) may fall either
  # side of I_f > α·I_D in float32; every other weight is dampened exactly as the rule says.
  borderline, changed = 0, 0
  for got, want, old, f, d in zip(*(jax.tree_util.tree_leaves(t) for t in
                                    (out["params"], expected, v["params"], imp_f, imp_d))):
    with np.errstate(divide="ignore", invalid="ignore"):
      ratio = np.asarray(f, np.float64) / np.asarray(d, np.float64)
    near = np.abs(ratio / alpha - 1) < 1e-4
    borderline += int(near.sum())
    np.testing.assert_allclose(np.asarray(got)[~near], np.asarray(want)[~near], rtol=1e-4,
                               atol=1e-7)
    changed += int(np.sum(np.asarray(got) != np.asarray(old)))
  total = sum(a.size for a in jax.tree_util.tree_leaves(v["params"]))
  assert borderline <= 0.05 * total, borderline      # a tied group at α, at most
  want_changed = sum(int(np.sum(np.asarray(a) != np.asarray(b)))
                     for a, b in zip(jax.tree_util.tree_leaves(expected),
                                     jax.tree_util.tree_leaves(v["params"])))
  assert changed > 0 and int(aux["dampened_weights"]) == changed
  assert abs(changed - want_changed) <= borderline
