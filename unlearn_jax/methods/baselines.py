"""Baselines: fine-tuning, gradient ascent and label poisoning
(the "Machine Unlearning" CIFAR-10 project, the MUFAC scoring notebook, "Forget with Precision").

Defaults are scaled for the small default models (the MLP on digits, the small CNN on
CIFAR subsets); the published ResNet-18 values are given in each docstring.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from unlearn_jax import losses
from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import sample_batch, steps_per_epoch
from unlearn_jax.methods.base import (MethodContext, ce_phase, gradient_phase, model_state,
                                      random_other_labels, register, sgd)
from unlearn_jax.steps import Phase, StepState, Steps, init_train_state, make_step


@register("finetune", space=dict(lr=("log", 1e-3, 1.0), weight_decay=("log", 1e-5, 0.05)),
          reads=("retain",), paper=('Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless Net: '
                                    'Selective Forgetting in Deep Networks", CVPR 2020; Warnecke, Pirch, '
                                    'Wressnegger & Rieck, "Machine Unlearning of Features and Labels", '
                                    'NDSS 2023'),
          aux=dict(
              final_loss='the retain-batch cross-entropy of the last step'),
          defaults=dict(epochs=5, lr=0.02, batch_size=64, momentum=0.9, weight_decay=5e-4),
          bounds=dict(epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)", momentum="[0, 1)",
                      weight_decay="[0, inf)"))
def finetune(ctx: MethodContext, *, epochs, lr, batch_size, momentum, weight_decay):
  """Fine-tune on the retain set (FT): catastrophic forgetting of D_f.

  Update: θ ← θ − η_t ∇ CE(θ; D_r batch), SGD momentum, cosine η_t, E epochs.
  Reads: retain. Defaults: 5 epochs, lr 0.02, momentum 0.9, weight decay 5e-4, batch 64
  (SSD repository's FT;
  "Forget with Precision" uses lr 0.001).
  """

  def init(variables, data, key):
    return StepState(model_state(variables), {"retain": data.retain}, {"finetune": key})

  return Steps(init, (ce_phase("finetune", ctx.model, "retain", epochs=epochs,
                               batch_size=batch_size, lr=lr, momentum=momentum,
                               weight_decay=weight_decay),),
               report=lambda st, h: {"final_loss": h["finetune"]["loss"][-1]})


def _ascent_update(model, tx, loss_cap):
  """Gradient ascent on the forget batch that stops for good once the batch CE exceeds
  `loss_cap` or anything turns non-finite; the carry is (train state, stopped)."""
  inner = make_step(losses.ce_loss(model, sign=-1.0), tx, guard=True)

  def update(state: StepState, batch, key):
    train_state, stopped = state.carry
    new_state, metrics = inner(train_state, batch, key)
    ce = -metrics["loss"]
    accept = (~stopped) & (ce <= loss_cap) & (metrics["nonfinite"] == 0)
    train_state = jax.tree_util.tree_map(lambda n, o: jnp.where(accept, n, o), new_state,
                                         train_state)
    return state._replace(carry=(train_state, stopped | ~accept)), {"forget_ce": ce}

  return update


@register("neggrad", space=dict(lr=("log", 1e-4, 0.3), loss_cap_factor=("linear", 0.5, 3.0)),
          reads=("forget",), paper=('Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless Net", '
                                    'CVPR 2020 (NegGrad); Thudi, Deza, Chandrasekaran & Papernot, '
                                    '"Unrolling SGD: Understanding Factors Influencing Machine '
                                    'Unlearning", EuroS&P 2022'),
          aux=dict(
              final_forget_ce="the forget-batch cross-entropy of the last step tried (accepted or "
                              "not)",
              stopped_early="1 when the ascent stopped for good before its last step (a batch's CE"
                            " passed loss_cap_factor·ln C, or a value turned non-finite); the "
                            "weights are the last accepted ones"),
          defaults=dict(epochs=5, lr=0.01, batch_size=32, grad_clip=5.0, loss_cap_factor=1.0),
          bounds=dict(epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)", grad_clip="[0, inf)",
                      loss_cap_factor="(0, inf)"))
def neggrad(ctx: MethodContext, *, epochs, lr, batch_size, grad_clip, loss_cap_factor):
  """Gradient ascent on the forget set (NegGrad / GA): minimise −CE(θ; D_f).

  Update: θ ← θ + η ∇ CE(θ; D_f batch) with global-norm clipping. Ascent is unbounded,
  so the run stops for good as soon as a batch's CE exceeds
  `loss_cap_factor · ln(num_classes)` (chance level) or any value turns non-finite;
  it returns the last accepted weights and reports `stopped_early`.
  Reads: forget. Defaults: 5 epochs, lr 0.01, batch 32, clip 5 (published: lr 1e-4..1e-3
  for ResNet-18).
  """
  loss_cap = loss_cap_factor * math.log(ctx.num_classes)
  tx = sgd(lr, momentum=0.0, grad_clip=grad_clip)

  def init(variables, data, key):
    return StepState((init_train_state(variables, tx), jnp.array(False)),
                     {"forget": data.forget}, {"ascent": key})

  return Steps(init, (Phase("ascent", _ascent_update(ctx.model, tx, loss_cap), "forget",
                            epochs=epochs, batch_size=batch_size),),
               finalize=lambda st: st.carry[0].variables,
               report=lambda st, h: {"stopped_early": st.carry[1],
                                     "final_forget_ce": h["ascent"]["forget_ce"][-1]})


RANDOM_LABEL_VARIANTS = ("interleaved", "forget_only", "whole", "hybrid")


@register("random_label", space=dict(lr=("log", 1e-4, 0.1), retain_weight=("log", 0.25, 4.0)),
          reads=("forget", "retain"),
          paper=('Graves, Nagisetty & Ganesh, "Amnesiac Machine Learning", AAAI 2021; the "Forget with '
                 'Precision" project (Krahenmann, Neubecker & Strozzi)'),
          choices=dict(variant=RANDOM_LABEL_VARIANTS),
          defaults=dict(variant="interleaved", epochs=5, lr=0.01, batch_size=64,
                        retain_weight=1.0, repair_epochs=5, repair_lr=0.001),
          bounds=dict(epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)", retain_weight="[0, inf)",
                      repair_epochs="[0, inf)", repair_lr="(0, inf)"))
def random_label(ctx: MethodContext, *, variant, epochs, lr, batch_size, retain_weight,
                 repair_epochs, repair_lr):
  """Random-label (label poisoning) unlearning: train D_f towards wrong labels.

  Each forget example gets one wrong label ỹ drawn uniformly from the other classes
  (once per run, as in Amnesiac ML: labels redrawn every step average out and the
  model keeps the true ones). Variants ("Forget with Precision"):
    * `interleaved` (default): each step minimises CE(D_f batch, ỹ) + w·CE(D_r batch, y)
      on paired batches; E epochs over D_f. Without the retain batches accuracy collapses.
    * `forget_only`: CE(D_f, ỹ) alone ("Forget with Precision": 1 epoch, lr 7e-4).
    * `whole`: one pass over D_f ∪ D_r with D_f relabelled ("Forget with Precision": 5 epochs, lr 2e-3).
    * `hybrid`: `forget_only` ("Forget with Precision": 1 epoch, lr 0.01), then FT on D_r for
      `repair_epochs` at `repair_lr` ("Forget with Precision": 5 epochs, lr 0.001).
  Reads: forget and retain. Defaults: interleaved, 5 epochs, lr 0.01, batch 64.
  """
  model, C = ctx.model, ctx.num_classes
  ce = losses.ce_loss(model)

  def interleaved_loss(state, variables, batch, key):
    xf, yf_wrong = batch
    xr, yr = sample_batch(state.feeds["retain"], key, batch_size)
    lf, lr_, updates = losses.split_forward(model, variables, xf, xr, key)
    return (losses.cross_entropy(lf, yf_wrong).mean() +
            retain_weight * losses.cross_entropy(lr_, yr).mean()), (updates, {})

  def init(variables, data, key):
    k_label, k1, k2 = jax.random.split(key, 3)
    xf, yf = data.forget
    poisoned = (xf, random_other_labels(k_label, yf, C))
    feeds = {"poisoned": poisoned, "retain": data.retain}
    if variant == "whole":   # D_f (poisoned) ∪ D_r
      xr, yr = data.retain
      feeds["poisoned"] = (jnp.concatenate([xf, xr]), jnp.concatenate([poisoned[1], yr]))
    return StepState(model_state(variables), feeds, {"poison": k1, "repair": k2})

  loss = interleaved_loss if variant == "interleaved" else lambda st, v, b, k: ce(v, b, k)
  phases = (gradient_phase("poison", loss, "poisoned", epochs=epochs, batch_size=batch_size,
                           optimizer=lambda total: sgd(lr, momentum=0.9)),)
  if variant == "hybrid":
    phases += (ce_phase("repair", model, "retain", epochs=repair_epochs, lr=repair_lr,
                        batch_size=batch_size),)
  return Steps(init, phases)


@register("neggrad_plus", space=dict(beta=("linear", 0.3, 0.999), lr=("log", 1e-3, 0.3), epochs=(5, 20)),
          reads=("forget", "retain"),
          paper=('Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine Unlearning", '
                 'NeurIPS 2023 (NegGrad+); the MUFAC scoring notebook (its advanced NegGrad)'),
          defaults=dict(beta=0.95, epochs=5, lr=0.02, batch_size=64, grad_clip=5.0),
          bounds=dict(beta="[0, 1]", epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)",
                      grad_clip="[0, inf)"))
def neggrad_plus(ctx: MethodContext, *, beta, epochs, lr, batch_size, grad_clip):
  """NegGrad+: descent on the retain set and ascent on the forget set at once.

  Update: minimise β·CE(θ; D_r batch) − (1−β)·CE(θ; D_f batch) on paired batches (the
  retain batch sampled uniformly for each forget batch), SGD momentum 0.9, clipped.
  The retain term anchors the ascent, but a non-finite step is still dropped (guard; the
  count is `nonfinite_steps`, as in every method's aux).
  Reads: forget and retain. Defaults: β 0.95, 5 epochs over D_f, lr 0.02, batch 64,
  clip 5 (published β 0.95–0.999).
  """
  model = ctx.model

  def loss(state, v, batch, k):
    xf, yf = batch
    xr, yr = sample_batch(state.feeds["retain"], k, batch_size)
    logits_f, logits_r, updates = losses.split_forward(model, v, xf, xr, k)
    lf = losses.cross_entropy(logits_f, yf).mean()
    lr_ = losses.cross_entropy(logits_r, yr).mean()
    return beta * lr_ - (1 - beta) * lf, (updates, {"forget_ce": lf})

  def init(variables, data, key):
    return StepState(model_state(variables), {"forget": data.forget, "retain": data.retain},
                     {"ascent": key})

  phase = gradient_phase("ascent", loss, "forget", epochs=epochs, batch_size=batch_size,
                         guard=True,
                         optimizer=lambda total: sgd(lr, momentum=0.9, grad_clip=grad_clip))
  return Steps(init, (phase,))


@register("l1_sparse", space=dict(alpha=("log", 1e-5, 1e-2), lr=("log", 1e-3, 0.3)),
          reads=("retain",), paper=('Jia, Liu, Ram, Yao, Liu, Liu, Sharma & Liu, "Model Sparsity Can '
                                    'Simplify Machine Unlearning", NeurIPS 2023'),
          defaults=dict(alpha=1e-3, epochs=10, lr=0.1, batch_size=64, momentum=0.9),
          bounds=dict(alpha="[0, inf)", epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)",
                      momentum="[0, 1)"))
def l1_sparse(ctx: MethodContext, *, alpha, epochs, lr, batch_size, momentum):
  """ℓ1-sparse fine-tuning: FT on D_r with a decaying ℓ1 penalty that prunes softly.

  Update: minimise CE(θ; D_r batch) + α_t·‖θ‖₁ with α_t = α·(1 − t/T) decaying linearly
  to 0 over the T steps; SGD momentum, cosine lr.
  Reads: retain. Defaults: α 1e-3, 10 epochs, lr 0.1, momentum 0.9, batch 64 (paper: α
  5e-4, lr 0.01,
  10 epochs for ResNet-18; at lr 0.01 the digits MLP keeps a forgotten class).
  """
  model = as_adapter(ctx.model)

  def loss(state, v, batch, k):
    x, y = batch
    total = epochs * steps_per_epoch(state.feeds["retain"][0].shape[0], batch_size)
    logits, updates = model.apply(v, x, train=True, rng=k)
    alpha_t = alpha * (1.0 - state.carry.step / total)
    l1 = sum(jnp.sum(jnp.abs(p)) for p in jax.tree_util.tree_leaves(v["params"]))
    return losses.cross_entropy(logits, y).mean() + alpha_t * l1, (updates, {})

  def init(variables, data, key):
    return StepState(model_state(variables), {"retain": data.retain}, {"sparse": key})

  return Steps(init, (gradient_phase(
      "sparse", loss, "retain", epochs=epochs, batch_size=batch_size,
      optimizer=lambda total: sgd(lr, momentum=momentum, schedule="cosine",
                                  total_steps=total)),))


def _fgsm_labels(model, variables, x, y, eps):
  """Nearest wrong label: argmax over the other classes of f(x + ε·sign ∇x CE)."""
  model = as_adapter(model)
  def loss(xx):
    return losses.cross_entropy(model.logits(variables, xx), y).sum()
  x_adv = x + eps * jnp.sign(jax.grad(loss)(x))
  logits = model.logits(variables, x_adv)
  logits = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.argmax(logits, -1)


@register("boundary_shrink", space=dict(eps=("log", 0.01, 1.0), lr=("log", 1e-4, 0.1)),
          reads=("forget",), paper=('Chen, Gao, Liu, Peng & Wang, "Boundary Unlearning: Rapid Forgetting '
                                    'of Deep Networks via Shifting the Decision Boundary", CVPR 2023'),
          defaults=dict(eps=0.1, epochs=5, lr=0.01, batch_size=64),
          bounds=dict(eps="(0, inf)", epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)"))
def boundary_shrink(ctx: MethodContext, *, eps, epochs, lr, batch_size):
  """Boundary shrinking: relabel each forget example with its nearest wrong class.

  y_adv = argmax_{j≠y} f_θ0(x + ε·sign ∇x CE(f_θ0(x), y)) (FGSM on the original model,
  computed once); then minimise CE(f_θ(x_f), y_adv) with SGD momentum.
  Reads: forget. Defaults: ε 0.1 (inputs are standardised), 5 epochs, lr 0.01, batch 64.
  """
  model = ctx.model

  def init(variables, data, key):
    xf, yf = data.forget
    y_adv = _fgsm_labels(model, variables, xf, yf, eps)
    return StepState(model_state(variables), {"relabelled": (xf, y_adv)}, {"shrink": key})

  return Steps(init, (ce_phase("shrink", model, "relabelled", epochs=epochs,
                               batch_size=batch_size, lr=lr, weight_decay=0.0,
                               schedule="constant"),))


@register("boundary_expand", space=dict(lr=("log", 1e-5, 0.05)),
          reads=("forget",), paper=('Chen, Gao, Liu, Peng & Wang, "Boundary Unlearning: Rapid Forgetting '
                                    'of Deep Networks via Shifting the Decision Boundary", CVPR 2023'),
          needs=("head",),
          defaults=dict(epochs=5, lr=0.002, batch_size=64),
          bounds=dict(epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)"))
def boundary_expand(ctx: MethodContext, *, epochs, lr, batch_size):
  """Boundary expanding: send D_f to an extra "shadow" class, then delete it.

  The classifier head (the adapter's `head`, a Dense layer W [d, K], b [K]) gets a
  (K+1)-th output w_s ~ N(0, std(W)²), b_s = 0: logits [f(x)·W + b, f(x)·w_s + b_s] with f
  the penultimate features (the head's input). Minimise CE(logits(x_f), K) with SGD
  momentum so the forget examples move into the shadow class's region; finally drop the
  shadow output (the K original outputs remain, trained).
  Reads: forget. Defaults: 5 epochs, lr 0.002, batch 64 (at lr 0.01 the digits MLP
  loses 21 points of retain accuracy). Needs the adapter's `head`.
  """
  C, adapter = ctx.num_classes, ctx.model
  adapter.require_head("boundary_expand")

  # The optimiser sees {"model": params, "shadow": the extra column}: SGD acts per
  # weight, so this is the widened head's update.
  def loss(state, v, batch, k):
    x, y = batch
    model_vars = {**v, "params": v["params"]["model"]}
    logits, feats, updates = adapter.features(model_vars, x, train=True, rng=k)
    extra = feats @ v["params"]["shadow"]["kernel"] + v["params"]["shadow"]["bias"]
    wide = jnp.concatenate([logits, extra], axis=-1)
    return losses.cross_entropy(wide, y).mean(), (updates, {})

  def init(variables, data, key):
    k_init, k_run = jax.random.split(key)
    kernel = adapter.head_params(variables["params"], "boundary_expand")["kernel"]
    shadow = {"kernel": jax.random.normal(k_init, kernel.shape[:-1] + (1,)) * jnp.std(kernel),
              "bias": jnp.zeros((1,), kernel.dtype)}
    xf, _ = data.forget
    wide = {**variables, "params": {"model": variables["params"], "shadow": shadow}}
    return StepState(model_state(wide), {"shadow": (xf, jnp.full(xf.shape[:1], C, jnp.int32))},
                     {"expand": k_run})

  def finalize(state):   # the K original outputs, trained; the shadow column dropped
    v = state.carry.variables
    return {**v, "params": v["params"]["model"]}

  return Steps(init, (gradient_phase("expand", loss, "shadow", epochs=epochs,
                                     batch_size=batch_size,
                                     optimizer=lambda total: sgd(lr, momentum=0.9)),),
               finalize=finalize)
