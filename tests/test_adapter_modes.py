"""The adapter checked in train mode when a MethodContext is built, and collective axis
names bound: a model shaped as Flax's ImageNet example's ResNet (its BatchNorm built with
`axis_name="batch"`) runs the methods with one adapter line, `axis_names=("batch",)`; an NNX
model shaped as the NNX MNIST tutorial's CNN (its mode switched by `.train()`/`.eval()`)
runs them through `uj.nnx_adapter`."""

import functools

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
import method_data  # tests/method_data.py: select_data with targets for every method


class ResNetBlock(nn.Module):
  """The Flax ImageNet example's block (google/flax examples/imagenet/models.py), small."""
  filters: int
  conv: type
  norm: type
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """The example's ResNet at two stages of one block, 8 filters: its BatchNorm averages
  over the axis "batch", as the example's `pmap` training binds it."""
  num_classes: int = 10
  axis_name: str | None = "batch"

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name=self.axis_name)
    x = nn.relu(norm(name="bn_init")(conv(8, (3, 3), name="conv_init")(x)))
    for i, filters in enumerate((8, 16)):
      x = ResNetBlock(filters, conv, norm, strides=(2, 2) if i else (1, 1))(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def adapter(model=None, **fields):
  fields = {"train_kwargs": {"train": True}, "eval_kwargs": {"train": False},
            "mutable": ("batch_stats",), "head": ("head",), "axis_names": ("batch",),
            **fields}
  return uj.ModelAdapter(model or ResNet(), **fields)


def test_an_unbound_axis_name_is_named_with_the_field_to_set():
  with pytest.raises(ValueError) as err:
    uj.MethodContext(adapter(axis_names=()), 10, (8, 8, 1))
  message = str(err.value)
  assert message.startswith("axis_names=(): ResNet reduces over the collective axis 'batch' "
                            "in train mode"), message
  assert "add it: axis_names=('batch',)" in message and "\n" not in message


# The integration lane, for the default lane's 5 minutes (CI runs both lanes).
@pytest.mark.integration
def test_bound_axis_gives_each_models_own_batch_statistics(digits):
  """Bound as a size-one axis, the BatchNorm's pmean is the identity: the train-mode call
  equals the same model built without an axis name, outputs and updated statistics."""
  x = jnp.asarray(digits.train_x[:16])
  bound, plain = adapter(), adapter(ResNet(axis_name=None), axis_names=())
  variables = plain.init(jax.random.PRNGKey(0), (8, 8, 1))
  np.testing.assert_allclose(*(a.apply(variables, x, train=True)[0] for a in (bound, plain)),
                             rtol=1e-6)
  stats = [a.apply(variables, x, train=True)[1]["batch_stats"] for a in (bound, plain)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), *stats)
  assert bound.init(jax.random.PRNGKey(0), (8, 8, 1))["params"]["head"]["kernel"].shape == (16, 10)


WITH_DATA = [m for m in uj.list_methods() if uj.get_method(m).reads]


@pytest.mark.parametrize("name", [
    pytest.param(m, marks=() if m == "finetune" else pytest.mark.integration)
    for m in WITH_DATA])
def test_every_data_method_runs_on_the_examples_resnet_under_jit_vmap(name, digits,
                                                                       digits_split):
  """One epoch of each method that reads data, 2 keys, on digits (finetune in the default
  lane, every one in the integration lane)."""
  out = _every_method_run(uj.MethodContext(adapter(), 10, (8, 8, 1)), name, digits,
                          digits_split)
  assert out["params"]["head"]["kernel"].shape == (2, 16, 10)


def _every_method_run(ctx, name, digits, digits_split):
  """Method `name` at one epoch on 32 forget and 128 retain digits, under jit(vmap) over 2
  keys: its variables, checked finite and reported finite (`nonfinite_weights`)."""
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  forget = (x[digits_split.forget][:32], y[digits_split.forget][:32])
  retain = (x[digits_split.retain][:128], y[digits_split.retain][:128])
  method = uj.get_method(name)
  data = method_data.select(method, forget=forget, retain=retain, ctx=ctx)
  variables = ctx.model.init(jax.random.PRNGKey(0), (8, 8, 1))
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  hp = {"epochs": 1} if "epochs" in method.defaults else {}
  out, aux = jax.jit(jax.vmap(lambda k: method(ctx, **hp)(variables, data, k)))(keys)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(out)), name
  assert int(jnp.max(aux["nonfinite_weights"])) == 0, name
  return out


