"""Zero-shot unlearning: no forget or retain data (the CS772 "Zero-Shot Machine Unlearning"
project, after Chundawat, Tarun, Mandal & Kankanhalli, IEEE TIFS 2023).

These methods declare `reads=()`: the runner hands them `UnlearnData(None, None)` and they
see only θ0, the model, the input shape and the ids of the classes to forget
(`MethodContext.forget_classes`). Everything they train on is synthesised from the model
itself: noise (zs_minmax_noise), a generator (gkt) or inverted BatchNorm statistics
(deepinversion).

BatchNorm: there is no real data to re-estimate statistics from, so updates of θ0
(zs_minmax_noise) run the model in eval mode and keep θ0's running statistics. Students
trained from scratch (gkt, deepinversion) learn their own statistics on synthetic batches.

Each method returns a few synthetic inputs in `aux` (`synthetic_images`,
`synthetic_labels`): the runner takes them out of the results and the report draws them as
a grid per class (`plots/synthetic_<method>.png`), so a person can see what the model
"remembers".
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import losses
from unlearn_jax.adapter import as_adapter
from unlearn_jax.methods.base import MethodContext, gradient_phase, model_state, register, sgd
from unlearn_jax.methods.noise import flat_noise, noise_feeds, noise_phase
from unlearn_jax.steps import Phase, StepState, Steps, apply_gradients, with_enter

SHOWN_PER_CLASS = 8


def _classes(ctx: MethodContext, name: str):
  """(forget classes, retain classes) as int32 arrays; a clear error without forget ids."""
  if not ctx.forget_classes:
    raise ValueError(f"{name} is zero-shot: it needs the ids of the classes to forget "
                     f"(MethodContext(..., forget_classes=(k, ...)))")
  forget = tuple(int(c) for c in ctx.forget_classes)
  retain = tuple(c for c in range(ctx.num_classes) if c not in forget)
  return jnp.asarray(forget, jnp.int32), jnp.asarray(retain, jnp.int32)


def _shown(images, labels, classes):
  """Up to SHOWN_PER_CLASS examples of each class, for the report's grid."""
  idx = jnp.concatenate([jnp.nonzero(labels == c, size=SHOWN_PER_CLASS, fill_value=-1)[0]
                         for c in classes])
  valid = idx >= 0
  return {"synthetic_images": jnp.where(valid[:, None, None, None], images[idx], 0.0),
          "synthetic_labels": jnp.where(valid, labels[idx], -1)}


def forget_mask(num_classes: int, forget) -> jax.Array:
  return jnp.zeros((num_classes,), bool).at[forget].set(True)


# ----------------------------------------------------------------------------- min-max noise
@register("zs_minmax_noise", space=dict(
                    noise_lr=("log", 0.01, 1.0), noise_reg=("log", 0.01, 1.0),
                    impair_lr=("log", 1e-4, 0.05), repair_lr=("log", 1e-4, 0.05)),
          reads=(), scenarios=("class",),
          paper=('Chundawat, Tarun, Mandal & Kankanhalli, "Zero-Shot Machine Unlearning", IEEE TIFS 2023 '
                 '(error-minimising/maximising noise); the CS772 "Zero-Shot Machine Unlearning" project'),
          aux=dict(
              synthetic_images="up to 4 synthetic inputs per class (zeros where fewer), for the "
                               "run directory's image grid",
              synthetic_labels='their classes (−1 where there is no image)'),
          defaults=dict(noise_per_class=64, noise_steps=40, noise_lr=0.1, noise_reg=0.1,
                        impair_epochs=1, impair_lr=0.005, repair_epochs=2, repair_lr=0.01,
                        batch_size=64),
          bounds=dict(noise_per_class="[1, inf)", noise_steps="[0, inf)", noise_lr="(0, inf)",
                      noise_reg="[0, inf)", impair_epochs="[0, inf)", impair_lr="(0, inf)",
                      repair_epochs="[0, inf)", repair_lr="(0, inf)", batch_size="[1, inf)"))
