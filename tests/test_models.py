"""Models: shapes, adapters (features, head, layers), the patches convolution, registry errors."""

import chex
import jax
import jax.numpy as jnp
import pytest

import unlearn_jax as uj
from unlearn_jax import models



@pytest.mark.parametrize("name,shape", [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)),
                                        ("cnn", (32, 32, 3)), ("resnet18", (8, 8, 1)),
                                        ("vit:16-1-2", (8, 8, 1)), ("vit:16-1-2", (32, 32, 3))])
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


def test_library_cnn_is_the_same_model_with_either_convolution():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  a = models.get_model("cnn", 10, widths=(8, 16), dense=32, conv="xla")
  b = models.get_model("cnn", 10, widths=(8, 16), dense=32, conv="patches")
  v = models.init_variables(a, jax.random.PRNGKey(1), (8, 8, 1))
  chex.assert_trees_all_equal(v, models.init_variables(b, jax.random.PRNGKey(1), (8, 8, 1)))
  out_a, upd_a = uj.as_adapter(a).apply(v, x, train=True)
  out_b, upd_b = uj.as_adapter(b).apply(v, x, train=True)
  chex.assert_trees_all_close((out_a, upd_a), (out_b, upd_b), atol=1e-4)


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
  with pytest.raises(ValueError, match="allowed: mlp, cnn, resnet18, vit"):
    models.get_model("swin", 10)
  with pytest.raises(ValueError, match="allowed: auto, xla, patches"):
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
  from experiments import setup
  from experiments.configs import default
  models.register_model("tiny_mlp", lambda num_classes: models.MLP(num_classes, hidden=(8,)))
  try:
    assert "tiny_mlp" in models.list_models()
    cfg = default.get_config()
    cfg.model, cfg.methods = "tiny_mlp", "finetune"
    setup.validate(cfg)
    st = setup.setup(cfg, lambda s: None)
    assert st.model_name == "tiny_mlp"
    assert jax.tree_util.tree_leaves(uj.init_variables(st.model, jax.random.PRNGKey(0),
                                                       (8, 8, 1)))[0].shape[-1] in (8, 10)
    cfg.model = "not_registered"
    with pytest.raises(setup.UsageError, match="allowed: mlp, cnn, resnet18, vit, tiny_mlp"):
      setup.validate(cfg)
  finally:
    models._REGISTRY.pop("tiny_mlp", None)
