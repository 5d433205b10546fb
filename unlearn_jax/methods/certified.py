"""Certified removal: an (ε, δ)-certified head on the frozen body, by a Newton step
(`certified_head`, `unlearn_jax.certified`) or by noisy SGD (`noisy_finetune`,
`unlearn_jax.langevin`)."""

from __future__ import annotations


import jax
import jax.numpy as jnp

from unlearn_jax import certified as cr
from unlearn_jax import langevin as lg
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import METHOD_COLLECTIONS
from unlearn_jax.methods.base import HyperparameterError, MethodContext, one_shot, register

# The collection of the variables dict that carries a certified head's state from one
# request to the next (the model ignores it; the next call reads it).
STATE = "certified_head"

# A certificate holds for whatever head the rule produces, a useless one included: both
# certified methods say whether the head kept its skill on D_r.
USEFULNESS_AUX = dict(
    retain_accuracy_before="the head's accuracy on D_r's features before this call (the model "
                           "it was handed)",
    retain_accuracy_after="the certified head's accuracy on D_r's features after this call",
    certificate_useful="1 when retain_accuracy_after ≥ chance + ½·(retain_accuracy_before − "
                       "chance), chance = 1/C; 0: the certificate holds for a head that lost "
                       "more than half its skill above chance on D_r (the run's summary warns)")


def usefulness(head_before: dict, head_after: dict, feats_r, yr, num_classes: int) -> dict:
  """`USEFULNESS_AUX`: the heads' retain accuracies on the features and the rule above."""
  acc = lambda h: jnp.mean(jnp.argmax(feats_r @ h["kernel"] + h.get("bias", 0.0), -1) == yr)
  before, after = acc(head_before), acc(head_after)
  chance = 1.0 / num_classes
  return {"retain_accuracy_before": before, "retain_accuracy_after": after,
          "certificate_useful": (after >= chance + 0.5 * (before - chance)).astype(jnp.float32)}
assert STATE in METHOD_COLLECTIONS   # evaluation strips it (adapter.model_variables)


@register("certified_head", reads=("forget", "retain"), needs=("head",),
          paper=('Guo, Goldstein, Hannun & van der Maaten, "Certified Data Removal from Machine '
                 'Learning Models", ICML 2020'),
          aux=dict(
              certified_epsilon='the ε the head is certified for (the `epsilon` hyperparameter)',
              certified_delta='the δ the head is certified for (the `delta` hyperparameter)',
              residual_bound="the largest per-class gradient-residual bound accumulated since the "
                             "head was last fitted",
              residual_budget="σ ε' / √(2 log(1.5/δ')), the budget that bound may not pass (past "
                              "it the head is refitted on D_r)",
              refitted="1 when this call refitted the head on what is left instead of unlearning "
                       "from it",
              refits='the refits over the whole stream of requests so far',
              **USEFULNESS_AUX),
          defaults=dict(epsilon=1.0, delta=1e-4, lam=1e-3, sigma=1.0, newton_steps=25,
                        batch_size=256),
          bounds=dict(epsilon="(0, inf)", delta="(0, 1)", lam="(0, inf)", sigma="(0, inf)",
                      newton_steps="[1, inf)", batch_size="[1, inf)"))
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
    # Static (the params' structure): a head without a bias gets a head without one.
    bias = "bias" in model.head_params(variables["params"])
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
      x = cr.scaled_features(feats, scale, bias)
      noise = sigma * jax.random.normal(key, (c, x.shape[1]), x.dtype)
      weights = cr.fit(x, labels, c, lam, noise, steps=newton_steps)
      bound0, refits = jnp.zeros((c,), x.dtype), jnp.zeros((), jnp.int32)
    else:
      scale, noise, weights = previous["scale"], previous["noise"], previous["weights"]
      bound0, refits = previous["bound"], previous["refits"]
      x = cr.scaled_features(feats, scale, bias)
    new_w, step_bound = cr.remove(weights, x, labels, removed, c, lam)
    bound = bound0 + step_bound
    over = jnp.any(bound > budget)
    refit = lambda: cr.fit(x, labels, c, lam, noise, mask=~removed, steps=newton_steps)
    new_w = jax.lax.cond(over, refit, lambda: new_w)
    bound = jnp.where(over, jnp.zeros_like(bound), bound)
    refits = refits + over.astype(jnp.int32)
    head = cr.as_dense(new_w, scale, bias)
    params = model.replace_head(variables["params"], head)
    state = {"weights": new_w, "noise": noise, "bound": bound, "scale": scale,
             "refits": refits}
    aux = {"certified_epsilon": jnp.asarray(epsilon, jnp.float32),
           "certified_delta": jnp.asarray(delta, jnp.float32),
           "residual_bound": jnp.max(bound), "residual_budget": jnp.asarray(budget, jnp.float32),
           "refitted": over.astype(jnp.float32), "refits": refits.astype(jnp.float32),
           **usefulness(model.head_params(variables["params"]), head, feats_r, yr, c)}
    return {**variables, "params": params, STATE: state}, aux

  return one_shot("certified_head", edit)


