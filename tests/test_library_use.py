"""unlearn_jax as a library: a user's own models, trained by the user's own optax loop, then
every method through the public API under `jax.jit(jax.vmap(...))` over 4 keys: the method
contract (finite, same tree structure and dtypes, deterministic for a key).

Three user models, none of them the library's, and the library's ViT:
* `UserNet`: Conv, LayerNorm, Dropout, Flax's automatic layer names, no BatchNorm; its
  keyword is `deterministic`, and train mode draws from the `dropout` rng stream.
* `UserBNNet`: the same with BatchNorm (a mutable `batch_stats` collection).
* `UserNNX`: an NNX model entering through `flax.nnx.bridge.to_linen`, with a
  `features_fn` (the bridge hides its submodules from Linen's interception).
* `library_vit`: `vit:16-1-2` with dropout, through `ViT.unlearn_adapter` (every method
  that reads data).
The default suite runs every method on `UserNet`, a few on the ViT and one per code path on
the NNX bridge; `-m slow` runs the rest.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx import bridge

import unlearn_jax as uj
import method_data  # tests/method_data.py: select_data with targets for every method


class UserNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    x = nn.Conv(8, (3, 3))(x)                       # Conv_0
    x = nn.relu(nn.LayerNorm()(x))                  # LayerNorm_0
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(32)(x)                             # Dense_0
    x = nn.relu(nn.LayerNorm()(x))                  # LayerNorm_1: the last key, not the head
    x = nn.Dropout(0.2, deterministic=deterministic)(x)
    return nn.Dense(self.num_classes)(x)            # Dense_1: the head


class UserBNNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(self.num_classes)(x)


class UserNNX(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def features(self, x):
    return nnx.relu(self.hidden(x.reshape((x.shape[0], -1))))

  def __call__(self, x):
    return self.head(self.features(x))


def _nnx_features(adapter, variables, x, train, rngs):
  """The bridged module's `features` method (penultimate activations) and its logits."""
  feats = adapter.module.apply(variables, x, method=lambda m, xx: m.features(xx))
  logits = adapter.module.apply(variables, x)
  return logits, feats, {}


ADAPTERS = {
    "user_layernorm_dropout": lambda: uj.ModelAdapter(
        UserNet(), train_kwargs={"deterministic": False}, rng_streams=("dropout",),
        head=("Dense_1",)),
    "user_batchnorm": lambda: uj.ModelAdapter(
        UserBNNet(), train_kwargs={"train": True}, eval_kwargs={"train": False},
        mutable=("batch_stats",), head=("Dense_1",)),
    "nnx_bridge": lambda: uj.ModelAdapter(
        bridge.to_linen(UserNNX), head=("head",), features_fn=_nnx_features),
    # The library's ViT through its own adapter: attention, LayerNorm, a class token, a
    # dropout stream, no BatchNorm and no convolution.
    "library_vit": lambda: uj.as_adapter(uj.get_model("vit:16-1-2", 10, dropout=0.1)),
}


def _own_training(adapter, x, y, steps=60):
  """The user's own optax loop (no library training code): Adam on mean CE."""
  variables = adapter.init(jax.random.PRNGKey(0), x.shape[1:])
  tx = optax.adam(3e-3)
  opt = tx.init(variables["params"])

  @jax.jit
  def step(variables, opt, xb, yb, key):
    def loss(p):
      logits, updates = adapter.apply({**variables, "params": p}, xb, train=True, rng=key)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updates
    (l, updates), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    u, opt = tx.update(g, opt, variables["params"])
    return {**variables, **updates, "params": optax.apply_updates(variables["params"], u)}, opt

  rng = np.random.default_rng(0)
  for i in range(steps):
    idx = rng.integers(0, len(x), 64)
    variables, opt = step(variables, opt, x[idx], y[idx], jax.random.PRNGKey(i))
  return variables


def _quick(method):
  """The method's defaults shortened (one epoch, two steps or cycles, small batches)."""
  def small(k, v):
    if isinstance(v, bool) or not isinstance(v, int):
      return v
    if "epochs" in k:
      return min(v, 1)
    if k.endswith("steps") or k == "cycles":
      return min(v, 2)
    if k.endswith("per_class"):
      return min(v, 8)
    if k in ("synth_batch", "num_examples", "batch_size"):
      return min(v, 32)
    return v
  return {k: small(k, v) for k, v in method.defaults.items()}


