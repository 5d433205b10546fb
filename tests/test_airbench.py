"""`airbench94`: airbench's network (KellerJordan/cifar10-airbench `airbench94.py`) and the
parts of its recipe the training core gained for it, each against the airbench code's
arithmetic written out here in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unlearn_jax as uj
from unlearn_jax import models, train
from experiments.configs import recipes
import method_data  # tests/method_data.py: select_data with targets for every method


def _airbench_parameter_count(widths=(64, 256, 256), classes=10, channels=3, whiten=2):
  """Airbench's trainable parameters from its layer list: the whitening conv's bias (its
  kernel is frozen), per group two bias-free 3×3 convs and two BatchNorm biases (their
  weights are frozen), a bias-free linear head."""
  w_whiten = 2 * channels * whiten ** 2
  count, c_in = w_whiten, w_whiten
  for w in widths:
    count += 9 * c_in * w + 9 * w * w + 2 * w
    c_in = w
  return count + c_in * classes


@pytest.mark.integration   # a parity check against airbench's code: the default lane's time
def test_airbench94_is_airbenchs_network():
  """Trainable parameter count as airbench's layer list gives it (full and reduced width);
  the whitening kernel outside `params` (never trained); the dirac start (a group's first
  conv passes its input channels through); logits = head(features) with features = 1/9 ×
  the final max-pool."""
  for widths in ((64, 256, 256), (16, 32, 32)):
    model = models.get_model("airbench94:" + "-".join(map(str, widths)), 10)
    shapes = jax.eval_shape(lambda m=model: models.init_variables(m, jax.random.PRNGKey(0),
                                                                  (32, 32, 3)))
    count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"]))
    assert count == _airbench_parameter_count(widths), (widths, count)
    assert shapes["constants"]["whiten_kernel"].shape == (2, 2, 3, 24)
  assert set(shapes["params"]["head"]) == {"kernel"}
  assert set(shapes["params"]["group0_norm1"]) == {"bias"}        # no trained scale
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  kernel = np.asarray(variables["params"]["group1_conv1"]["kernel"])     # (3, 3, 16, 32)
  identity = np.zeros((3, 3, 16, 16), np.float32)
  identity[1, 1] = np.eye(16)
  np.testing.assert_array_equal(kernel[..., :16], identity)
  assert np.abs(kernel[..., 16:]).max() > 0
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  logits, feats, _ = uj.as_adapter(model).features(variables, x)
  np.testing.assert_allclose(logits, feats @ variables["params"]["head"]["kernel"],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.integration   # a parity check against airbench's code: the default lane's time
def test_the_whitening_kernel_whitens_the_patches():
  """After `data_init`, the whitening conv's first 2·2·3 outputs on the images it was fitted
  to have unit variance and no correlation (NumPy covariance), and the other half are
  their negatives; a population's variables get the same kernel for every member."""
  rng = np.random.default_rng(0)
  base = rng.normal(size=(40, 17, 17, 3)).astype(np.float32)
  mix = np.array([[1, 0.5, 0.2], [0, 1, 0.3], [0, 0, 1]], np.float32)
  images = (base[:, :16, :16] + base[:, 1:, 1:] + 0.5 * base[:, 1:, :16]) @ mix   # correlated
  model = models.get_model("airbench94:8-8-8", 10)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  population = jax.vmap(lambda k: models.init_variables(model, k, (16, 16, 3)))(keys)
  population = models.data_init(model, population, images)
  kernel = population["constants"]["whiten_kernel"]
  assert kernel.shape == (3, 2, 2, 3, 24)
  np.testing.assert_array_equal(kernel[0], kernel[2])
  out = np.asarray(jax.lax.conv_general_dilated(
      jnp.asarray(images), kernel[0], (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))).reshape(-1, 24)
  centred = out[:, :12]
  cov = centred.T @ centred / len(centred)
  np.testing.assert_allclose(cov, np.eye(12), atol=2e-3)
  np.testing.assert_allclose(out[:, 12:], -out[:, :12], rtol=1e-6, atol=1e-6)
  plain = models.get_model("mlp", 10)
  v = models.init_variables(plain, jax.random.PRNGKey(0), (16, 16, 3))
  assert models.data_init(plain, v, images) is v          # nothing to fit: unchanged