NOISY_STATE = "noisy_finetune"
assert NOISY_STATE in METHOD_COLLECTIONS


@register("noisy_finetune", reads=("forget", "retain"), needs=("head",),
          paper=('Chien, Wang, Chen & Li, "Certified Machine Unlearning via Noisy Stochastic '
                 'Gradient Descent", NeurIPS 2024'),
          aux=dict(
              certified_epsilon='the ε the head is certified for (the `epsilon` hyperparameter)',
              certified_delta='the δ the head is certified for (the `delta` hyperparameter)',
              epsilon_bound="the ε the Rényi bound gives for the epochs this call ran (at most "
                            "certified_epsilon; 0 after a retrain, which needs no bound)",
              noise_sigma="σ of the Langevin noise, solved on the first call so that `epochs` "
                          "epochs certify (ε, δ)",
              unlearn_epochs="the epochs this call ran: the fewest that meet (ε, δ), or "
                             "train_epochs when it retrained",
              distance_bound="the W∞ bound between this process and one that never saw the removed"
                             " examples, before this call's epochs (carried over the stream, plus "
                             "|D_f|·Z_B)",
              burn_in_gap="the W∞ distance to the process's stationary law left after train_epochs"
                          " of training (the certificate assumes the trained head is there)",
              refitted="1 when this call refitted the head on what is left instead of unlearning "
                       "from it",
              refits='the refits over the whole stream of requests so far',
              **USEFULNESS_AUX),
          defaults=dict(epsilon=1.0, delta=1e-4, lam=1e-3, batch_size=64, epochs=200,
                        train_epochs=300, max_epochs=300, radius=0.0),
          bounds=dict(epsilon="(0, inf)", delta="(0, 1)", lam="(0, inf)", batch_size="[1, inf)",
                      epochs="[1, inf)", train_epochs="[1, inf)", max_epochs="[1, inf)", radius="[0, inf)"))