@pytest.fixture(scope="module")
def trained(digits):
  x, y = np.asarray(digits.train_x[:600]), np.asarray(digits.train_y[:600])
  return {name: (make(), _own_training(make(), x, y)) for name, make in ADAPTERS.items()}


@pytest.fixture(scope="module")
def data(digits):
  x, y = jnp.asarray(digits.train_x[:600]), jnp.asarray(digits.train_y[:600])
  three = y == 3
  return (x[three][:40], y[three][:40]), (x[~three][:200], y[~three][:200])


def _runs_on(method, variables) -> bool:
  return not ("batch_norm" in method.requires and not uj.models.has_batch_norm(variables))


# The BatchNorm model runs one method of each code path that touches mutable collections
# (train-mode losses, ascent guard, masks, head surgery, features, distillation, noise,
# students from scratch, BatchNorm inversion); the other two models run every method.
BATCH_NORM_METHODS = ("finetune", "neggrad", "salun", "boundary_expand", "reinit", "ssd",
                      "activation_reset", "contrastive", "scrub", "unsir", "gkt",
                      "deepinversion")
# The ViT runs every method that reads data; the NNX model every method. A ViT method
# compiles in ~15 s on the 2-core CPU, so the default suite runs a few methods on the ViT
# and one method per code path on the NNX bridge; `-m slow` runs the rest.
CODE_PATHS = ("finetune", "neggrad_plus", "jit_lipschitz", "assd", "salun", "boundary_expand",
              "reinit", "influence", "activation_reset", "scrub", "contrastive", "unsir",
              "zs_minmax_noise", "gkt")
DEFAULT_SUITE = {"library_vit": ("finetune", "assd", "jit_lipschitz", "scrub", "reinit"),
                 "nnx_bridge": CODE_PATHS}


def _case(m, a):
  slow = a in DEFAULT_SUITE and m not in DEFAULT_SUITE[a]
  return pytest.param(m, a, marks=pytest.mark.slow) if slow else (m, a)


CASES = [_case(m, a) for m in uj.list_methods() for a in ADAPTERS
         if (a != "user_batchnorm" or m in BATCH_NORM_METHODS)
         and (a != "library_vit" or uj.get_method(m).reads)]


@pytest.mark.optimised
@pytest.mark.parametrize("name,model_kind", CASES)
def test_every_method_runs_on_a_users_model(name, model_kind, trained, data):
  adapter, variables = trained[model_kind]
  method = uj.get_method(name)
  if not _runs_on(method, variables):
    with pytest.raises(ValueError, match="BatchNorm"):
      jax.jit(method(uj.MethodContext(adapter, 10, (8, 8, 1), (3,)), **_quick(method)))(
          variables, uj.UnlearnData(), jax.random.PRNGKey(0))
    return
  ctx = uj.MethodContext(adapter, num_classes=10, input_shape=(8, 8, 1), forget_classes=(3,))
  unlearn = method(ctx, **_quick(method))
  batch = method_data.select(method, forget=data[0], retain=data[1], num_classes=10)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  run = jax.jit(jax.vmap(unlearn, in_axes=(None, None, 0)))
  out, aux = run(variables, batch, keys)
  chex.assert_trees_all_equal(out, run(variables, batch, keys)[0])     # deterministic
  chex.assert_tree_all_finite(out)
  # The model's variables come back in their own structure; a method may add only its own
  # state collection (adapter.METHOD_COLLECTIONS: certified_head's head state).
  assert set(out) - set(variables) <= set(uj.adapter.METHOD_COLLECTIONS), sorted(out)
  first = uj.adapter.model_variables(jax.tree_util.tree_map(lambda a: a[0], out))
  chex.assert_trees_all_equal_structs(first, variables)
  chex.assert_trees_all_equal_shapes_and_dtypes(first, variables)
  assert isinstance(aux, dict)


