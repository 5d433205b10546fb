"""Models: shapes, adapters (features, head, layers), the patches convolution, registry errors."""

import chex
import jax
import jax.numpy as jnp
import pytest

import unlearn_jax as uj
from unlearn_jax import models



# ResNet-18 and the 32x32 ViT: the integration lane, for the default lane's 5 minutes
@pytest.mark.parametrize("name,shape", [
    ("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)), ("cnn", (32, 32, 3)),
    pytest.param("resnet18", (8, 8, 1), marks=pytest.mark.integration),
    ("vit:16-1-2", (8, 8, 1)),
    pytest.param("vit:16-1-2", (32, 32, 3), marks=pytest.mark.integration)])
def test_models_give_logits_and_features(name, shape):
  m = models.get_model(name, 7)
  adapter = uj.as_adapter(m)
  v = models.init_variables(m, jax.random.PRNGKey(0), shape)
  x = jnp.ones((4,) + shape)
  logits = m.apply(v, x, train=False)
  assert logits.shape == (4, 7)
  logits2, feats, updates = adapter.features(v, x)
  assert feats.shape[0] == 4 and feats.ndim == 2 and updates == {}
  assert jnp.allclose(logits, logits2)
  # The features are the head's input: the head applied to them gives the logits.
  head = adapter.head_params(v["params"])
  chex.assert_trees_all_close(feats @ head["kernel"] + head["bias"], logits, atol=1e-4)
  assert models.has_batch_norm(v) == (name.partition(":")[0] in ("cnn", "resnet18"))
  assert adapter.layers(v, shape)[-1] == (("head",),)


def test_cnn_layers_pair_each_conv_with_its_batch_norm():
  m = models.get_model("cnn", 10, widths=(8, 16), dense=32)
  v = models.init_variables(m, jax.random.PRNGKey(0), (8, 8, 1))
  assert uj.as_adapter(m).layers(v, (8, 8, 1)) == [
      (("conv0",), ("bn0",)), (("conv1",), ("bn1",)), (("fc",),), (("head",),)]


@pytest.mark.parametrize("shape,strides,padding", [((2, 9, 9, 3), 1, "SAME"),
                                                    ((2, 9, 9, 3), 2, "SAME"),
                                                    ((2, 8, 8, 4), 1, "VALID")])
def test_patches_convolution_matches_xla_in_value_and_gradient(shape, strides, padding):
  """Same parameters, same outputs and gradients: checkpoints are interchangeable."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  xla = models.Conv(5, (3, 3), strides, impl="xla", padding=padding)
  patches = models.Conv(5, (3, 3), strides, impl="patches", padding=padding)
  v = xla.init(jax.random.PRNGKey(1), x)
  chex.assert_trees_all_equal(v, patches.init(jax.random.PRNGKey(1), x))
  loss = lambda mod: lambda p, xx: jnp.sum(jnp.sin(mod.apply(p, xx)))
  chex.assert_trees_all_close(xla.apply(v, x), patches.apply(v, x), atol=1e-4)
  chex.assert_trees_all_close(jax.grad(loss(xla), argnums=(0, 1))(v, x),
                              jax.grad(loss(patches), argnums=(0, 1))(v, x), atol=1e-4)


@pytest.mark.parametrize("size,kernel,strides,padding", [
    (9, 3, 1, "SAME"), (16, 3, 2, "SAME"), (15, 3, 2, "SAME"), (16, 1, 2, "VALID"),
    (9, 3, 1, "VALID"), (10, 3, 2, ((1, 2), (0, 1))), (8, 5, 3, "SAME")])
def test_canonical_convolution_has_autodiffs_value_and_gradients(size, kernel, strides,
                                                                 padding):
  """`canonical_conv_general_dilated`'s hand-written gradient against `jax.vjp` of
  `lax.conv_general_dilated` (autodiff's): strides, odd sizes, explicit and negative-
  remainder paddings, a 1×1 projection; a wrong padding or flip would shift them."""
  from jax import lax
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 3, 4))
  want, want_vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(
      a, b, (strides, strides), padding, dimension_numbers=dn), x, w)
  got, got_vjp = jax.vjp(lambda a, b: models.canonical_conv_general_dilated(
      a, b, (strides, strides), padding, dimension_numbers=dn), x, w)
  g = jax.random.normal(jax.random.PRNGKey(2), want.shape)
  chex.assert_trees_all_close(got, want, atol=1e-5)
  chex.assert_trees_all_close(got_vjp(g), want_vjp(g), atol=1e-4)


def test_canonical_convolution_is_what_the_library_conv_runs_on_the_cpu():
  """`Conv(impl="canonical")` (and `auto` on the CPU) traces the custom gradient through
  flax's dimension numbers, not the autodiff fallback; a dilated kernel falls back."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  for conv, custom in ((models.Conv(4, (3, 3), impl="canonical"), True),
                       (models.Conv(4, (3, 3), impl="canonical", kernel_dilation=2), False),
                       (models.Conv(4, (3, 3), impl="xla"), False)):
    v = conv.init(jax.random.PRNGKey(1), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(conv.apply(p, x))))(v))
    assert ("custom_vjp" in jaxpr) == custom, conv
  if jax.default_backend() == "cpu":
    assert models.conv_impl("auto") is models.cpu_conv_general_dilated


