"""The model contract: how a method runs a Flax model that it did not write.

A method needs four things from a model, and gets them from a `ModelAdapter`, never by
guessing from parameter names or key order:

1. **How to apply it** in train and eval mode: the keyword arguments of each mode
   (`train_kwargs`, `eval_kwargs`: `{"train": True}`, `{"deterministic": False}`, or
   nothing) and the rng streams train mode draws from (`rng_streams`, e.g. `("dropout",)`;
   every train-mode call then needs a key).
2. **Which collections train mode updates** (`mutable`: `("batch_stats",)` for BatchNorm,
   or nothing). Every other collection in the variables is carried through unchanged.
3. **Where the classifier head is** (`head`: the path of a Dense-like module in `params`,
   e.g. `("head",)` or `("Dense_2",)`), for the methods that change the head
   (`boundary_expand`, `reinit`, `prune_last_layer`, `activation_reset`).
4. **Penultimate features** (for `contrastive` and `bad_teacher_similar`): by default the
   input of the head module, captured as the model runs; or a `features_fn` of your own.
5. **Collective axis names** its layers reduce over (`axis_names`): Flax's ImageNet
   example builds `nn.BatchNorm(axis_name="batch")`, whose train mode averages its
   statistics over the devices of a `pmap`. The adapter binds each name around every call
   as an axis of size one (a `jax.vmap` over a leading axis of one), so each model's
   statistics are those of its own batch, as on one device, inside the library's vmapped
   and sharded programs alike: `ModelAdapter(ResNet50(...), ..., axis_names=("batch",))`.

6. **NNX models** enter through `flax.nnx.bridge.to_linen`. One whose mode is switched by
   `.train()` / `.eval()` (the NNX MNIST tutorial's CNN, with `nnx.BatchNorm` and
   `nnx.Dropout`) is one line, `nnx_adapter(CNN, rngs_streams..., head="linear2")`:
   each call sets the mode on the module the bridge builds, and the features are the head's
   input, captured as the model runs (`nnx_adapter`).

`MethodContext` checks the adapter against the model in both modes before anything
compiles (`jax.eval_shape` of an init and of a train-mode call): a field that does not fit
the model is a `ValueError` naming it (`mutable`, `rng_streams`, `train_kwargs`,
`axis_names`) and what to set.

A method that needs something the adapter does not provide raises a `ValueError` saying
what to provide.

    import flax.linen as nn
    import unlearn_jax as uj

    class Net(nn.Module):                       # a user's model: no BatchNorm, Dropout
      @nn.compact
      def __call__(self, x, deterministic: bool = True):
        x = nn.relu(nn.LayerNorm()(nn.Dense(64)(x.reshape(x.shape[0], -1))))
        x = nn.Dropout(0.1, deterministic=deterministic)(x)
        return nn.Dense(10)(x)                  # automatic name: Dense_1

    adapter = uj.ModelAdapter(Net(), train_kwargs={"deterministic": False},
                              rng_streams=("dropout",), head=("Dense_1",))

The library's own models carry their adapter (`uj.as_adapter(uj.models.get_model("cnn", 10))`);
any other module given where an adapter is expected becomes `ModelAdapter(module)`: applied
as `module.apply(variables, x)` in both modes, nothing mutable, no head.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
from flax import traverse_util
import jax.numpy as jnp

Variables = Mapping[str, Any]   # {"params": ..., and any other collections}


def _as_name_tuple(value, what: str) -> tuple:
  if isinstance(value, str):
    value = (value,)
  value = tuple(value)
  if not all(isinstance(v, str) and v for v in value):
    raise ValueError(f"{what} must be a tuple of non-empty strings; got {value!r}")
  return value


@dataclasses.dataclass(frozen=True, eq=False)
class ModelAdapter:
  """How to run a Flax Linen module: modes, rng streams, mutable collections, head, features.

  Attributes:
    module: the `flax.linen.Module` (an NNX model enters through
      `flax.nnx.bridge.to_linen`).
    train_kwargs: keyword arguments of a train-mode call, e.g. `{"train": True}`.
    eval_kwargs: keyword arguments of an eval-mode call, e.g. `{"train": False}`.
    rng_streams: rng collections a train-mode call needs (e.g. `("dropout",)`).
    mutable: collections a train-mode call updates (e.g. `("batch_stats",)`); eval mode
      updates none.
    head: path in `params` of the classifier head, a Dense-like module with `kernel`
      [d, num_classes] and `bias` [num_classes]. None: methods that change the head refuse.
    features_fn: optional `features_fn(adapter, variables, x, train, rngs) ->
      (logits, features, updates)`; by default the features are the head's input.
    name: a label for messages.
    axis_names: collective axis names the module's layers use (e.g. `("batch",)` for
      `nn.BatchNorm(axis_name="batch")`); each is bound as a size-one axis around every
      call, so statistics are per model and per batch (module docstring).
  """
  module: nn.Module
  train_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  eval_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  rng_streams: tuple = ()
  mutable: tuple = ()
  head: tuple | None = None
  features_fn: Callable | None = None
  name: str = ""
  axis_names: tuple = ()

  def __post_init__(self):
    if not isinstance(self.module, nn.Module):
      raise ValueError(f"module must be a flax.linen.Module (an NNX model: wrap it with "
                       f"flax.nnx.bridge.to_linen); got {type(self.module).__name__}")
    for field in ("train_kwargs", "eval_kwargs"):
      if not isinstance(getattr(self, field), Mapping):
        raise ValueError(f"{field} must be a dict of keyword arguments; got "
                         f"{getattr(self, field)!r}")
    object.__setattr__(self, "rng_streams", _as_name_tuple(self.rng_streams, "rng_streams"))
    object.__setattr__(self, "mutable", _as_name_tuple(self.mutable, "mutable"))
    object.__setattr__(self, "axis_names", _as_name_tuple(self.axis_names, "axis_names"))
    if "params" in self.mutable:
      raise ValueError("mutable must not contain 'params': methods update params themselves")
    if self.head is not None:
      object.__setattr__(self, "head", _as_name_tuple(self.head, "head"))
    if not self.name:
      object.__setattr__(self, "name", type(self.module).__name__)

  # --------------------------------------------------------------------------- running
  def rngs(self, key: jax.Array | None) -> dict | None:
    """The train-mode rng dict drawn from `key` (None when the module needs none)."""
    if not self.rng_streams:
      return None
    if key is None:
      raise ValueError(f"{self.name} draws from the rng streams {self.rng_streams} in train "
                       "mode: pass a PRNG key (rng=...)")
    # Folded with a hash of the stream name: the step's own uses of its key (batch sampling)
    # stay independent of the model's dropout masks.
    return {s: jax.random.fold_in(key, zlib.crc32(s.encode()) & 0x7FFFFFFF)
            for s in self.rng_streams}

  def bound(self, fn: Callable) -> Callable:
    """`fn(variables, x) -> outputs` with each of `axis_names` bound as an axis of size
    one around it (a `jax.vmap` over a leading axis of one, removed from the outputs)."""
    for name in reversed(self.axis_names):
      def fn(variables, x, inner=fn, name=name):
        out = jax.vmap(inner, in_axes=(None, 0), axis_name=name)(variables, x[None])
        return jax.tree_util.tree_map(lambda a: a[0], out)
    return fn

  def apply(self, variables: Variables, x: jax.Array, *, train: bool = False,
            rng: jax.Array | None = None):
    """(logits, updates): `updates` holds the mutated collections of a train-mode call
    (an empty dict in eval mode or when nothing is mutable); merge with `{**variables,
    **updates}`."""
    return self.bound(lambda v, xx: self._apply(v, xx, train, rng))(variables, x)

  def _apply(self, variables, x, train, rng):
    if not train:
      return self.module.apply(variables, x, **self.eval_kwargs), {}
    rngs = self.rngs(rng)
    mutable = [c for c in self.mutable if c in variables and jax.tree_util.tree_leaves(
        variables[c])]
    kwargs = dict(self.train_kwargs)
    if rngs is not None:
      kwargs["rngs"] = rngs
    if mutable:
      out, updates = self.module.apply(variables, x, mutable=mutable, **kwargs)
      return out, dict(updates)
    return self.module.apply(variables, x, **kwargs), {}

  def logits(self, variables: Variables, x: jax.Array) -> jax.Array:
    """Eval-mode logits."""
    return self.apply(variables, x)[0]

  def features(self, variables: Variables, x: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None):
    """(logits, penultimate features [B, d], updates). Default: the head module's input,
    captured while the model runs (one forward pass)."""
    if self.features_fn is not None:
      return self.features_fn(self, variables, x, train, self.rngs(rng) if train else None)
    if self.head is None:
      raise ValueError(f"{self.name}: this method needs penultimate features; give the "
                       "adapter head=(path of the classifier head in params) or a "
                       "features_fn")
    def run(v, xx):
      # Captured inside the bound call (a value traced under its axes cannot leave it).
      captured = []

      def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and tuple(context.module.path) == self.head:
          captured.append(args[0])
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(interceptor):
        logits, updates = self._apply(v, xx, train, rng)
      if not captured:
        raise ValueError(f"{self.name}: head={self.head} is never called in a forward "
                         "pass; give the path of the module that produces the logits")
      return logits, captured[-1], updates

    logits, feats, updates = self.bound(run)(variables, x)
    return logits, feats.reshape(feats.shape[0], -1), updates

  def capture(self, variables: Variables, x: jax.Array, which: Callable, *,
              train: bool = False, rng: jax.Array | None = None):
    """(logits, {module path: output}, updates) for the submodules where
    `which(module)` is True (Flax's `capture_intermediates`)."""
    kwargs = dict(self.train_kwargs if train else self.eval_kwargs)
    mutable = ["intermediates"]
    if train:
      mutable += [c for c in self.mutable if c in variables and jax.tree_util.tree_leaves(
          variables[c])]
      rngs = self.rngs(rng)
      if rngs is not None:
        kwargs["rngs"] = rngs
    logits, state = self.bound(lambda v, xx: self.module.apply(
        v, xx, mutable=mutable, capture_intermediates=lambda m, _: which(m), **kwargs))(
            variables, x)
    state = dict(state)
    captured = {}
    for path, value in traverse_util.flatten_dict(state.pop("intermediates", {})).items():
      captured[path[:-1]] = value[0] if isinstance(value, tuple) else value
    return logits, captured, state

  def layers(self, variables: Variables, input_shape) -> list:
    """The model's layers in the order a forward pass calls them: each is a module with a
    `kernel` parameter, as a tuple of module paths, its own first, then the parameter
    modules without a kernel (its normalisation) that run before the next kernel module.
    Read from one abstract eval-mode pass; not from key order."""
    called = []

    def interceptor(next_fun, args, kwargs, context):
      path = tuple(context.module.path)
      if context.method_name == "__call__" and path not in called:
        called.append(path)
      return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    with nn.intercept_methods(interceptor):
      jax.eval_shape(lambda v, xx: self.logits(v, xx), variables, x)
    params = traverse_util.flatten_dict(dict(variables["params"]))
    leaves_of = lambda path: {k[len(path)] for k in params
                              if k[:len(path)] == path and len(k) == len(path) + 1}
    groups = []
    for path in called:
      names = leaves_of(path)
      if "kernel" in names:
        groups.append([path])
      elif names and groups:
        groups[-1].append(path)
    return [tuple(g) for g in groups]

  def init(self, key: jax.Array, input_shape) -> dict:
    """Fresh variables for one example of `input_shape` (eval-mode call)."""
    rngs = {"params": key, **{s: jax.random.fold_in(key, i + 1)
                              for i, s in enumerate(self.rng_streams)}}
    variables = self.bound(lambda r, xx: self.module.init(r, xx, **self.eval_kwargs))(
        rngs, jnp.zeros((1,) + tuple(input_shape), jnp.float32))
    return {k: v for k, v in dict(variables).items() if k != "intermediates"}

  # --------------------------------------------------------------------------- the head
  def require_features(self, method: str) -> None:
    """A ValueError unless penultimate features can be had (a head or a features_fn)."""
    if self.features_fn is None and self.head is None:
      raise ValueError(f"{method} needs penultimate features: give the adapter "
                       "head=(path of the classifier head in params) or a features_fn")

  def require_head(self, method: str) -> tuple:
    if self.head is None:
      raise ValueError(f"{method} changes the classifier head: give the adapter "
                       f"head=(path of the head in params), e.g. head=('Dense_1',)")
    return self.head

  def head_params(self, params, method: str = "this method") -> dict:
    """The head's parameter dict (`kernel` [d, C], `bias` [C])."""
    node, walked = params, ()
    for name in self.require_head(method):
      if not isinstance(node, Mapping) or name not in node:
        where = f"params{''.join(f'[{w!r}]' for w in walked)}"
        keys = sorted(node) if isinstance(node, Mapping) else []
        raise ValueError(f"head={self.head} is not a path in params: {where} has no "
                         f"{name!r} (its keys: {keys})")
      node, walked = node[name], walked + (name,)
    if not isinstance(node, Mapping) or "kernel" not in node:
      raise ValueError(f"head={self.head} holds "
                       f"{sorted(node) if isinstance(node, Mapping) else 'a single array'}; "
                       f"allowed: a Dense-like module with 'kernel' [d, num_classes] (and "
                       f"'bias'), as {method} needs")
    return node

  def replace_head(self, params, new_head: dict) -> dict:
    """`params` with the head's subtree replaced (a new dict; the input is unchanged)."""
    def put(node, path):
      if not path:
        return new_head
      return {**node, path[0]: put(node[path[0]], path[1:])}
    return put(params, self.require_head("replace_head"))


# Collections a method adds to the variables dict to carry its own state from one call to
# the next (the model never reads them): `certified_head`'s and `noisy_finetune`'s head state.
METHOD_COLLECTIONS = ("certified_head", "noisy_finetune")


def model_variables(variables: Variables) -> Variables:
  """`variables` without the methods' own collections (`METHOD_COLLECTIONS`): what the
  model runs on, so evaluation programs see one structure for every method."""
  return {k: v for k, v in variables.items() if k not in METHOD_COLLECTIONS}


def as_adapter(model) -> ModelAdapter:
  """`model` as a ModelAdapter: an adapter as it is; a module with an `unlearn_adapter()`
  method (the library's models) through it; any other Linen module as
  `ModelAdapter(module)` (plain `module.apply(variables, x)`)."""
  if isinstance(model, ModelAdapter):
    return model
  if isinstance(model, nn.Module):
    if hasattr(model, "unlearn_adapter"):
      return model.unlearn_adapter()
    return ModelAdapter(model)
  raise ValueError(f"model must be a flax.linen.Module or a ModelAdapter; got "
                   f"{type(model).__name__}")


def _nnx_call(module, x, *, train: bool, head: tuple | None = None):
  """The bridged NNX module's call in a mode: `.train()` / `.eval()` first (the bridge
  builds the module afresh for every call), then the model; with `head`, also the head's
  input (its class swapped for a capturing subclass for this call only, so the graph the
  bridge stores afterwards is the model's own)."""
  module.train() if train else module.eval()
  if head is None:
    return module(x)
  node = module
  for name in head:
    if not hasattr(node, name):
      raise ValueError(f"head={head} is not an attribute path of {type(module).__name__}: "
                       f"{type(node).__name__} has no {name!r}")
    node = getattr(node, name)
  seen, cls = [], type(node)
  capturing = type(f"Capturing{cls.__name__}", (cls,), {
      "__call__": lambda self, inputs, *a, **k: (seen.append(inputs),
                                                 cls.__call__(self, inputs, *a, **k))[1]})
  node.__class__ = capturing
  try:
    logits = module(x)
  finally:
    node.__class__ = cls
  if not seen:
    raise ValueError(f"head={head} is never called in a forward pass of "
                     f"{type(module).__name__}; give the path of the layer that makes the logits")
  return logits, seen[-1]


def _nnx_features(adapter: ModelAdapter, variables, x, train, rngs):
  """`features_fn` of `nnx_adapter`: (logits, the head's input [B, d], updates)."""
  call = functools.partial(_nnx_call, train=train, head=adapter.head)
  mutable = list(adapter.mutable) if train else False
  out = adapter.module.apply(variables, x, nnx_method=call, rngs=rngs, mutable=mutable)
  (logits, feats), updates = out if train else (out, {})
  return logits, feats.reshape(feats.shape[0], -1), dict(updates)


def nnx_adapter(nnx_class, *args, head=None, rng_streams=(), mutable=(), axis_names=(),
                name: str = "", **kwargs) -> ModelAdapter:
  """The adapter of an NNX model whose mode is switched by `.train()` / `.eval()`.

  `nnx_class(*args, **kwargs, rngs=...)` is built by `flax.nnx.bridge.to_linen`; every
  train-mode call runs `module.train()` and every eval-mode call `module.eval()` before
  the model (the bridge builds the module anew for each call, so the mode is set each
  time). `head`: the attribute path of the classifier layer (an `nnx.Linear`), which is
  also its path in `params`; the penultimate features are that layer's input. `mutable`:
  `("batch_stats",)` for `nnx.BatchNorm` (the bridge stores `nnx.BatchStat` there);
  `rng_streams`: `("dropout",)` for `nnx.Dropout(..., rngs=rngs)`.

      from flax import nnx
      adapter = uj.nnx_adapter(CNN, head="linear2", rng_streams=("dropout",),
                               mutable=("batch_stats",))
  """
  from flax.nnx import bridge
  head = None if head is None else _as_name_tuple(head, "head")
  return ModelAdapter(bridge.to_linen(nnx_class, *args, **kwargs),
                      train_kwargs={"nnx_method": functools.partial(_nnx_call, train=True)},
                      eval_kwargs={"nnx_method": functools.partial(_nnx_call, train=False)},
                      rng_streams=rng_streams, mutable=mutable, head=head,
                      features_fn=_nnx_features if head is not None else None,
                      name=name or nnx_class.__name__, axis_names=axis_names)


def has_mutable_state(variables: Variables, collection: str = "batch_stats") -> bool:
  """Whether `variables` carry a non-empty `collection` (BatchNorm statistics by default)."""
  return bool(jax.tree_util.tree_leaves(dict(variables).get(collection, {})))
