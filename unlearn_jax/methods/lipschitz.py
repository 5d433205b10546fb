"""JiT (Foster, Fogarty, Schoepf, Öztireli & Brintrup 2024): zero-shot unlearning by Lipschitz
regularisation around each forget example, with its authors' σ and lr per scenario and
model family."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unlearn_jax.adapter import as_adapter
from unlearn_jax.methods.base import MethodContext, gradient_phase, model_state, register, sgd
from unlearn_jax.steps import StepState, Steps


# The authors' σ (`lipschitz_weighting`) and η (`learning_rate`) per scenario and model
# family (jwf40/Information-Theoretic-Unlearning, src/forget_{random,full_class,subclass}_main.py:
# the "ViT" and "VGG16" branches).
JIT_DEFAULTS = {
    ("random", "transformer"): dict(sigma=0.5, lr=0.1),
    ("random", "conv"): dict(sigma=0.01, lr=3e-4),
    ("class", "transformer"): dict(sigma=0.8, lr=1.5),
    ("class", "conv"): dict(sigma=0.5, lr=3e-4),
    ("subclass", "transformer"): dict(sigma=1.5, lr=0.5),
    ("subclass", "conv"): dict(sigma=0.01, lr=3e-4),
}
JIT_FAMILIES = {"vit": "transformer", "cnn": "conv", "resnet18": "conv"}
JIT_SCENARIOS = ("random", "class", "subclass")


def jit_lipschitz_defaults(model_name: str, scenario: str) -> dict:
  """JiT's σ and lr as its authors set them for `scenario` (random | class | subclass) and
  the family of `model_name` (a library model name or spec: "vit:64-2-4" is a transformer,
  "cnn", "resnet18" conv nets; see `JIT_DEFAULTS`). `{}` for a model of neither family
  (an MLP, a user's model): the registry's defaults then stand."""
  if scenario not in JIT_SCENARIOS:
    raise ValueError(f"scenario={scenario!r} is unknown; allowed: {', '.join(JIT_SCENARIOS)}")
  family = JIT_FAMILIES.get(str(model_name).partition(":")[0])
  return dict(JIT_DEFAULTS[(scenario, family)]) if family else {}


@register("jit_lipschitz", space=dict(lr=("log", 1e-5, 2.0), sigma=("log", 0.005, 2.0), epochs=(1, 3)),
          reads=("forget",),
          paper=('Foster, Fogarty, Schoepf, Öztireli & Brintrup, "Zero-shot Machine Unlearning at Scale '
                 'via Lipschitz Regularization", arXiv 2024 (JiT)'),
          aux=dict(
              final_lipschitz="the Lipschitz estimate (output change over input change under "
                              "Gaussian input noise, per forget example) at the last step"),
          defaults=dict(lr=3e-4, sigma=0.1, num_samples=25, epochs=1, batch_size=128),
          bounds=dict(lr="(0, inf)", sigma="(0, inf)", num_samples="[1, inf)", epochs="[1, inf)",
                      batch_size="[1, inf)"))
def jit_lipschitz(ctx: MethodContext, *, lr, sigma, num_samples, epochs, batch_size):
  """JiT: smooth the model around each forget example (no retain data, no labels).

  For a forget batch x and M noisy copies x'_m = clip(x + σ·ε_m, min x, max x), ε ~ N(0, I)
  (the clip to the batch's value range as the reference's noise transform), the estimated
  local Lipschitz constant of the logits f is lowered by SGD:

      L(θ) = (1/M) Σ_m Σ_i ‖f_θ(x_i) − sg[f_θ(x'_{m,i})]‖₂ / ‖x_i − x'_{m,i}‖₂

  (sum over the batch, mean over the copies; sg = stop-gradient: only the clean pass is
  differentiated, as in the reference). The M noisy passes are one `vmap`, not a loop.
  Both passes run in eval mode: the function being smoothed is the one that predicts
  (the reference leaves its network in train mode, so BatchNorm uses batch statistics and
  moves its running means; a model with BatchNorm keeps θ0's statistics here).
  Reads: forget only (zero-shot with respect to D_r). Defaults: M 25, one plain-SGD pass
  over D_f in batches of 128 (the authors'); σ and lr as the authors set them per scenario
  and model family (`jit_lipschitz_defaults(model_name, scenario)`, which the experiments
  apply by model and scenario):

      scenario   transformer (ViT)     conv net (VGG; here cnn, resnet18)
      random     σ 0.5,  lr 0.1        σ 0.01, lr 3e-4
      class      σ 0.8,  lr 1.5        σ 0.5,  lr 3e-4
      subclass   σ 1.5,  lr 0.5        σ 0.01, lr 3e-4

  and, for models of neither family (an MLP, a user's model), the registry's σ 0.1 and lr
  3e-4 (ours): the loss divides by ‖x − x'‖ ≈ σ·√d, so on a small input (digits: d = 64)
  the conv-net σ 0.01 takes steps √(3072/64) ≈ 7× larger than on a CIFAR image.

  Search space: lr, σ and epochs 1 | 3 (more, gentler passes: `experiments.tune`).
  """
  model = as_adapter(ctx.model)      # sigma > 0: its declared bounds

  def loss(state, v, batch, key):
    x, _ = batch
    clean, _ = model.apply(v, x, train=False)
    noisy_x = jnp.clip(x[None] + sigma * jax.random.normal(key, (num_samples,) + x.shape,
                                                           x.dtype), jnp.min(x), jnp.max(x))
    noisy = jax.lax.stop_gradient(
        jax.vmap(lambda xx: model.apply(v, xx, train=False)[0])(noisy_x))
    flat = lambda a: a.reshape(a.shape[:2] + (-1,))
    in_norm = jnp.linalg.norm(flat(noisy_x - x[None]), axis=-1)
    out_norm = jnp.linalg.norm(clean[None] - noisy, axis=-1)
    ratio = jnp.sum(out_norm / jnp.maximum(in_norm, 1e-12), axis=1)
    return jnp.mean(ratio), ({}, {"lipschitz": jnp.mean(ratio) / x.shape[0]})

  def init(variables, data, key):
    return StepState(model_state(variables), {"forget": data.forget}, {"smooth": key})

  return Steps(init, (gradient_phase("smooth", loss, "forget", epochs=epochs,
                                     batch_size=batch_size, guard=True,
                                     optimizer=lambda total: sgd(lr, momentum=0.0)),),
               report=lambda st, h: {"final_lipschitz": h["smooth"]["lipschitz"][-1]})