def test_the_triangle_is_airbenchs():
  """linear_onecycle with start 0.2, peak 0.23, end 0.07 is airbench's `triangle(steps,
  start=0.2, end=0.07, peak=0.23)` (piecewise linear through (0, 0.2), (⌊0.23·steps⌋, 1),
  (steps, 0.07)) times lr, at every step."""
  total, lr = 400, 1.5
  schedule = train.make_schedule("linear_onecycle", lr, total, 0.23, 0.2, 0.07)
  steps = np.arange(total + 1)
  reference = lr * np.interp(steps, [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
  np.testing.assert_allclose(np.asarray(jax.vmap(schedule)(steps)), reference, rtol=1e-5)


def _airbench_lookahead_reference(w0, grads_of, lr, total, spe, every=5, start_epoch=1,
                                  decay=0.95, decay_pow=3.0):
  """Airbench's training loop around its `LookaheadState`, in NumPy with plain SGD."""
  w, ema, t = np.array(w0, np.float64), None, 0
  for epoch in range(total // spe):
    for _ in range(spe):
      w = w - lr * grads_of(w)
      t += 1
      if epoch >= start_epoch and t % every == 0:
        if ema is None:
          ema = w.copy()
        else:
          rho = decay ** every * (t / total) ** decay_pow
          ema = ema + (1 - rho) * (w - ema)
          w = ema.copy()
    if ema is not None:
      w = ema.copy()
  return w


def test_lookahead_ema_is_airbenchs_loop():
  """`lookahead_ema` after SGD equals airbench's loop (first sync copies, later syncs move
  the slow copy by 1 − ρ_t and copy it back, epochs end on the slow copy) on a quadratic
  with a moving target over 40 steps, to float32 precision; and it changes the weights
  (the same run without it ends elsewhere)."""
  target = lambda w, t: w - np.cos(0.3 * t) * np.ones_like(w)
  w0 = np.array([2.0, -1.0, 0.5])
  total, spe, lr = 40, 8, 0.2
  counter = {"t": 0}

  def grads_of(w):
    g = target(w, counter["t"])
    counter["t"] += 1
    return g

  reference = _airbench_lookahead_reference(w0, grads_of, lr, total, spe)
  tx = optax.chain(optax.sgd(lr), train.lookahead_ema(5, 1 * spe, total, spe))
  plain = optax.sgd(lr)
  for opt, expect_equal in ((tx, True), (plain, False)):
    w = jnp.asarray(w0, jnp.float32)
    state = opt.init(w)
    for t in range(total):
      updates, state = opt.update(jnp.asarray(target(np.asarray(w), t), jnp.float32), state, w)
      w = optax.apply_updates(w, updates)
    if expect_equal:
      np.testing.assert_allclose(np.asarray(w), reference, rtol=1e-5, atol=1e-6)
    else:
      assert np.abs(np.asarray(w) - reference).max() > 1e-3


def test_batch_norm_biases_take_the_scaled_rate():
  """bias_lr_scale s: one SGD step (no momentum) moves a BatchNorm bias by −lr·s·(g + wd/s·b)
  (airbench's bias group: lr × 64, weight decay ÷ 64 of the lr) and a kernel by
  −lr·(g + wd·k); labels pick norm biases only (not a Dense bias)."""
  params = {"norm": {"bias": jnp.array([1.0, -2.0])},
            "dense": {"kernel": jnp.array([[0.5]]), "bias": jnp.array([0.25])}}
  assert train.batch_norm_bias_labels(params) == {
      "norm": {"bias": "bn_bias"}, "dense": {"kernel": "other", "bias": "other"}}
  cfg = train.TrainConfig(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.01,
                          schedule="constant", bias_lr_scale=64.0)
  tx = train.make_optimizer(cfg, 1)
  grads = jax.tree_util.tree_map(lambda a: jnp.full_like(a, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["norm"]["bias"],
                             -0.1 * 64 * (0.5 + 0.01 / 64 * np.array([1.0, -2.0])), rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * (0.5 + 0.01 * 0.5), rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["bias"], -0.1 * (0.5 + 0.01 * 0.25), rtol=1e-6)


def test_label_smoothing_is_pytorchs():
  """The step's loss with label_smoothing ε is PyTorch's CrossEntropyLoss(label_smoothing=ε):
  (1 − ε)·(−log p_y) + ε·mean_k(−log p_k), averaged over the batch (NumPy)."""
  import flax.linen as nn
  model = nn.Dense(4)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  y = jnp.array([0, 1, 2, 3, 0, 1])
  variables = model.init(jax.random.PRNGKey(1), x)
  tx = optax.sgd(0.1)
  step = train.make_supervised_step(model, tx, label_smoothing=0.2)
  _, metrics = step(train.init_train_state(variables, tx), (x, y), jax.random.PRNGKey(2))
  logits = np.asarray(model.apply(variables, x), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = np.mean(0.8 * -logp[np.arange(6), np.asarray(y)] + 0.2 * -logp.mean(-1))
  assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)


def test_translation_and_alternating_flips():
  """`translate_batch` is a reflect-padded crop then a flip (NumPy); under
  `translate_alternating_flip` the same step key gives mirror images in an even and an odd
  epoch (each example flips the other way), and the run's flips are about half."""
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 6, 6, 2))
  key = jax.random.PRNGKey(3)
  flips = jnp.array([True, False, True, False, False])
  out = np.asarray(train.translate_batch(x, key, flips))
  offsets = np.asarray(jax.random.randint(key, (5, 2), 0, 5))
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  for i in range(5):
    crop = padded[i, offsets[i, 0]:offsets[i, 0] + 6, offsets[i, 1]:offsets[i, 1] + 6]
    np.testing.assert_array_equal(out[i], crop[:, ::-1] if flips[i] else crop)
  batch = (x, jnp.zeros(5, jnp.int32), flips)
  even = train.augmented("translate_alternating_flip", batch, key, 3, 4)      # epoch 0
  odd = train.augmented("translate_alternating_flip", batch, key, 5, 4)       # epoch 1
  reflected = np.asarray(train.translate_batch(x, key, ~flips))
  np.testing.assert_array_equal(np.asarray(odd), reflected)
  assert not np.array_equal(np.asarray(even), np.asarray(odd))
  share = float(jnp.mean(train.run_flips(jax.random.PRNGKey(0), 10_000)))
  assert 0.47 < share < 0.53
  with pytest.raises(ValueError, match="allowed: crop_flip, translate_alternating_flip"):
    train.make_supervised_step(models.get_model("mlp", 10), optax.sgd(0.1), "mixup")


@pytest.mark.integration   # a real training run: a CPU minute
def test_airbench94_learns_digits_with_its_recipe(digits):
  """A narrow airbench94 on digits with airbench's recipe (label smoothing, lookahead EMA,
  BatchNorm biases at lr × 64, the triangle, whitening from the data; the 8×8 grey digits
  take no flips) at batch 128 (airbench's lr is per 1,024 examples: × 128/1,024) reaches
  90% test accuracy in 10 epochs; its untrained start is at chance level (≤ 25%), which
  doing nothing would keep."""
  cfg = recipes.train_config_for("airbench94", digits)
  cfg = train.TrainConfig(**{**cfg.__dict__, "batch_size": 128, "lr": cfg.lr * 128 / 1024})
  model = models.get_model("airbench94:16-32-32", digits.num_classes)
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  variables = models.init_variables(model, jax.random.PRNGKey(0), digits.input_shape)
  variables = models.data_init(model, variables, digits.train_x[:1000])
  accuracy = lambda v: float(jnp.mean(jnp.argmax(train.predict(model, v, jnp.asarray(
      digits.test_x)), -1) == jnp.asarray(digits.test_y)))
  assert accuracy(variables) <= 0.25
  trained, _ = jax.jit(lambda v: train.fit(model, cfg, v, x, y, jax.random.PRNGKey(1)))(
      variables)
  assert accuracy(trained) >= 0.9, accuracy(trained)


WITH_DATA = [m for m in uj.list_methods() if uj.get_method(m).reads]


@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.integration) for m in WITH_DATA])
def test_every_data_method_runs_on_airbench94(name, digits, digits_split):
  """One epoch of each method that reads data, under jit(vmap) over 2 keys, on a narrow
  airbench94 whitened from the data, on digits upsampled to 16×16 (on 8×8 maps its third
  group sees 1×1 maps where a channel can be constant over a batch, and BatchNorm's ε of
  1e-12 turns that into 1e6 gradients: airbench is built for 32×32): finite weights; the
  whitening kernel (a `constants` collection no method trains) comes back unchanged; the
  head has no bias."""
  up = lambda a: jnp.repeat(jnp.repeat(jnp.asarray(a), 2, 1), 2, 2)
  x, y = up(digits.train_x), jnp.asarray(digits.train_y)
  forget = (x[digits_split.forget][:32], y[digits_split.forget][:32])
  retain = (x[digits_split.retain][:128], y[digits_split.retain][:128])
  model = uj.get_model("airbench94:8-8-8", 10)
  ctx = uj.MethodContext(model, 10, (16, 16, 1))
  method = uj.get_method(name)
  data = method_data.select(method, forget=forget, retain=retain, ctx=ctx)
  start = models.data_init(model, ctx.model.init(jax.random.PRNGKey(0), (16, 16, 1)),
                           retain[0])
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  hp = {"epochs": 1} if "epochs" in method.defaults else {}
  out, aux = jax.jit(jax.vmap(lambda k: method(ctx, **hp)(start, data, k)))(keys)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(out)), name
  assert int(jnp.max(aux["nonfinite_weights"])) == 0, name
  assert set(out["params"]["head"]) == {"kernel"}
  np.testing.assert_array_equal(out["constants"]["whiten_kernel"][1],
                                start["constants"]["whiten_kernel"])