def test_cpu_default_is_canonical_from_4x4_and_patches_below(monkeypatch):
  """`cpu_conv_general_dilated` (`auto` on the CPU) picks per layer from the input's
  spatial size: the canonical form at ≥ 4 pixels a side, patches under."""
  from unlearn_jax.models import conv as conv_module
  calls = []
  for name in ("canonical_conv_general_dilated", "patches_conv_general_dilated"):
    real = getattr(conv_module, name)
    monkeypatch.setattr(conv_module, name, lambda *a, real=real, name=name, **k: (
        calls.append((a[0].shape[1], name)), real(*a, **k))[1])
  m = models.get_model("cnn", 10, widths=(4, 8, 8), dense=16, conv="auto")
  if jax.default_backend() != "cpu":
    pytest.skip("auto is XLA's convolution off the CPU")
  models.init_variables(m, jax.random.PRNGKey(0), (8, 8, 1))   # inputs 8, 4, 2 a side
  assert calls == [(8, "canonical_conv_general_dilated"), (4, "canonical_conv_general_dilated"),
                   (2, "patches_conv_general_dilated")], calls


@pytest.mark.optimised
def test_canonical_gradient_stays_canonical_inside_a_scan():
  """The point of `canonical`: inside a `lax.scan` every convolution XLA:CPU compiles
  (forward and both gradients) is NHWC/HWIO (`b01f_01io->b01f`), the form it runs fast;
  autodiff's own gradient there compiles to transposed forms (jax-ml/jax#12868)."""
  import re
  import flax.linen as nn
  # Two layers: the second one's input gradient is live (the first one's is dead code).
  conv = nn.Sequential([models.Conv(8, (3, 3), impl="canonical"),
                        models.Conv(8, (3, 3), impl="canonical")])
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  v = conv.init(jax.random.PRNGKey(1), x)
  grad = jax.grad(lambda p: jnp.sum(jnp.sin(conv.apply(p, x))))

  def steps(p):
    return jax.lax.scan(lambda c, _: (jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, c,
                                                             grad(c)), None), p, None,
                        length=3)[0]
  hlo = jax.jit(steps).lower(v).compile().as_text()
  labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
  assert len(labels) == 5, labels   # 2 forward, 2 kernel gradients, 1 input gradient
  assert set(labels) == {"b01f_01io->b01f"}, labels


@pytest.mark.parametrize("other", ["patches", "canonical"])
def test_library_cnn_is_the_same_model_with_either_convolution(other):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  a = models.get_model("cnn", 10, widths=(8, 16), dense=32, conv="xla")
  b = models.get_model("cnn", 10, widths=(8, 16), dense=32, conv=other)
  v = models.init_variables(a, jax.random.PRNGKey(1), (8, 8, 1))
  chex.assert_trees_all_equal(v, models.init_variables(b, jax.random.PRNGKey(1), (8, 8, 1)))
  out_a, upd_a = uj.as_adapter(a).apply(v, x, train=True)
  out_b, upd_b = uj.as_adapter(b).apply(v, x, train=True)
  chex.assert_trees_all_close((out_a, upd_a), (out_b, upd_b), atol=1e-4)
  loss = lambda m: lambda p: jnp.sum(uj.as_adapter(m).apply(p, x, train=True)[0] ** 2)
  chex.assert_trees_all_close(jax.grad(loss(a))(v), jax.grad(loss(b))(v), atol=1e-4)


def test_model_specs_set_layer_widths():
  assert models.parse_model_spec("cnn") == ("cnn", {})
  cnn = models.get_model("cnn:16-32-64", 10)
  assert cnn.widths == (16, 32, 64)
  v = models.init_variables(cnn, jax.random.PRNGKey(0), (32, 32, 3))
  assert v["params"]["conv2"]["kernel"].shape == (3, 3, 32, 64)
  assert models.get_model("mlp:32", 10).hidden == (32,)
  for bad in ("cnn:", "cnn:16-x", "cnn:0-8"):
    with pytest.raises(ValueError, match="positive layer widths"):
      models.parse_model_spec(bad)


