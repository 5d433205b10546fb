"""Certified removal: an (ε, δ)-certified head on the frozen body (`unlearn_jax.certified`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unlearn_jax import certified as cr
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import METHOD_COLLECTIONS
from unlearn_jax.methods.base import MethodContext, one_shot, register

# The collection of the variables dict that carries a certified head's state from one
# request to the next (the model ignores it; the next call reads it).
STATE = "certified_head"
assert STATE in METHOD_COLLECTIONS   # evaluation strips it (adapter.model_variables)


@register("certified_head", reads=("forget", "retain"), needs=("head",),
          paper=('Guo, Goldstein, Hannun & van der Maaten, "Certified Data Removal from Machine '
                 'Learning Models", ICML 2020'),
          aux=("certified_epsilon", "certified_delta", "residual_bound", "residual_budget",
               "refitted", "refits"),
          defaults=dict(epsilon=1.0, delta=1e-4, lam=1e-3, sigma=1.0, newton_steps=25,
                        batch_size=256))
def certified_head(ctx: MethodContext, *, epsilon, delta, lam, sigma, newton_steps,
                   batch_size):
  """Certified removal of D_f from a one-vs-rest logistic head on the frozen body's features.

  First call on a model (no certified head yet in its variables): the head is refitted on
  the features of D = D_r ∪ D_f with the objective perturbation bᵀw, b ~ N(0, σ²I) (Newton,
  `newton_steps` iterations), then D_f is removed by one Newton step with the exact Hessian
  on D_r. Later calls (a stream of requests, each model unlearned from the previous one)
  continue from the head's state, kept in the variables' "certified_head" collection: the
  same noise, the bound accumulated so far. When the accumulated gradient-residual bound
  passes the budget σ ε' / √(2 log(1.5/δ')) (ε' = ε/C, δ' = δ/C per one-vs-rest classifier),
  the head is refitted on D_r and the bound starts again. The body is frozen and not
  certified; the head's kernel and bias are replaced by the certified head (its scores are
  one-vs-rest margins, so the argmax is the prediction). The full rule, the bound and the
  cost are in `unlearn_jax.certified`.
  Reads: forget and retain (their features under the frozen body). Defaults: ε 1 and
  δ 1e-4 for the head as a whole, λ 1e-3, σ 1 (the paper's scale of b), 25 Newton
  iterations, features computed in batches of 256.
  """
  cr.check_budget(epsilon, delta, lam, sigma)
  model, c = ctx.model, ctx.num_classes
  model.require_head("certified_head")
  budget = cr.residual_budget(epsilon, delta, sigma, c)

  def edit(variables, data, key):
    xf, yf = data.forget
    xr, yr = data.retain
    feats_f = train_lib.predict_features(model, variables, xf, batch_size)[1]
    feats_r = train_lib.predict_features(model, variables, xr, batch_size)[1]
    feats = jnp.concatenate([feats_f, feats_r])
    labels = jnp.concatenate([yf, yr])
    removed = jnp.arange(labels.shape[0]) < yf.shape[0]
    previous = variables.get(STATE)
    if previous is None:       # static: the structure of the variables dict
      scale = cr.feature_scale(feats)
      x = cr.scaled_features(feats, scale)
      noise = sigma * jax.random.normal(key, (c, x.shape[1]), x.dtype)
      weights = cr.fit(x, labels, c, lam, noise, steps=newton_steps)
      bound0, refits = jnp.zeros((c,), x.dtype), jnp.zeros((), jnp.int32)
    else:
      scale, noise, weights = previous["scale"], previous["noise"], previous["weights"]
      bound0, refits = previous["bound"], previous["refits"]
      x = cr.scaled_features(feats, scale)
    new_w, step_bound = cr.remove(weights, x, labels, removed, c, lam)
    bound = bound0 + step_bound
    over = jnp.any(bound > budget)
    refit = lambda: cr.fit(x, labels, c, lam, noise, mask=~removed, steps=newton_steps)
    new_w = jax.lax.cond(over, refit, lambda: new_w)
    bound = jnp.where(over, jnp.zeros_like(bound), bound)
    refits = refits + over.astype(jnp.int32)
    params = model.replace_head(variables["params"], cr.as_dense(new_w, scale))
    state = {"weights": new_w, "noise": noise, "bound": bound, "scale": scale,
             "refits": refits}
    aux = {"certified_epsilon": jnp.asarray(epsilon, jnp.float32),
           "certified_delta": jnp.asarray(delta, jnp.float32),
           "residual_bound": jnp.max(bound), "residual_budget": jnp.asarray(budget, jnp.float32),
           "refitted": over.astype(jnp.float32), "refits": refits.astype(jnp.float32)}
    return {**variables, "params": params, STATE: state}, aux

  return one_shot("certified_head", edit)