@pytest.mark.integration   # a parity check against airbench's code: the default lane's time
def test_test_time_augmentation_is_airbenchs():
  """`predict_tta`: level 1 is the mean of the image's and its mirror's logits, level 2 half
  that and half the mirror-averaged logits of the reflect-padded image shifted up-left and
  down-right (airbench's `infer_mirror_translate`), each computed here by hand; plain
  logits (no augmentation) differ from both."""
  model = models.get_model("airbench94:8-8-8", 10)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 3))
  variables = models.init_variables(model, jax.random.PRNGKey(1), (16, 16, 3))
  logits = lambda b: np.asarray(model.apply(variables, b, train=False))
  mirror = lambda b: 0.5 * logits(b) + 0.5 * logits(b[:, :, ::-1])
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  level2 = 0.5 * mirror(x) + 0.25 * (mirror(padded[:, :16, :16]) + mirror(padded[:, 2:, 2:]))
  np.testing.assert_allclose(train.predict_tta(model, variables, x, 0), logits(x), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(train.predict_tta(model, variables, x, 1), mirror(x), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(train.predict_tta(model, variables, x, 2), level2, rtol=1e-5,
                             atol=1e-6)
  assert np.abs(level2 - logits(x)).max() > 1e-4 and np.abs(mirror(x) - logits(x)).max() > 1e-4
  with pytest.raises(ValueError, match="level=3"):
    train.predict_tta(model, variables, x, 3)