def zs_minmax_noise(ctx: MethodContext, *, noise_per_class, noise_steps, noise_lr, noise_reg,
                    impair_epochs, impair_lr, repair_epochs, repair_lr, batch_size):
  """Error-maximising noise for the forget classes, error-minimising noise as retain proxy.

  For each forget class f a batch N_f maximising CE(f_θ0(N), f) − λ·mean(N²), for each
  retain class r a batch M_r minimising CE(f_θ0(M), r) + λ·mean(M²) (Adam, `noise_steps`,
  lr `noise_lr`, N(0, 1) start in the normalised input space). Impair: `impair_epochs`
  of CE on {N_f labelled f} ∪ {M_r labelled r}, SGD lr `impair_lr`; repair:
  `repair_epochs` of CE on {M_r} at `repair_lr`. Eval-mode BatchNorm throughout.
  Reads: nothing (θ0 and the forget class ids). Defaults: 64 noise inputs per class,
  40 steps, Adam 0.1, λ 0.1, impair 1 epoch lr 0.005, repair 2 epochs lr 0.01, batch 64
  (the UNSIR impair lr 0.02 costs the digits MLP 26 points of RA).
  """
  model = ctx.model
  forget, retain = _classes(ctx, "zs_minmax_noise")

  lab = lambda cs: jnp.repeat(cs[:, None], noise_per_class, axis=1)

  def init(variables, data, key):
    del data  # zero-shot: always empty
    k_max, k_min, k_imp, k_rep = jax.random.split(key, 4)
    feeds = {**noise_feeds("max_noise", lab(forget), ctx.input_shape, k_max, noise_lr),
             **noise_feeds("min_noise", lab(retain), ctx.input_shape, k_min, noise_lr)}
    return StepState(model_state(variables), feeds,
                     {"max_noise": k_max, "min_noise": k_min, "impair": k_imp,
                      "repair": k_rep}, {"teacher": variables})

  def mix(state, key):
    """Impair: {N_f labelled f} ∪ {M_r labelled r}; repair: {M_r} (the retain proxy)."""
    (xn, yn), proxy = flat_noise(state, "max_noise"), flat_noise(state, "min_noise")
    impair = (jnp.concatenate([xn, proxy[0]]), jnp.concatenate([yn, proxy[1]]))
    return state._replace(feeds={**state.feeds, "impair": impair, "proxy": proxy})

  sgd_phase = lambda name, source, epochs, lr: gradient_phase(
      name, lambda st, v, b, k: eval_ce(v, b, k), source, epochs=epochs,
      batch_size=batch_size, optimizer=lambda total: sgd(lr, momentum=0.9))
  eval_ce = losses.ce_loss(model, train=False)
  return Steps(init, (
      noise_phase("max_noise", model, ctx.input_shape, noise_steps, noise_lr, noise_reg, True),
      noise_phase("min_noise", model, ctx.input_shape, noise_steps, noise_lr, noise_reg, False),
      with_enter(sgd_phase("impair", "impair", impair_epochs, impair_lr), mix),
      sgd_phase("repair", "proxy", repair_epochs, repair_lr)),
      report=lambda st, h: _shown(*st.feeds["impair"], jnp.arange(ctx.num_classes)))


# ----------------------------------------------------------------------------- GKT
class Generator(nn.Module):
  """z ∈ R^z_dim → an input in the data's normalised space.

  Dense(w) → LeakyReLU → Dense(2w) → LeakyReLU → Dense(H·W·C), reshaped; the output is
  standardised per channel over the batch, like the real inputs. Dense rather than
  transposed convolutions: XLA:CPU runs convolutions whose kernels are carried through a
  compiled loop very slowly (see `train`), and the generator is carried through one.
  """
  out_shape: Sequence[int]
  width: int = 256

  @nn.compact
  def __call__(self, z):
    h = nn.leaky_relu(nn.Dense(self.width)(z), 0.2)
    h = nn.leaky_relu(nn.Dense(2 * self.width)(h), 0.2)
    h = nn.Dense(int(np.prod(self.out_shape)))(h).reshape((z.shape[0],) + tuple(self.out_shape))
    mean = jnp.mean(h, axis=(0, 1, 2), keepdims=True)
    std = jnp.std(h, axis=(0, 1, 2), keepdims=True) + 1e-5
    return (h - mean) / std


