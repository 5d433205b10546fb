"""DeepInversion (Yin et al. 2020, CVPR) as zero-shot unlearning: retain-class images
synthesised from θ0's BatchNorm statistics, a student trained from scratch on them (the
"deep retrain" of the zero-shot unlearning project after Chundawat et al. 2023)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import losses
from unlearn_jax import models as models_lib
from unlearn_jax.adapter import as_adapter
from unlearn_jax.methods.base import MethodContext, gradient_phase, model_state, register, sgd
from unlearn_jax.methods.noise import flat_noise
from unlearn_jax.methods.zero_shot import _classes, _shown, forget_mask
from unlearn_jax.steps import Phase, StepState, Steps, apply_gradients, with_enter


def batch_norm_inputs(model, variables, x):
  """[(BN module path, its input)] for every BatchNorm in the forward pass (eval mode)."""
  model = as_adapter(model)
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      seen.append((context.module.path, args[0]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    logits = model.logits(variables, x)
  return logits, seen


def bn_statistic_loss(model, variables, x):
  """Σ_l ‖μ_l(x) − μ_l^run‖₂ + ‖σ²_l(x) − σ²_l^run‖₂ over BatchNorm layers (DeepInversion)."""
  model = as_adapter(model)
  logits, seen = batch_norm_inputs(model, variables, x)
  total = 0.0
  for path, a in seen:
    stats = variables["batch_stats"]
    for name in path:
      stats = stats[name]
    axes = tuple(range(a.ndim - 1))
    total = total + jnp.linalg.norm(jnp.mean(a, axes) - stats["mean"]) + \
        jnp.linalg.norm(jnp.var(a, axes) - stats["var"])
  return logits, total


def total_variation(x):
  """Mean absolute difference between neighbouring pixels, per image."""
  dh = jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]).mean(axis=(1, 2, 3))
  dw = jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]).mean(axis=(1, 2, 3))
  return dh + dw


def per_class_lowest(scores, labels, static_labels, keep):
  """Indices of the `keep` fraction (at least one) of lowest `scores` within each class.

  `labels` may be traced (a permutation of `static_labels`); the per-class counts come from
  the concrete `static_labels`, so the result has a static length. Sorting by (label, score)
  puts each class's images in one block, lowest score first; we take each block's head.
  """
  classes, counts = np.unique(static_labels, return_counts=True)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  heads = np.concatenate([s + np.arange(max(1, int(round(keep * c))))
                          for s, c in zip(starts, counts)])
  order = jnp.lexsort((scores, labels))
  return order[heads]


@register("deepinversion", reads=(), scenarios=("class",), requires=("batch_norm",),
          paper=('Yin, Molchanov, Alvarez, Li, Mallya, Hoiem, Jha & Kautz, "Dreaming to Distill: Data-free '
                 'Knowledge Transfer via DeepInversion", CVPR 2020; the CS772 "Zero-Shot Machine '
                 'Unlearning" project (entropy filter, deep retrain)'),
          aux=dict(
              synthetic_images="up to 4 synthetic inputs per class (zeros where fewer), for the "
                               "run directory's image grid",
              synthetic_labels='their classes (−1 where there is no image)',
              synthetic_teacher_accuracy="the teacher's accuracy on the synthetic inputs against "
                                         "the classes they were made for"),
          defaults=dict(per_class=64, synth_batch=128, synth_steps=300, synth_lr=0.1,
                        r_bn=1.0, r_tv=1e-2, r_l2=1e-4, keep=0.5, epochs=60, lr=0.05,
                        batch_size=64),
          bounds=dict(per_class="[1, inf)", synth_batch="[1, inf)", synth_steps="[0, inf)",
                      synth_lr="(0, inf)", r_bn="[0, inf)", r_tv="[0, inf)", r_l2="[0, inf)", keep="(0, 1]",
                      epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)"))
def deepinversion(ctx: MethodContext, *, per_class, synth_batch, synth_steps, synth_lr, r_bn,
                  r_tv, r_l2, keep, epochs, lr, batch_size):
  """DeepInversion: images of the retain classes synthesised from θ0's BatchNorm statistics,
  then a student trained from scratch on them (the zero-shot unlearning project's "deep retrain").

  Synthesis: `per_class` inputs per retain class, optimised in batches of `synth_batch`
  mixed classes (Adam `synth_lr`, `synth_steps` steps, N(0, 1) start) to minimise
      CE(T(x), y) + r_bn·Σ_l (‖μ_l(x) − μ_l‖₂ + ‖σ²_l(x) − σ²_l‖₂) + r_tv·TV(x) + r_l2·mean(x²),
  μ_l, σ²_l the running statistics of T's l-th BatchNorm and μ_l(x), σ²_l(x) those of its
  input on the batch. Entropy filter, per class: of each class's images keep the `keep`
  fraction with the lowest teacher entropy (a global filter drops whole classes the teacher
  is unsure of: on CIFAR it kept no cat, deer or dog). Student: fresh weights, KL(T‖S) on the kept
  images with the teacher's
  forget-class probabilities removed (renormalised over retain classes), SGD momentum,
  cosine lr, `epochs` epochs.
  Needs a model with BatchNorm (the statistic term has nothing to match otherwise): a
  ValueError says so, before anything is traced.
  Reads: nothing (θ0 and the forget class ids). Defaults: 64 per class, batches of 128,
  300 Adam steps at 0.1, r_bn 1, r_tv 0.01, r_l2 1e-4, keep 0.5, student 60 epochs at
  lr 0.05, batch 64.
  """
  model = ctx.model
  forget, retain = _classes(ctx, "deepinversion")
  is_forget = forget_mask(ctx.num_classes, forget)

  opt = optax.adam(synth_lr)

  def init(teacher, data, key):
    del data
    if not models_lib.has_batch_norm(teacher):
      raise ValueError(f"deepinversion needs a model with BatchNorm layers (a "
                       f"'batch_stats' collection); {ctx.model_name} has none")
    k_x, k_student, k_fit = jax.random.split(key, 3)
    n_batches = -(-per_class * retain.shape[0] // synth_batch)
    labels = jax.random.permutation(k_x, jnp.asarray(static_labels(n_batches))).reshape(
        n_batches, synth_batch)
    x0 = jax.random.normal(k_x, labels.shape + tuple(ctx.input_shape))
    feeds = {"images": x0, "images/opt": jax.vmap(opt.init)(x0), "images/labels": labels}
    return StepState(model_state(model.init(k_student, ctx.input_shape)), feeds,
                     {"synthesise": k_x, "distil": k_fit}, {"teacher": teacher})

  def static_labels(n_batches):
    return np.resize(np.repeat(np.asarray(retain), per_class), (n_batches * synth_batch,))

  def synthesise(state: StepState, batch, key):
    """One Adam step on every batch of images (each batch its own optimisation)."""
    del batch, key
    teacher = state.const["teacher"]

    def loss(x, y):
      logits, bn = bn_statistic_loss(model, teacher, x)
      return (losses.cross_entropy(logits, y).mean() + r_bn * bn +
              r_tv * total_variation(x).mean() + r_l2 * jnp.mean(jnp.square(x)))

    x, s, y = state.feeds["images"], state.feeds["images/opt"], state.feeds["images/labels"]
    x, s = jax.lax.map(lambda a: apply_gradients(opt, jax.grad(loss)(a[0], a[2]), a[1], a[0]),
                       (x, s, y))
    return state._replace(feeds={**state.feeds, "images": x, "images/opt": s}), {}

  def keep_confident(state, key):
    """The entropy filter; the student's targets: θ0's logits, forget classes removed."""
    teacher = state.const["teacher"]
    images, labels = flat_noise(state, "images")
    t_logits = model.logits(teacher, images)
    p = jax.nn.softmax(t_logits)
    entropy = -jnp.sum(p * jnp.log(p + 1e-12), axis=-1)
    order = per_class_lowest(entropy, labels, static_labels(state.feeds["images"].shape[0]),
                             keep)
    kept = (images[order], jnp.where(is_forget, -1e9, t_logits[order]))  # p_forget = 0
    return state._replace(feeds={**state.feeds, "kept": kept, "kept/labels": labels[order],
                                 "teacher_accuracy": jnp.mean(
                                     jnp.argmax(t_logits, -1) == labels)})

  def kd_loss(state, v, batch, k):
    logits, updates = model.apply(v, batch[0], train=True, rng=k)
    return jnp.mean(losses.kl_rows(batch[1], logits)), (updates, {})

  distil = gradient_phase(
      "distil", kd_loss, "kept", epochs=epochs, batch_size=batch_size,
      optimizer=lambda total: sgd(lr, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                                  total_steps=total))

  def report(state, histories):
    images, labels = state.feeds["kept"][0], state.feeds["kept/labels"]
    return {"synthetic_teacher_accuracy": state.feeds["teacher_accuracy"],
            **_shown(images, labels, jnp.arange(ctx.num_classes))}

  return Steps(init, (Phase("synthesise", synthesise, steps=synth_steps, observe=False),
                      with_enter(distil, keep_confident)), report=report)
