"""The matching methods: fine-tune the original model to match the outputs of models that
never saw the forget set (Georgiev, Rinberg, Park, Garg, Ilyas, Madry & Neel,
"Attribute-to-Delete: Machine Unlearning via Datamodel Matching", 2024).

Both read `data.targets`, the logits the unlearned model should give on data.forget and
data.retain, besides the examples themselves:

* `oracle_matching`: the targets are an oracle population's mean logits
  (`attribution.oracle_targets` of, e.g., 10 models retrained without the forget set);
* `dmm` (datamodel matching): the targets are DM-Direct's prediction of a retrained
  model's logits, `attribution.dm_direct(original logits, scores, forget)`, with scores
  from TRAK or datamodels (`attribution.trak_scores`, `attribution.datamodel_scores`).

DM-Direct itself changes no weights (it predicts logits): `unlearn_jax.attribution.dm_direct`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax.methods.base import MethodContext, gradient_phase, model_state, register
from unlearn_jax.steps import StepState, Steps

PAPER = ('Georgiev, Rinberg, Park, Garg, Ilyas, Madry & Neel, "Attribute-to-Delete: Machine '
         'Unlearning via Datamodel Matching", 2024')
LOSSES = ("mse", "ce")
RETAIN_SEED = 42    # the authors' `default_rng(42)` draw of the retain examples
DEFAULTS = dict(epochs=5, lr=5e-4, batch_size=512, lr_decay=0.95, retain_multiple=3,
                wd_lambda=0.0, loss="mse")
BOUNDS = dict(epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)", lr_decay="(0, 1]",
              retain_multiple="[0, inf)", wd_lambda="[0, inf)")
SPACE = dict(lr=("log", 1e-5, 1e-2))
AUX = dict(final_loss="the matching loss of the last step (MSE or soft-label CE, plus the "
                      "pull to θ0)")


def retain_draw(num_retain: int, num_forget: int, multiple: int) -> np.ndarray:
  """The retain examples matched beside the forget set: min(multiple·|F|, |R|) of them,
  drawn without replacement by `np.random.default_rng(42)` (the authors' draw), sorted.
  Static (from shapes), so the same under jit and vmap."""
  k = min(multiple * num_forget, num_retain)
  return np.sort(np.random.default_rng(RETAIN_SEED).choice(num_retain, k, replace=False))


def matching_steps(ctx: MethodContext, *, epochs, lr, batch_size, lr_decay, retain_multiple,
                   wd_lambda, loss) -> Steps:
  """The steps both matching methods share (module docstring)."""
  adapter = ctx.model

  def init(variables, data, key):
    (xf, yf), (xr, yr) = data.forget, data.retain
    tf, tr = data.targets
    idx = retain_draw(xr.shape[0], xf.shape[0], retain_multiple)
    feed = (jnp.concatenate([xf, xr[idx]]), jnp.concatenate([yf, yr[idx]]),
            jnp.concatenate([tf, tr[idx]]).astype(jnp.float32))
    return StepState(model_state(variables), {"match": feed}, {"match": key},
                     const=variables["params"])

  def objective(state, variables, batch, key):
    x, _, target = batch
    logits, updates = adapter.apply(variables, x, train=True, rng=key)
    if loss == "mse":
      value = jnp.mean((logits - target) ** 2)
    else:
      value = optax.softmax_cross_entropy(logits, jax.nn.softmax(target)).mean()
    if wd_lambda:
      value = value + wd_lambda * sum(
          jnp.sum((p - p0) ** 2) for p, p0 in zip(jax.tree_util.tree_leaves(variables["params"]),
                                                   jax.tree_util.tree_leaves(state.const)))
    return value, (updates, {})

  def optimizer(total_steps):
    # ExponentialLR(γ) stepped once per epoch: a staircase decay every epoch's steps.
    per_epoch = max(1, total_steps // epochs)
    return optax.adam(optax.exponential_decay(lr, per_epoch, lr_decay, staircase=True))

  return Steps(init, (gradient_phase("match", objective, "match", epochs=epochs,
                                     batch_size=batch_size, optimizer=optimizer),),
               report=lambda st, h: {"final_loss": h["match"]["loss"][-1]})


@register("oracle_matching", reads=("forget", "retain", "targets"), paper=PAPER,
          defaults=DEFAULTS, bounds=BOUNDS, choices=dict(loss=LOSSES), space=SPACE, aux=AUX)
def oracle_matching(ctx: MethodContext, *, epochs, lr, batch_size, lr_decay, retain_multiple,
                    wd_lambda, loss):
  """Oracle Matching: fine-tune the original model to an oracle population's outputs.

  data.targets: the mean logits of oracles, models trained without the forget set
  (`attribution.oracle_targets`; the authors use 10), on data.forget and data.retain.

  Update: Adam on L(θ) = mean_{z ∈ F ∪ R'} ‖f(z; θ) − t(z)‖² / C + λ‖θ − θ0‖² ("mse"), or
  the cross-entropy to softmax(t) ("ce": matching the oracles' mean probabilities when t is
  `oracle_targets(..., kind="probs")`), over E epochs in batches of B, the learning rate
  multiplied by γ = lr_decay after each epoch (PyTorch's ExponentialLR). R' is
  min(retain_multiple·|F|, |R|) retain examples drawn by `default_rng(42)`.
  Reads: forget, retain and their targets.
  Defaults: the authors': 5 epochs, lr 5e-4, batch 512, γ 0.95, 3·|F| retain examples,
  λ = wd_lambda = 0, loss "mse".
  """
  return matching_steps(ctx, epochs=epochs, lr=lr, batch_size=batch_size, lr_decay=lr_decay,
                        retain_multiple=retain_multiple, wd_lambda=wd_lambda, loss=loss)


@register("dmm", reads=("forget", "retain", "targets"), paper=PAPER, defaults=DEFAULTS,
          bounds=BOUNDS, choices=dict(loss=LOSSES), space=SPACE, aux=AUX)
def dmm(ctx: MethodContext, *, epochs, lr, batch_size, lr_decay, retain_multiple, wd_lambda,
        loss):
  """Datamodel Matching (DMM): Oracle Matching with DM-Direct's prediction as the oracle.

  data.targets: `attribution.dm_direct(original logits, scores, forget)` on data.forget and
  data.retain: the original model's logits minus the forget set's summed attribution scores
  (TRAK or datamodels), a prediction of a retrained model's logits that needs no oracle.

  Update: `oracle_matching`'s (the same steps on other targets): Adam on the MSE (or
  soft-label CE) to the targets over the forget set and min(retain_multiple·|F|, |R|)
  retain examples drawn by `default_rng(42)`, the lr multiplied by lr_decay each epoch.
  Reads: forget, retain and their targets.
  Defaults: Oracle Matching's: 5 epochs, lr 5e-4, batch 512, γ 0.95, 3·|F| retain
  examples, λ = wd_lambda = 0, loss "mse".
  """
  return matching_steps(ctx, epochs=epochs, lr=lr, batch_size=batch_size, lr_decay=lr_decay,
                        retain_multiple=retain_multiple, wd_lambda=wd_lambda, loss=loss)