def _activations(model, variables, x, train: bool, rng=None):
  """(logits, [Conv/Dense outputs], updates): every layer's output in call order; only
  the feature maps (`_spatial`) enter attention transfer, so the head needs no name."""
  model = as_adapter(model)
  logits, captured, updates = model.capture(
      variables, x, lambda m: isinstance(m, (nn.Conv, nn.Dense)), train=train, rng=rng)
  return logits, list(captured.values()), updates


def _spatial(acts):
  """The feature maps among the activations: attention transfer needs spatial positions."""
  return [a for a in acts if a.ndim == 4]


def attention_map(a: jax.Array) -> jax.Array:
  """Zagoruyko & Komodakis spatial attention of a feature map [B, H, W, C]: the mean over
  channels of a², flattened over H·W and ℓ2-normalised."""
  m = jnp.mean(jnp.square(a), axis=-1)
  m = m.reshape(m.shape[0], -1)
  return m / (jnp.linalg.norm(m, axis=-1, keepdims=True) + 1e-8)


@register("gkt", space=dict(
                    lr=("log", 1e-4, 1e-2), gate=("log", 1e-3, 0.1), beta=("log", 10.0, 1000.0),
                    avoid=("log", 1.0, 100.0)),
          reads=(), scenarios=("class",),
          paper=('Chundawat, Tarun, Mandal & Kankanhalli, "Zero-Shot Machine Unlearning", IEEE TIFS 2023 '
                 '(gated knowledge transfer); Micaelli & Storkey, "Zero-shot Knowledge Transfer via '
                 'Adversarial Belief Matching", NeurIPS 2019'),
          aux=dict(
              gate_pass_rate="the mean fraction of generated samples the gate let into the "
                             "student's loss",
              synthetic_images="up to 4 synthetic inputs per class (zeros where fewer), for the "
                               "run directory's image grid",
              synthetic_labels='their classes (−1 where there is no image)'),
          defaults=dict(cycles=300, student_steps=10, batch_size=256, z_dim=128, lr=1e-3,
                        gate=0.01, beta=250.0, grad_clip=5.0, avoid=10.0),
          bounds=dict(cycles="[1, inf)", student_steps="[1, inf)", batch_size="[1, inf)", z_dim="[1, inf)",
                      lr="(0, inf)", gate="(0, 1]", beta="[0, inf)", grad_clip="[0, inf)",
                      avoid="[0, inf)"))