def test_features_are_the_head_input_not_a_guess(trained):
  adapter, variables = trained["user_layernorm_dropout"]
  x = jnp.ones((3, 8, 8, 1))
  logits, feats, _ = adapter.features(variables, x)
  head = adapter.head_params(variables["params"])
  chex.assert_trees_all_close(feats @ head["kernel"] + head["bias"], logits, atol=1e-4)
  # The layers come from the call order: LayerNorm_1 goes with Dense_0, the head is last.
  assert adapter.layers(variables, (8, 8, 1))[-2:] == [(("Dense_0",), ("LayerNorm_1",)),
                                                       (("Dense_1",),)]


def test_reinit_resets_the_head_it_is_told_of(trained, data):
  """k = 1 replaces exactly the adapter's head (Dense_1) by a fresh draw; every other
  layer, LayerNorm_1 (the last key in params) included, keeps its trained weights. A
  learning rate of 1e-9 leaves the fine-tuning phase nothing measurable to move."""
  adapter, variables = trained["user_layernorm_dropout"]
  ctx = uj.MethodContext(adapter, 10, (8, 8, 1))
  key = jax.random.PRNGKey(0)
  fresh = adapter.init(jax.random.split(key)[0], (8, 8, 1))     # reinit's own init key
  out, _ = uj.reinit(ctx, epochs=1, lr=1e-9)(variables, uj.UnlearnData(retain=data[1]), key)
  assert not np.allclose(fresh["params"]["Dense_1"]["kernel"],
                         variables["params"]["Dense_1"]["kernel"], atol=1e-3)
  chex.assert_trees_all_close(out["params"]["Dense_1"], fresh["params"]["Dense_1"], atol=1e-6)
  for name in ("Conv_0", "LayerNorm_0", "Dense_0", "LayerNorm_1"):
    chex.assert_trees_all_close(out["params"][name], variables["params"][name], atol=1e-6)


def _user_adapter(**kwargs):
  base = dict(train_kwargs={"deterministic": False}, rng_streams=("dropout",), head=("Dense_1",))
  return uj.ModelAdapter(UserNet(), **{**base, **kwargs})


@pytest.mark.parametrize("make,match", [
    # A hidden layer named as the head: reinit, boundary_expand, activation_reset ran on it.
    (lambda: _user_adapter(head=("Dense_0",)),
     r"head=\('Dense_0',\) outputs 32 values; the logits have num_classes=10"),
    # A path that is not in params: reinit reset nothing.
    (lambda: _user_adapter(head=("Dense_9",)), r"is not a path in params: params has no 'Dense_9'"),
    (lambda: _user_adapter(head=("Dense_1", "kernel")), "allowed: a Dense-like module"),
    # A typo in mutable: the BatchNorm statistics were silently never updated.
    (lambda: uj.ModelAdapter(UserBNNet(), train_kwargs={"train": True},
                             eval_kwargs={"train": False}, mutable=("batch_stat",),
                             head=("Dense_1",)),
     r"mutable=\('batch_stat',\): 'batch_stat' is not a collection of UserBNNet; "
     r"allowed: its collections besides params \['batch_stats'\]"),
])
def test_the_adapter_is_checked_against_the_model_when_the_context_is_built(make, match):
  with pytest.raises(ValueError, match=match):
    uj.MethodContext(make(), 10, (8, 8, 1))


def test_labels_are_checked_before_jit_from_the_context(trained, data):
  """Under jit labels are tracers: select_data is where 12 and -1 are caught, with the
  class count from the context; without a class count it refuses."""
  adapter, _ = trained["user_layernorm_dropout"]
  ctx = uj.MethodContext(adapter, 10, (8, 8, 1))
  (xf, yf), retain = data                         # yf is all 3s
  for bad in (yf + 9, yf - 4):                    # 12 and -1
    with pytest.raises(ValueError, match=r"forget labels lie in .*allowed: \[0, 10\)"):
      uj.select_data(uj.ssd, (xf, bad), retain, ctx=ctx)
  with pytest.raises(ValueError, match="pass num_classes= or ctx="):
    uj.select_data(uj.ssd, (xf, yf), retain)
  assert uj.select_data(uj.ssd, (xf, yf), retain, ctx=ctx).forget[1] is yf


