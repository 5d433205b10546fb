"""`resnet9`: the Easy Data Unlearning Bench's ResNet-9, layer by layer as its
`easydub/models.py` builds it, with its recipe's schedule, and every data method on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax import models, train


def _easydub_parameter_count(w0=64, w1=128, w2=256, w3=128, classes=10, channels=3):
  """The PyTorch model's parameters, counted from its layer list: bias-free convolutions
  (k·k·c_in·c_out), BatchNorm weight and bias per channel, a bias-free linear layer."""
  convs = [(3, channels, w0), (5, w0, w1), (3, w1, w1), (3, w1, w1), (3, w1, w2), (3, w2, w2),
           (3, w2, w2), (3, w2, w3)]
  return sum(k * k * i * o + 2 * o for k, i, o in convs) + w3 * classes


@pytest.mark.integration    # shapes of the full-width model and a narrow one's numbers
def test_resnet9_is_the_benchmarks_network():
  """The same parameter count as the benchmark's PyTorch model, at full and reduced width;
  the feature maps the layer list gives on 32×32 inputs (stride-2 5×5 conv to 16×16,
  max-pool to 8×8, the unpadded conv to 6×6); no bias in the head; logits = 0.2 × the
  global max-pool's features through the head."""
  for widths in ((64, 128, 256, 128), (16, 32, 64, 32)):
    model = models.get_model("resnet9:" + "-".join(map(str, widths)), 10)
    shapes = jax.eval_shape(lambda m=model: models.init_variables(m, jax.random.PRNGKey(0),
                                                                  (32, 32, 3)))
    count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"]))
    assert count == _easydub_parameter_count(*widths), (widths, count)
  assert set(shapes["params"]["head"]) == {"kernel"}
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  _, state = jax.eval_shape(lambda v, xx: model.apply(
      v, xx, capture_intermediates=True, mutable=["intermediates"]), shapes, x)
  shape = lambda name: state["intermediates"][name]["__call__"][0].shape
  assert shape("prep") == (2, 32, 32, 16) and shape("layer1") == (2, 16, 16, 32)
  assert shape("layer2") == (2, 16, 16, 64) and shape("layer3") == (2, 6, 6, 32)
  # The numbers on a narrow one: logits = head(0.2 × global max-pool).
  model = models.get_model("resnet9:4-4-4-4", 10)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (16, 16, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  adapter = uj.as_adapter(model)
  logits, feats, _ = adapter.features(variables, x)
  pooled = jnp.max(state["intermediates"]["layer3"]["__call__"][0], axis=(1, 2))
  np.testing.assert_allclose(feats, 0.2 * pooled, rtol=1e-6)
  np.testing.assert_allclose(logits, feats @ variables["params"]["head"]["kernel"], rtol=1e-5,
                             atol=1e-6)


def test_the_linear_one_cycle_is_pytorchs_with_linear_annealing():
  """`linear_onecycle`: 0 → lr at `peak_fraction` of the steps → 0, linear both ways (the
  benchmark's OneCycleLR, anneal_strategy="linear", div factors 1e6), checked at the ends,
  the peak and half-way down against the two lines."""
  total, lr, peak = 240, 0.4, 5 / 24
  schedule = train.make_schedule("linear_onecycle", lr, total, peak)
  p = round(peak * total)
  assert float(schedule(0)) == 0.0 and float(schedule(p)) == pytest.approx(lr)
  assert float(schedule(p // 2)) == pytest.approx(lr * (p // 2) / p, rel=1e-5)
  mid = p + (total - p) // 2
  assert float(schedule(mid)) == pytest.approx(lr * (1 - (mid - p) / (total - p)), rel=1e-5)
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match="peak_fraction"):
    train.make_schedule("linear_onecycle", lr, total, 1.0)
  with pytest.raises(ValueError, match="allowed: onecycle, linear_onecycle"):
    train.make_schedule("triangle", lr, total)


def test_plain_momentum_is_not_nesterovs():
  """`nesterov=False` gives PyTorch's SGD(momentum) update, v ← μv + g, w ← w − lr·v,
  computed here by hand over three steps of a quadratic."""
  cfg = train.TrainConfig(epochs=1, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                          schedule="constant")
  opt = train.make_optimizer(cfg, 3)
  w, state = jnp.asarray(1.0), None
  state = opt.init(w)
  w_ref, v = 1.0, 0.0
  for _ in range(3):
    g = 2 * w
    updates, state = opt.update(g, state, w)
    w = w + updates
    v = 0.9 * v + 2 * w_ref
    w_ref = w_ref - 0.1 * v
    assert float(w) == pytest.approx(w_ref, rel=1e-6)


WITH_DATA = [m for m in uj.list_methods() if uj.get_method(m).reads]


@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.integration) for m in WITH_DATA])
def test_every_data_method_runs_on_resnet9(name, digits, digits_split):
  """One epoch of each method that reads data, under jit(vmap) over 2 keys, on a narrow
  ResNet-9 on digits: its head has no bias, so the certified methods fit a head without
  one (the integration lane: a compilation per method)."""
  from tests.test_adapter_modes import _every_method_run
  ctx = uj.MethodContext(uj.get_model("resnet9:8-8-8-8", 10), 10, (8, 8, 1))
  out = _every_method_run(ctx, name, digits, digits_split)
  assert set(out["params"]["head"]) == {"kernel"}