def test_unknown_model_and_conv_names_the_allowed_ones():
  with pytest.raises(ValueError, match="allowed: mlp, cnn, resnet18, resnet9, airbench94, vit"):
    models.get_model("swin", 10)
  with pytest.raises(ValueError, match="allowed: auto, xla, patches, canonical"):
    models.conv_impl("cudnn")


def test_vit_patches_tokens_and_dropout_stream():
  """Patch 4 on 32×32 (64 tokens + class token), 2 on 8×8; LayerNorm, no BatchNorm; with
  dropout, train mode draws from the `dropout` stream and is deterministic for a key."""
  vit = models.get_model("vit:16-1-2", 10)
  assert (vit.dim, vit.depth, vit.heads) == (16, 1, 2)
  v = models.init_variables(vit, jax.random.PRNGKey(0), (32, 32, 3))
  assert v["params"]["pos_embedding"].shape == (1, 65, 16)
  assert v["params"]["embed"]["kernel"].shape == (4 * 4 * 3, 16)
  assert set(v) == {"params"}
  small = models.init_variables(vit, jax.random.PRNGKey(0), (8, 8, 1))
  assert small["params"]["pos_embedding"].shape == (1, 17, 16)
  drop = models.get_model("vit:16-1-2", 10, dropout=0.3)
  adapter = uj.as_adapter(drop)
  assert adapter.rng_streams == ("dropout",)
  x = jnp.ones((4, 8, 8, 1))
  a, _ = adapter.apply(small, x, train=True, rng=jax.random.PRNGKey(1))
  b, _ = adapter.apply(small, x, train=True, rng=jax.random.PRNGKey(1))
  c, _ = adapter.apply(small, x, train=True, rng=jax.random.PRNGKey(2))
  chex.assert_trees_all_equal(a, b)
  assert not jnp.allclose(a, c)
  with pytest.raises(ValueError, match="patch_size=3 must divide the image size 8x8"):
    models.get_model("vit:16-1-2", 10, patch_size=3).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="width-depth-heads"):
    models.parse_model_spec("vit:16-1-2-4")


def test_a_registered_model_is_one_the_cli_accepts():
  """`register_model` extends the one list the experiments validate `--model` against."""
  from experiments.pipeline import experiment, settings, usage
  from experiments.configs import default
  models.register_model("tiny_mlp", lambda num_classes: models.MLP(num_classes, hidden=(8,)))
  try:
    assert "tiny_mlp" in models.list_models()
    cfg = default.get_config()
    cfg.model, cfg.methods = "tiny_mlp", default.methods_config("finetune")
    settings.validate(cfg)
    st = experiment.setup(cfg, lambda s: None)
    assert st.model_name == "tiny_mlp"
    assert jax.tree_util.tree_leaves(uj.init_variables(st.model, jax.random.PRNGKey(0),
                                                       (8, 8, 1)))[0].shape[-1] in (8, 10)
    cfg.model = "not_registered"
    with pytest.raises(usage.UsageError,
                       match="allowed: mlp, cnn, resnet18, resnet9, airbench94, vit, tiny_mlp"):
      settings.validate(cfg)
  finally:
    models._REGISTRY.pop("tiny_mlp", None)


def test_the_seed_mode_default_names_no_model():
  """`driver.default_seed_mode` reads the variables, not a name: any model with a
  convolution kernel (a user's plain Flax conv net as much as the library's) loops over
  seeds on the CPU backend and vmaps elsewhere; models without convolutions (MLP, ViT,
  whose attention kernels are three-dimensional) vmap everywhere."""
  import flax.linen as nn
  from unlearn_jax import driver

  class UserConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      h = nn.relu(nn.Conv(4, (3, 3))(x))
      return nn.Dense(10)(h.reshape(h.shape[0], -1))

  shapes = lambda m: jax.eval_shape(lambda: models.init_variables(m, jax.random.PRNGKey(0),
                                                                  (8, 8, 1)))
  assert driver.default_seed_mode(shapes(UserConvNet()), "cpu") == "sequential"
  assert driver.default_seed_mode(shapes(UserConvNet()), "gpu") == "vmap"
  for name in ("cnn:4-8", "resnet18:4-4-4-4"):
    assert driver.default_seed_mode(shapes(models.get_model(name, 10)), "cpu") == "sequential"
  for name in ("mlp", "vit:16-1-2"):
    assert driver.default_seed_mode(shapes(models.get_model(name, 10)), "cpu") == "vmap"