def test_frozen_variables_are_accepted(trained, data):
  import flax
  adapter, variables = trained["user_layernorm_dropout"]
  ctx = uj.MethodContext(adapter, 10, (8, 8, 1))
  batch = uj.select_data(uj.finetune, retain=data[1], ctx=ctx)
  run = uj.finetune(ctx, epochs=1)
  frozen, _ = run(flax.core.freeze(variables), batch, jax.random.PRNGKey(0))
  plain, _ = run(variables, batch, jax.random.PRNGKey(0))
  chex.assert_trees_all_close(frozen, plain)


def test_a_static_argument_passed_traced_says_it_must_be_static():
  eps = jnp.zeros(5)
  with pytest.raises(ValueError, match="num_models must be static"):
    jax.jit(uj.forgetting_quality)(eps, 64)
  with pytest.raises(ValueError, match="num_models=1.5 must be an integer >= 2"):
    uj.forgetting_quality(eps, 1.5)
  assert float(jax.jit(uj.forgetting_quality, static_argnums=1)(eps, 64)) == 1.0


def test_a_method_needing_what_the_adapter_lacks_says_what_to_provide():
  plain = uj.MethodContext(UserNet(), 10, (8, 8, 1))   # plain module: no head, no rng
  for name in ("boundary_expand", "reinit", "prune_last_layer", "activation_reset",
               "contrastive", "bad_teacher_similar"):
    with pytest.raises(ValueError, match="head="):
      uj.get_method(name)(plain)


def test_dropout_without_a_key_names_the_stream():
  adapter = ADAPTERS["user_layernorm_dropout"]()
  v = adapter.init(jax.random.PRNGKey(0), (8, 8, 1))
  with pytest.raises(ValueError, match="dropout"):
    adapter.apply(v, jnp.ones((2, 8, 8, 1)), train=True)


def test_help_on_a_method_shows_its_rule_paper_defaults_and_data():
  doc = uj.ssd.__doc__
  assert "Selective Synaptic Dampening" in doc and "Reads:" in doc and "Defaults:" in doc
  assert uj.ssd.paper and uj.ssd.reads == ("forget", "retain")
  assert set(uj.__all__) >= {"finetune", "ssd", "accuracy", "per_example_epsilons",
                             "ModelAdapter", "MethodContext", "fit", "load_dataset",
                             "make_split"}


@pytest.mark.parametrize("make_call,match", [
    (lambda ctx, f, r: uj.finetune(ctx, epochs=2.5), "epochs=2.5 must be a whole number"),
    (lambda ctx, f, r: uj.finetune(ctx, lr=-1.0),
     r"finetune: lr=-1.0 lies outside finetune.s bounds for lr: \(0, inf\)"),
    (lambda ctx, f, r: uj.random_label(ctx, variant="mixed"), "allowed: interleaved"),
    (lambda ctx, f, r: uj.finetune(ctx, alpha=1.0), "not a hyperparameter of finetune"),
    (lambda ctx, f, r: uj.ssd(ctx)(f[2], uj.UnlearnData((f[0], f[1][:-1]), r), f[3]),
     "same n"),
    (lambda ctx, f, r: uj.ssd(ctx)(f[2], uj.UnlearnData((f[0][:0], f[1][:0]), r), f[3]),
     "is empty"),
    (lambda ctx, f, r: uj.select_data(uj.ssd, (f[0], f[1] + 20), r, num_classes=10),
     r"allowed: \[0, 10\)"),
    (lambda ctx, f, r: uj.ssd(uj.MethodContext(ctx.model, 7, (8, 8, 1)))(
        f[2], uj.UnlearnData((f[0], f[1] % 7), (r[0], r[1] % 7)), f[3]), "num_classes=7"),
    (lambda ctx, f, r: uj.MethodContext(ctx.model, 10, (8, 8, 1), (12,)), "forget_classes"),
])
def test_bad_arguments_are_value_errors_naming_them(make_call, match, trained, data):
  adapter, variables = trained["user_layernorm_dropout"]
  ctx = uj.MethodContext(adapter, 10, (8, 8, 1))
  forget = (*data[0], variables, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=match) as err:
    make_call(ctx, forget, data[1])
  assert "--" not in str(err.value)     # library messages name arguments, not CLI flags
