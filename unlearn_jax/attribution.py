"""Data attribution: TRAK scores and datamodel scores, and the DM-Direct predictor.

An attribution score S[i, x] estimates how much including training example i moves a model
output on example x (a margin, or each class's logit). Two sources, both pure functions
(callers `jax.jit` them; nothing here compiles by itself):

* `trak_scores`: TRAK (Park, Georgiev, Ilyas, Leclerc & Madry, "TRAK: Attributing Model
  Behavior at Scale", ICML 2023). For each model m of an ensemble, with per-example gradients
  g of the model output function projected by a fixed random matrix P_m (k columns,
  Rademacher or Gaussian): Φ_m = [P_mᵀ g(z_i)]_i over the training set, and

      S[i, x] = (1/M Σ_m  Φ_m (Φ_mᵀΦ_m + λI)⁻¹ φ_m(x)) [i] · (1/M Σ_m Q_m[i]),

  where Q_m[i] = 1 − p_m(y_i | x_i) (the out-to-loss gradient of the margin) and the output
  function is the margin log p_y / (1 − p_y) (`output="margin"`: S is [train, targets]) or each
  class's logit at the target (`output="logits"`: S is [train, targets, classes], the form
  the datamodel-matching methods use). The gradients are computed `chunk` examples at a time
  and projected at once, so memory holds `chunk × parameters` and `parameters × block`
  numbers, never all examples' gradients; the projection is generated from `key` in blocks
  of columns (same key, same matrix). The models are a stacked population (leading axis M),
  scanned one at a time.
* `datamodel_scores`: datamodels (Ilyas, Park, Engstrom, Leclerc & Madry, "Datamodels:
  Predicting Predictions from Training Data", ICML 2022): models trained on random subsets
  (an inclusion mask per model) and a regularised linear regression of each output on the
  masks. The regression here is ridge on centred masks and outputs (one solve for every
  target and class at once); the datamodels paper uses the lasso.

`dm_direct` turns scores into predicted logits of a model trained without a forget set, and
`oracle_targets` averages an oracle population's logits: the targets of the matching methods
`oracle_matching` and `dmm` (`unlearn_jax.methods.matching`; Georgiev, Rinberg, Park, Garg,
Ilyas, Madry & Neel, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching", 2024).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from unlearn_jax.adapter import as_adapter, model_variables

OUTPUTS = ("margin", "logits")
PROJECTIONS = ("rademacher", "normal")


def margin(logits: jax.Array, label: jax.Array) -> jax.Array:
  """TRAK's output function of one example: log p_y / (1 − p_y) = z_y − logsumexp_{c≠y} z_c."""
  others = jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits)
  return logits[label] - jax.nn.logsumexp(others)