def gkt(ctx: MethodContext, *, cycles, student_steps, batch_size, z_dim, lr, gate, beta,
        grad_clip, avoid):
  """Gated knowledge transfer: a generator-driven distillation that never shows a forget class.

  A generator G(z), z ~ N(0, I_z_dim), makes pseudo-batches x̃. Per cycle: one generator
  step maximising KL(T(x̃)‖S(x̃)), then `student_steps` student steps minimising, over the
  *gated* samples (teacher probability of every forget class ≤ `gate`),
      KL(T(x̃)‖S(x̃)) + β·Σ_l ‖a_S,l(x̃) − a_T,l(x̃)‖²,
  a = `attention_map` of each conv layer's output (spatial attention: a model without
  feature maps, the MLP, has no attention term). Teacher T = θ0 (eval mode); student S
  from a fresh initialisation (the key). Adam with gradient clipping for both. Ours: the
  generator's loss also carries `avoid`·mean p_T(forget classes | x̃); without it the
  adversarial generator settles where the teacher sees a forget class, the gate drops
  almost every sample and the student learns nothing.
  Reads: nothing (θ0 and the forget class ids). Defaults: 300 cycles of 1 + 10 steps,
  batch 256, z 128, Adam 1e-3, gate 0.01, β 250, clip 5 (the paper's values, except
  the number of cycles: the paper runs thousands; raise `cycles` on accelerators),
  avoid 10. Cost: 3,300 steps of batch 256 from scratch — far above retraining a small
  model on a small dataset (digits MLP: ~55× retrain); it pays only where retraining
  on the real data is expensive or impossible.
  """
  model = ctx.model
  forget, _ = _classes(ctx, "gkt")
  gen = Generator(ctx.input_shape)
  tx = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(lr))
  is_forget = forget_mask(ctx.num_classes, forget)

  def init(teacher, data, key):
    del data
    k_gen, k_student, k_loop = jax.random.split(key, 3)
    g_params = gen.init(k_gen, jnp.zeros((1, z_dim)))["params"]
    student = model.init(k_student, ctx.input_shape)
    carry = (g_params, tx.init(g_params), student, tx.init(student["params"]))
    return StepState(carry, {}, {"cycle": k_loop, "shown": key}, {"teacher": teacher})

  def cycle(state: StepState, batch, k):
    """One generator step, then `student_steps` student steps (unrolled: no loop-carried
    conv kernels on CPU)."""
    del batch
    teacher = state.const["teacher"]
    g_params, g_opt, student, s_opt = state.carry
    keys = jax.random.split(k, student_steps + 1)

    def teacher_out(x):
      logits, acts, _ = _activations(model, teacher, x, train=False)
      return jax.lax.stop_gradient(logits), [jax.lax.stop_gradient(attention_map(a))
                                             for a in _spatial(acts)]

    def gen_loss(gp):
      x = gen.apply({"params": gp}, jax.random.normal(keys[0], (batch_size, z_dim)))
      t_logits = model.logits(teacher, x)
      s_logits = model.apply(student, x, train=True, rng=keys[0])[0]
      p_f = jnp.sum(jnp.where(is_forget, jax.nn.softmax(t_logits), 0.0), axis=-1)
      return -jnp.mean(losses.kl_rows(t_logits, s_logits)) + avoid * jnp.mean(p_f)

    g_params, g_opt = apply_gradients(tx, jax.grad(gen_loss)(g_params), g_opt, g_params)
    kept = jnp.float32(0)
    for i in range(student_steps):
      x = gen.apply({"params": g_params}, jax.random.normal(keys[i + 1], (batch_size, z_dim)))
      t_logits, t_att = teacher_out(x)
      p_forget = jnp.max(jnp.where(is_forget, jax.nn.softmax(t_logits), 0.0), axis=-1)
      w = (p_forget <= gate).astype(jnp.float32)

      def student_loss(params, k=keys[i + 1]):
        s_logits, acts, stats = _activations(model, {**student, "params": params}, x, True, k)
        at = sum((jnp.sum(jnp.square(attention_map(a) - t), axis=-1)
                  for a, t in zip(_spatial(acts), t_att)), jnp.zeros(x.shape[0]))
        per = losses.kl_rows(t_logits, s_logits) + beta * at
        return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0), stats

      grads, stats = jax.grad(student_loss, has_aux=True)(student["params"])
      params, s_opt = apply_gradients(tx, grads, s_opt, student["params"])
      student = {**student, **stats, "params": params}
      kept = kept + jnp.mean(w)
    return state._replace(carry=(g_params, g_opt, student, s_opt)), {
        "gate_pass_rate": kept / student_steps}

  def report(state, histories):
    x = gen.apply({"params": state.carry[0]},
                  jax.random.normal(state.keys["shown"], (4 * batch_size, z_dim)))
    labels = jnp.argmax(model.logits(state.const["teacher"], x), axis=-1)
    return {"gate_pass_rate": jnp.mean(histories["cycle"]["gate_pass_rate"]),
            **_shown(x, labels, jnp.arange(ctx.num_classes))}

  return Steps(init, (Phase("cycle", cycle, steps=cycles),),
               finalize=lambda state: state.carry[2], report=report)