class NNXCNN(nnx.Module):
  """The NNX MNIST tutorial's CNN (flax docs, "MNIST tutorial"), for 8×8 inputs: conv,
  BatchNorm, Dropout, average pooling twice, then two Linear layers; its mode is set by
  `.train()` / `.eval()`, not by an argument."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(8, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.025, rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(16, rngs=rngs)
    self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(2 * 2 * 16, 32, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025, rngs=rngs)
    self.linear2 = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x)))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.dropout2(self.conv2(x)))))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dropout2(self.linear1(x)))
    return self.linear2(x)


def nnx_cnn():
  return uj.nnx_adapter(NNXCNN, head="linear2", rng_streams=("dropout",),
                        mutable=("batch_stats",))


def test_the_nnx_adapter_switches_the_mode_and_captures_the_features(digits):
  """Eval mode is deterministic and reads the running statistics; train mode uses the
  batch's statistics, updates them, and draws dropout from the key; the features are the
  head's input: head(features) gives the logits."""
  ad = nnx_cnn()
  x = jnp.asarray(digits.train_x[:16])
  variables = ad.init(jax.random.PRNGKey(0), (8, 8, 1))
  assert set(variables) == {"params", "batch_stats"}
  e1, e2 = ad.logits(variables, x), ad.logits(variables, x)
  np.testing.assert_array_equal(e1, e2)
  t1, updates = ad.apply(variables, x, train=True, rng=jax.random.PRNGKey(1))
  t2, _ = ad.apply(variables, x, train=True, rng=jax.random.PRNGKey(2))
  assert not np.allclose(t1, t2), "train mode does not draw dropout from the key"
  assert not np.allclose(t1, e1), "train mode gives eval mode's logits"
  assert not np.allclose(updates["batch_stats"]["batch_norm1"]["mean"],
                         variables["batch_stats"]["batch_norm1"]["mean"])
  logits, feats, _ = ad.features(variables, x)
  head = ad.head_params(variables["params"])
  np.testing.assert_allclose(feats @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(logits, e1)


@pytest.mark.integration   # the default lane runs the mode test above
@pytest.mark.parametrize("name", WITH_DATA)
def test_every_data_method_runs_on_the_nnx_tutorials_cnn_under_jit_vmap(name, digits,
                                                                       digits_split):
  """As the ResNet test above, on the NNX CNN through `uj.nnx_adapter` and nothing else."""
  out = _every_method_run(uj.MethodContext(nnx_cnn(), 10, (8, 8, 1)), name, digits,
                          digits_split)
  assert out["params"]["linear2"]["kernel"].shape == (2, 32, 10)


class Dropout(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(10, name="head")(x)


@pytest.mark.parametrize("fields,needle", [
    (dict(mutable=()), "mutable=(): Dropout updates the collection 'batch_stats' in train "
     "mode; add it: mutable=('batch_stats',)"),
    (dict(rng_streams=()), "rng_streams=(): Dropout draws from the rng stream 'dropout' in "
     "train mode; add it: rng_streams=('dropout',)"),
    (dict(train_kwargs={"training": True}), "train_kwargs={'training': True}: Dropout takes "
     "no argument 'training'; give the keyword arguments that switch its train mode"),
])
def test_train_mode_is_checked_when_the_context_is_built(fields, needle):
  fields = {"train_kwargs": {"train": True}, "eval_kwargs": {"train": False},
            "rng_streams": ("dropout",), "mutable": ("batch_stats",), "head": ("head",),
            **fields}
  with pytest.raises(ValueError) as err:
    uj.MethodContext(uj.ModelAdapter(Dropout(), **fields), 10, (8, 8, 1))
  assert str(err.value).startswith(needle) and "\n" not in str(err.value), str(err.value)
  fixed = {**fields, "mutable": ("batch_stats",), "rng_streams": ("dropout",),
           "train_kwargs": {"train": True}}
  uj.MethodContext(uj.ModelAdapter(Dropout(), **fixed), 10, (8, 8, 1))   # and then it runs