def noisy_finetune(ctx: MethodContext, *, epsilon, delta, lam, batch_size, epochs,
                   train_epochs, max_epochs, radius):
  """(ε, δ)-certified unlearning of a multinomial logistic head on the frozen body's
  features by projected noisy SGD (Langevin) fine-tuning on D_r.

  First call on a model (no noisy head in its variables yet): σ is solved from the bound so
  that `epochs` epochs certify (ε, δ) for a request of |D_f| examples; the head is trained
  on the features of D = D_r ∪ D_f by `train_epochs` epochs of the noisy process from a
  data-independent start; then D_f is unlearned by K epochs of the same process with D_f's
  gradients zeroed. Later calls (a stream of requests) continue from the head's state in the
  variables' "noisy_finetune" collection: the same σ and slots, the W∞ bound carried over,
  and K_s, the fewest epochs that meet (ε, δ) from it (K_s grows as requests accumulate).
  When K_s would pass `max_epochs` the head is instead retrained on what is left by
  `train_epochs` epochs from a fresh start, and the bound restarts at 0. The head's kernel
  and bias are replaced by the noisy head. The rule, the bound, the constants and what the
  certificate assumes (a convex head on a frozen body; a trained head at the process's
  stationary law, `burn_in_gap` being the W∞ left after training) are in
  `unlearn_jax.langevin`.
  Reads: forget and retain (their features under the frozen body). Defaults: ε 1, δ 1e-4,
  λ 1e-3, batches of 64, K = 200 epochs per request, 300 training epochs (W∞ 2R c^{Tn/b}
  ≈ 1e-3 left to stationarity on digits), at most 300 epochs per request (a retrain costs
  as much), radius 0 (= √(2 log C / λ), the ball that
  holds the minimiser). An epoch is n/b steps of a [b, d+1] × [d+1, C] product: the
  defaults cost seconds on a CPU for d ≤ 1024. A larger K needs less noise, but noise far
  below float32's resolution of the weights certifies nothing in practice (rounding is
  deterministic): the reported σ says which regime a setting is in.
  """
  cr.check_budget(epsilon, delta, lam, 1.0)
  for name, value, low in (("epochs", epochs, 1), ("train_epochs", train_epochs, 1),
                           ("max_epochs", max_epochs, epochs)):
    if not (isinstance(value, int) and value >= low):
      raise ValueError(f"noisy_finetune: {name}={value!r} must be an int ≥ {low}")
  model, c = ctx.model, ctx.num_classes
  model.require_head("noisy_finetune")
  ball = float(radius) or lg.default_radius(c, lam)

  def edit(variables, data, key):
    # Static (the params' structure): a head without a bias gets a head without one.
    bias = "bias" in model.head_params(variables["params"])
    xf, yf = data.forget
    xr, yr = data.retain
    feats_r = train_lib.predict_features(model, variables, xr, 256)[1]
    feats = jnp.concatenate([train_lib.predict_features(model, variables, xf, 256)[1], feats_r])
    labels = jnp.concatenate([yf, yr])
    keep = jnp.arange(labels.shape[0]) >= yf.shape[0]
    k_init, k_train, k_unlearn = jax.random.split(key, 3)
    previous = variables.get(NOISY_STATE)
    if previous is None:       # static: the structure of the variables dict
      if batch_size > labels.shape[0]:   # the certificate's constants depend on the batch
        raise HyperparameterError("noisy_finetune", "batch_size", batch_size,
                                  f"exceeds the {labels.shape[0]} examples of D_r ∪ D_f it "
                                  f"batches; allowed: 1..{labels.shape[0]}")
      proc = lg.process(labels.shape[0], batch_size, lam)
      z_b = lg.distance_per_example(proc)
      sigma = lg.sigma_for(epsilon, delta, yf.shape[0] * z_b, epochs, proc)
      scale = cr.feature_scale(feats)
      x = cr.scaled_features(feats, scale, bias)
      start = lg.initial(k_init, c, x.shape[1], sigma, ball, lam)
      weights = lg.run(start, x, labels, jnp.ones_like(keep), train_epochs, k_train, sigma,
                       ball, proc)
      carried, refits = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
      sigma = jnp.asarray(sigma, jnp.float32)
    else:
      # The slots (n, fixed by the first call) are the length of the state's `slots`.
      proc = lg.process(previous["slots"].shape[0], batch_size, lam)
      z_b = lg.distance_per_example(proc)
      if labels.shape[0] > proc.slots:
        raise ValueError(f"noisy_finetune: {labels.shape[0]} examples, more than the "
                         f"{proc.slots} slots the head was trained on")
      scale, sigma, weights = previous["scale"], previous["sigma"], previous["weights"]
      carried, refits = previous["distance"], previous["refits"]
      x = cr.scaled_features(feats, scale, bias)
    distance = carried + yf.shape[0] * z_b
    needed = lg.epochs_for(epsilon, delta, distance, sigma, proc)
    over = needed > max_epochs

    # Unlearning (K epochs from the head) and retraining (T epochs from a fresh start) are
    # the same process: one loop with the start and the epochs chosen (under vmap a
    # lax.cond would run both branches for every seed).
    start = jnp.where(over, lg.initial(k_init, c, x.shape[1], sigma, ball, lam), weights)
    ran = jnp.where(over, train_epochs, needed)
    new_w = lg.run(start, x, labels, keep, ran, k_unlearn, sigma, ball, proc)
    after = jnp.where(over, 0.0, distance * lg.decay_after(needed.astype(jnp.float32), proc))
    refits = refits + over.astype(jnp.int32)
    eps_bound = jnp.where(over, 0.0, lg.epsilon(lg.renyi_slope(
        distance, sigma, needed.astype(jnp.float32), proc), delta))
    head = cr.as_dense(new_w, scale, bias)
    params = model.replace_head(variables["params"], head)
    state = {"weights": new_w, "sigma": sigma, "distance": after.astype(jnp.float32),
             "scale": scale, "refits": refits, "slots": jnp.zeros((proc.slots,), jnp.bool_)}
    aux = {"certified_epsilon": jnp.asarray(epsilon, jnp.float32),
           "certified_delta": jnp.asarray(delta, jnp.float32),
           "epsilon_bound": eps_bound.astype(jnp.float32), "noise_sigma": sigma,
           "unlearn_epochs": ran.astype(jnp.float32),
           "distance_bound": distance.astype(jnp.float32),
           "burn_in_gap": jnp.asarray(lg.burn_in_gap(ball, train_epochs, proc), jnp.float32),
           "refitted": over.astype(jnp.float32), "refits": refits.astype(jnp.float32),
           **usefulness(model.head_params(variables["params"]), head, feats_r, yr, c)}
    return {**variables, "params": params, NOISY_STATE: state}, aux

  return one_shot("noisy_finetune", edit)