def _check(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is unknown; allowed: {', '.join(allowed)}")


def _check_pair(name: str, pair) -> tuple:
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise ValueError(f"{name} must be an (x, y) pair; got {type(pair).__name__}")
  x, y = pair
  if jnp.ndim(y) != 1 or jnp.shape(x)[:1] != jnp.shape(y) or jnp.shape(y)[0] == 0:
    raise ValueError(f"{name} has x of shape {jnp.shape(x)} and y of shape {jnp.shape(y)}; "
                     "expected x [n, ...] and y [n] with the same n >= 1")
  return x, y


def _chunks(fn: Callable, x, y, chunk: int):
  """fn over (x, y) in chunks of `chunk` examples (the last one padded, its rows dropped)."""
  n = x.shape[0]
  size = min(chunk, n)
  pad = -n % size
  xp = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
  yp = jnp.concatenate([y, jnp.repeat(y[:1], pad, axis=0)]) if pad else y
  out = jax.lax.map(lambda c: fn(*c), (xp.reshape((-1, size) + x.shape[1:]),
                                       yp.reshape(-1, size)))
  return out.reshape((-1,) + out.shape[2:])[:n]


def _draw_block(key, b, num_params: int, block: int, projection: str):
  k = jax.random.fold_in(key, b)
  if projection == "rademacher":
    return jax.random.rademacher(k, (num_params, block), jnp.float32)
  return jax.random.normal(k, (num_params, block), jnp.float32)


def projection_matrix(key, num_params: int, proj_dim: int, *, projection: str = "rademacher",
                      block: int = 512) -> jax.Array:
  """The projection `trak_scores` applies to a model's flattened gradients, whole: R
  [num_params, proj_dim], block b of `block` columns drawn from fold_in(key, b), ±1 or
  N(0, 1) entries, scaled by 1/√proj_dim (for inspection and tests: `trak_scores` never
  holds more than one block)."""
  _check("projection", projection, PROJECTIONS)
  block = min(block, proj_dim)
  blocks = -(-proj_dim // block)
  r = jnp.concatenate([_draw_block(key, b, num_params, block, projection)
                       for b in range(blocks)], axis=1)
  return r[:, :proj_dim] / jnp.sqrt(proj_dim)


def _projector(key, num_params: int, proj_dim: int, block: int, projection: str):
  """(project, back): project(g [c, P]) = g @ R [c, proj_dim] and back(s [proj_dim]) =
  R @ s [P], R = `projection_matrix(key, ...)`, one block of columns drawn at a time."""
  blocks = -(-proj_dim // block)
  draw = lambda b: _draw_block(key, b, num_params, block, projection)
  scale = 1.0 / jnp.sqrt(proj_dim)

  def project(g):
    out = jax.lax.map(lambda b: g @ draw(b), jnp.arange(blocks))     # [blocks, c, block]
    out = jnp.moveaxis(out, 0, 1).reshape(g.shape[0], blocks * block)[:, :proj_dim]
    return out * scale

  def back(s):
    padded = jnp.pad(s, (0, blocks * block - proj_dim)).reshape(blocks, block)
    total = jax.lax.fori_loop(0, blocks, lambda b, acc: acc + draw(b) @ padded[b],
                              jnp.zeros((num_params,), s.dtype))
    return total * scale

  return project, back


def trak_scores(model, variables, train: tuple, targets: tuple, *, proj_dim: int,
                key: jax.Array, output: str = "margin", projection: str = "rademacher",
                damping: float = 0.0, chunk: int = 64, block: int = 512,
                train_rows=None, sum_rows: bool = False) -> jax.Array:
  """TRAK scores of every training example on every target (module docstring).

  Args:
    model: a `ModelAdapter`, a library model or a Linen module (its eval-mode logits).
    variables: an ensemble: the model's variables with a leading axis of M models.
    train: (x, y) of the training set; `targets`: (x, y) of the examples to attribute
      (the labels matter for `output="margin"` only).
    proj_dim: the projection's dimension k (≥ 1). For the margin at k = the parameter
      count the projection drops out (an invertible map of the gradients' span); where the
      gradients do not span the parameters (a softmax's logits share a free constant) the
      kernel is singular at such k: give a small `damping`.
    key: the projection's key; model m uses fold_in(key, m).
    output: "margin" (TRAK's) or "logits" (one output per class: S [train, targets, C]).
    projection: "rademacher" or "normal". damping: λ ≥ 0 added to ΦᵀΦ.
    chunk: examples whose gradients are held at once; block: projection columns drawn at once.
    train_rows: indices of the training examples whose scores to return (e.g. a forget
      set: DM-Direct needs only its rows); None for all. The kernel is the whole set's.
    sum_rows: return the sum of those rows, Σ_i S[i] (DM-Direct's correction), computed
      without holding S or any target's features: the summed row mapped back through the
      projection, then one Jacobian-vector product per target (the cost of a forward pass).

  Returns:
    S: [rows, n_targets] (margin) or [rows, n_targets, C] (logits), float32; rows is
    n_train, or len(train_rows); with `sum_rows`, [n_targets] or [n_targets, C].
  """
  _check("output", output, OUTPUTS)
  _check("projection", projection, PROJECTIONS)
  for name, v in (("proj_dim", proj_dim), ("chunk", chunk), ("block", block)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name}={v!r} must be a positive integer")
  if not damping >= 0:
    raise ValueError(f"damping={damping!r} must be >= 0")
  adapter = as_adapter(model)
  xt, yt = _check_pair("train", train)
  xq, yq = _check_pair("targets", targets)
  variables = model_variables(variables)
  leaves = jax.tree_util.tree_leaves(variables["params"])
  if not leaves or jnp.ndim(leaves[0]) < 1:
    raise ValueError("variables must hold an ensemble: a leading axis of M models")
  num_models = jnp.shape(leaves[0])[0]
  rows = slice(None) if train_rows is None else jnp.asarray(train_rows)
  if train_rows is not None and (rows.ndim != 1 or not jnp.issubdtype(rows.dtype, jnp.integer)):
    raise ValueError(f"train_rows must be a 1-D array of integer indices; got {rows.shape} "
                     f"{rows.dtype}")

  def model_fns(m, v):
    """(flattened params, logits_of(params, x), project, back) of model m."""
    params, rest = v["params"], {k: a for k, a in v.items() if k != "params"}
    flat, unravel = ravel_pytree(params)
    project, back = _projector(jax.random.fold_in(key, m), flat.size, proj_dim,
                               min(block, proj_dim), projection)
    logits_of = lambda p, x: adapter.logits({"params": unravel(p), **rest}, x[None])[0]
    return flat, logits_of, project, back

  def q_of(m):       # Q = 1 - p(y | x) on the training set (TRAK's out-to-loss term)
    v = jax.tree_util.tree_map(lambda a: a[m], variables)
    p = jax.nn.softmax(_chunks(lambda x, y: adapter.logits(v, x), xt, yt, chunk))
    return 1.0 - jnp.take_along_axis(p, yt[:, None], axis=1)[:, 0]

  # Q averaged over the ensemble first: it weighs every model's rows alike (as traker).
  q_rows = jax.lax.map(q_of, jnp.arange(num_models)).mean(0)[rows]

  def one_model(m):
    v = jax.tree_util.tree_map(lambda a: a[m], variables)
    flat, logits_of, project, back = model_fns(m, v)
    margin_grads = jax.vmap(jax.grad(lambda p, xi, yi: margin(logits_of(p, xi), yi)),
                            in_axes=(None, 0, 0))

    def target_chunk(x, y):
      if output == "margin":
        return project(margin_grads(flat, x, y))
      g = jax.vmap(jax.jacrev(logits_of), in_axes=(None, 0))(flat, x)    # [c, C, P]
      c, classes = g.shape[:2]
      return project(g.reshape(c * classes, -1)).reshape(c, classes, proj_dim)

    phi = _chunks(lambda x, y: project(margin_grads(flat, x, y)), xt, yt, chunk)
    kernel = phi.T @ phi + damping * jnp.eye(proj_dim, dtype=phi.dtype)
    # Φ (ΦᵀΦ + λI)⁻¹ by a solve (the kernel is symmetric positive semidefinite), with the
    # rows' Q: [rows, k], or their sum [k].
    weighted = jnp.linalg.solve(kernel, phi[rows].T).T * q_rows[:, None]
    if sum_rows:
      # Σ_i S[i, x] = (Rᵀ J(x)ᵀ)ᵀ w = J(x) (R w): one Jacobian-vector product per target
      # with the summed row mapped back to parameter space; no target is projected.
      direction = back(weighted.sum(0))

      def jvp_chunk(x, y):
        if output == "margin":
          out = lambda p: jax.vmap(lambda xi, yi: margin(logits_of(p, xi), yi))(x, y)
        else:
          out = lambda p: jax.vmap(lambda xi: logits_of(p, xi))(x)
        return jax.jvp(out, (flat,), (direction,))[1]
      return _chunks(jvp_chunk, xq, yq, chunk)
    target = _chunks(target_chunk, xq, yq, chunk)
    return jnp.einsum("ik,t...k->it...", weighted, target)

  first = one_model(0)
  total, _ = jax.lax.scan(lambda acc, m: (acc + one_model(m), None), first,
                          jnp.arange(1, num_models))
  return total / num_models


def datamodel_scores(masks: jax.Array, outputs: jax.Array, *, l2: float = 1e-2) -> jax.Array:
  """Datamodel weights: the ridge regression of each output on the inclusion masks.

  For M models trained on subsets (masks [M, n_train], 1 where example i was in model m's
  training set) with outputs [M, ...] (e.g. logits [M, n_targets, C]), returns W [n_train,
  ...] minimising Σ_m (y_m − b − W·mask_m)² + l2·M·|W|² per output, masks and outputs
  centred (b absorbs the mean): the change of each output when example i is included.
  """
  masks = jnp.asarray(masks, jnp.float32)
  outputs = jnp.asarray(outputs, jnp.float32)
  if masks.ndim != 2 or outputs.shape[:1] != masks.shape[:1]:
    raise ValueError(f"masks must be [M, n_train] and outputs [M, ...] with the same M; got "
                     f"{masks.shape} and {outputs.shape}")
  if not l2 > 0:
    raise ValueError(f"l2={l2!r} must be > 0 (with fewer models than examples the "
                     "unregularised regression has no unique solution)")
  m = masks.shape[0]
  xc = masks - masks.mean(0)
  yc = (outputs - outputs.mean(0)).reshape(m, -1)
  gram = xc.T @ xc + l2 * m * jnp.eye(masks.shape[1])
  w = jnp.linalg.solve(gram, xc.T @ yc)
  return w.reshape((masks.shape[1],) + outputs.shape[1:])


def dm_direct(logits: jax.Array, scores: jax.Array, forget: jax.Array, *,
              multiplier: float = 1.0) -> jax.Array:
  """DM-Direct: the logits a model trained without the forget set is predicted to give.

      logits'[x, :] = logits[x, :] − multiplier · Σ_{f ∈ F} S[f, x, :]

  (Georgiev et al., 2024, "Attribute-to-Delete", DM-Direct.) No weights change: this is a
  prediction of outputs on the examples `scores` cover, not a model; `dmm` trains a model to
  match it. `logits` [n, C] (or [M, n, C] for a population), `scores` [n_train, n, C],
  `forget` the forget set's indices into the training set (int [|F|]) or a boolean mask
  [n_train].
  """
  scores = jnp.asarray(scores)
  forget = jnp.asarray(forget)
  if scores.ndim != 3 or scores.shape[1:] != jnp.shape(logits)[-2:]:
    raise ValueError(f"scores must be [n_train, n, C] with [n, C] the logits' last two axes; "
                     f"got scores {scores.shape} and logits {jnp.shape(logits)}")
  if forget.dtype == jnp.bool_:
    if forget.shape != scores.shape[:1]:
      raise ValueError(f"a boolean forget mask must have shape ({scores.shape[0]},); got "
                       f"{forget.shape}")
    correction = jnp.einsum("i,ixc->xc", forget.astype(scores.dtype), scores)
  else:
    correction = scores[forget].sum(0)
  return logits - multiplier * correction


def oracle_targets(logits: jax.Array, *, kind: str = "logits") -> jax.Array:
  """The matching target from an oracle population's logits [M, n, C]: their mean logits
  (`kind="logits"`, Oracle Matching's MSE target) or the log of their mean softmax
  (`kind="probs"`: logits whose softmax is the oracles' mean probabilities, the CE
  variant's target)."""
  _check("kind", kind, ("logits", "probs"))
  logits = jnp.asarray(logits, jnp.float32)
  if logits.ndim != 3:
    raise ValueError(f"logits must be [M oracles, n, C]; got {logits.shape}")
  if kind == "logits":
    return logits.mean(0)
  return jnp.log(jax.nn.softmax(logits, axis=-1).mean(0))
