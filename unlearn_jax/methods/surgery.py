"""Weight surgery: dampen, perturb, mask or reinitialise the weights that carry D_f.

Importances are computed in eval mode (BatchNorm uses its running statistics) with the
weights held fixed, over fixed-order batches whose last batch is short, as the reference
loaders' are (`batched_mean`: a mean of batch statistics; `example_mean`: an exact mean
over examples).
"""

from __future__ import annotations

import flax.linen as nn
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from unlearn_jax import train as train_lib
from unlearn_jax.adapter import as_adapter
from unlearn_jax.methods.base import (MethodContext, UnlearnData, batched_mean, example_mean,
                                      weighted_batch_mean,
                                      finetune_on, fixed_batches, make_step, masked_mean,
                                      random_other_labels, register, run_epochs, sample_batch,
                                      sgd, subsample, ce_loss)

tree_map = jax.tree_util.tree_map


def _ce_grad(model, variables, x, y, valid=None):
  """∇θ of the mean CE over the batch (over its `valid` rows when given), eval mode."""
  model = as_adapter(model)
  def loss(params):
    ce = train_lib.cross_entropy(model.logits({**variables, "params": params}, x), y)
    return ce.mean() if valid is None else masked_mean(ce, valid)
  return jax.grad(loss)(variables["params"])


def weight_importance(model, variables, data, batch_size: int, kind: str = "batch"):
  """Diagonal importance of each weight for the data.

  * `batch` (SSD's reference code): mean over the ⌈n/B⌉ minibatches of
    (∇θ mean-batch CE)², the last batch short (its mean over its own rows).
  * `fisher`: the exact diagonal empirical Fisher, mean over the n examples of (∇θ CE_i)²
    (per-example gradients through `vmap(grad)`).
  * `label_free` (LFSSD's reference code): mean over minibatches of |∇θ mean_x ‖f(x)‖²|.
  """
  model = as_adapter(model)
  if kind == "batch":
    return batched_mean(lambda b, valid: tree_map(jnp.square,
                                                  _ce_grad(model, variables, *b, valid)),
                        data, batch_size)
  if kind == "fisher":
    def per_example(b):
      per_ex = jax.vmap(lambda x, y: _ce_grad(model, variables, x[None], y[None]))(*b)
      return tree_map(jnp.square, per_ex)
    return example_mean(per_example, data, batch_size)
  if kind == "label_free":
    def fn(b, valid):
      def sq_norm(params):
        out = model.logits({**variables, "params": params}, b[0])
        return masked_mean(jnp.sum(jnp.square(out), axis=-1), valid)
      return tree_map(jnp.abs, jax.grad(sq_norm)(variables["params"]))
    return batched_mean(fn, data, batch_size)
  raise ValueError(f"importance kind {kind!r} is unknown; allowed: batch, fisher, label_free")


def dampen(params, imp_forget, imp_all, alpha: float, lam: float):
  """SSD's rule: where I_f > α·I_D, θ ← min(λ·I_D/I_f, 1)·θ; elsewhere θ unchanged."""
  def one(p, i_f, i_d):
    selected = i_f > alpha * i_d
    factor = jnp.minimum(lam * i_d / jnp.where(selected, i_f, 1.0), 1.0)
    return jnp.where(selected, factor * p, p)
  return tree_map(one, params, imp_forget, imp_all)


SSD_UNIONS = ("ordered", "shuffled")


def union_set(forget, retain, key, order: str = "ordered"):
  """D = D_r ∪ D_f for SSD-style importances on D.

  `ordered` (SSD's reference code): the unshuffled concatenation retain-then-forget, so the
  last ⌈|D_f|/B⌉ batches are forget-only. `shuffled`: a random order (our earlier default):
  in mixed batches the forget gradient is diluted, I_D is smaller and more weights pass
  I_f > α·I_D. The order matters because batch importances average *squared batch-mean*
  gradients."""
  if order not in SSD_UNIONS:
    raise ValueError(f"union={order!r} is unknown; allowed: {', '.join(SSD_UNIONS)}")
  both = tree_map(lambda u, v: jnp.concatenate([u, v]), retain, forget)
  if order == "ordered":
    return both
  perm = jax.random.permutation(key, jax.tree_util.tree_leaves(both)[0].shape[0])
  return tree_map(lambda a: a[perm], both)


SSD_IMPORTANCE = ("batch", "fisher")



@register("ssd", space=dict(alpha=("log", 0.5, 50.0), lam=("log", 0.1, 10.0)),
          reads=("forget", "retain"), paper="Foster et al. 2024 (Selective Synaptic Dampening)",
          choices=dict(importance=SSD_IMPORTANCE, union=SSD_UNIONS),
          defaults=dict(alpha=5.0, lam=1.0, importance="batch", union="ordered",
                        forget_batch_size=128, batch_size=64))
def ssd(ctx: MethodContext, *, alpha, lam, importance, union, forget_batch_size, batch_size):
  """Selective Synaptic Dampening: shrink weights far more important to D_f than to D.

  I_f = importance on D_f, I_D on D = D_r ∪ D_f (`importance`: `batch` = mean over
  minibatches of squared minibatch-mean CE gradients, the reference code; `fisher` = exact
  diagonal empirical Fisher from per-example gradients). For each weight with I_f > α·I_D:
  θ ← min(λ·I_D/I_f, 1)·θ. No gradient step; BatchNorm statistics are left as they are.
  Reads: forget and retain. Defaults: α 5, λ 1, union ordered, batches 128 (D_f) and 64
  (D). The paper's α is 10; with the reference's loaders it selects too few weights on the
  small models to erase a class, hence 5 (README, "Parity with the reference code").
  Importances use SSD's reference loaders (if-loops/selective-synaptic-dampening,
  `forget_random_main.py`): D_f in order with batch `forget_batch_size` (128), D = D_r then
  D_f unshuffled (`union="ordered"`) with batch `batch_size` (64 in its CIFAR scripts); each
  last batch is short. `union="shuffled"` shuffles D instead.
  """
  def unlearn(variables, data: UnlearnData, key):
    imp_f = weight_importance(ctx.model, variables, data.forget, forget_batch_size, importance)
    imp_d = weight_importance(ctx.model, variables, union_set(data.forget, data.retain, key, union),
                              batch_size, importance)
    params = dampen(variables["params"], imp_f, imp_d, alpha, lam)
    changed = sum(jnp.sum(p != q) for p, q in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(variables["params"])))
    return {**variables, "params": params}, {"dampened_weights": changed}

  return unlearn


def assd_alpha(imp_forget, imp_all, forget_fraction: float):
  """ASSD's selection threshold: the p-th percentile of the finite ratios I_f/I_D over all
  weights, p = 100 − ln(1 + 100·|D_f|/|D|), so SSD's test I_f > α·I_D passes the top
  ln(1 + 100·|D_f|/|D|) % of weights by relative importance."""
  p = 100.0 - math.log1p(100.0 * forget_fraction)
  ratios = jnp.concatenate([jnp.ravel(f / d) for d, f in zip(jax.tree_util.tree_leaves(imp_all),
                                                             jax.tree_util.tree_leaves(imp_forget))])
  return jnp.nanquantile(jnp.where(jnp.isfinite(ratios), ratios, jnp.nan), p / 100.0)


ASSD_IMPORTANCE_SETS = ("retain", "full")


@register("assd", reads=("forget", "retain"),
          paper="Schoepf, Foster & Brintrup, \"Parameter-tuning-free data entry error "
                "unlearning with adaptive selective synaptic dampening\", 2024 (ASSD)",
          choices=dict(importance=SSD_IMPORTANCE, union=SSD_UNIONS,
                       importance_set=ASSD_IMPORTANCE_SETS),
          defaults=dict(importance="batch", importance_set="retain", union="ordered",
                        forget_batch_size=128, batch_size=64))
def assd(ctx: MethodContext, *, importance, importance_set, union, forget_batch_size,
         batch_size):
  """Adaptive SSD: SSD with its threshold α read off the importances, λ = 1: nothing to tune.

  As the authors' code runs it (if-loops/adaptive-selective-synaptic-dampening,
  `error_unlearning.ipynb`): I_f is SSD's importance on D_f and I_D on the **retain** set
  (`importance_set="retain"`); `"full"` computes I_D on D = D_r ∪ D_f in SSD's order
  (`union`), as SUPREME's port does. α = the p-th percentile (NumPy's linear
  interpolation) of the ratios I_f/I_D over every weight, NaN and ±inf dropped, with
  p = 100 − ln(1 + 100·|D_f|/(|D_r| + |D_f|)); then SSD's rule with λ = 1: where
  I_f > α·I_D, θ ← min(I_D/I_f, 1)·θ. Importances: mean over unshuffled batches of the
  squared batch-mean CE gradient (`importance="batch"`, SSD's `calc_importance`).
  Reads: forget and retain. Defaults: I_D on D_r, batches 128 (D_f) and 64 (D_r or D).
  Aux: `alpha` (the threshold chosen) and `dampened_weights`.
  """
  ratio_set = importance_set

  def unlearn(variables, data: UnlearnData, key):
    imp_f = weight_importance(ctx.model, variables, data.forget, forget_batch_size, importance)
    reference = data.retain if ratio_set == "retain" else union_set(data.forget, data.retain,
                                                                    key, union)
    imp_d = weight_importance(ctx.model, variables, reference, batch_size, importance)
    n_f, n_r = data.forget[0].shape[0], data.retain[0].shape[0]
    alpha = assd_alpha(imp_f, imp_d, n_f / (n_f + n_r))
    params = dampen(variables["params"], imp_f, imp_d, alpha, 1.0)
    changed = sum(jnp.sum(p != q) for p, q in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(variables["params"])))
    return {**variables, "params": params}, {"alpha": alpha, "dampened_weights": changed}

  return unlearn


@register("lfssd", space=dict(alpha=("log", 0.5, 50.0), lam=("log", 0.1, 10.0)),
          reads=("forget", "retain"), paper="Foster et al. 2024 (Loss-Free Machine Unlearning)",
          choices=dict(union=SSD_UNIONS),
          defaults=dict(alpha=5.0, lam=1.0, union="ordered", forget_batch_size=128,
                        batch_size=64))
def lfssd(ctx: MethodContext, *, alpha, lam, union, forget_batch_size, batch_size):
  """Label-free SSD: SSD's dampening with importances that need no labels.

  Importance = mean over minibatches of |∇θ mean_x ‖f(x)‖²| (the sensitivity of the
  output norm), on D_f and on D = D_r ∪ D_f; then θ ← min(λ·I_D/I_f, 1)·θ where
  I_f > α·I_D. Labels are never read (the label arrays are ignored).
  Reads: forget and retain (inputs only). Defaults: α 5, λ 1, union ordered, batches 128
  (D_f) and 64 (D), as SSD's (α 5 rather than the paper's 10, as for `ssd`).
  Importances use SSD's reference loaders (if-loops/selective-synaptic-dampening,
  `forget_random_main.py`): D_f in order with batch `forget_batch_size` (128), D = D_r then
  D_f unshuffled (`union="ordered"`) with batch `batch_size` (64 in its CIFAR scripts); each
  last batch is short. `union="shuffled"` shuffles D instead.
  """

  def unlearn(variables, data: UnlearnData, key):
    imp_f = weight_importance(ctx.model, variables, data.forget, forget_batch_size, "label_free")
    imp_d = weight_importance(ctx.model, variables, union_set(data.forget, data.retain, key, union),
                              batch_size, "label_free")
    return {**variables, "params": dampen(variables["params"], imp_f, imp_d, alpha, lam)}, {}

  return unlearn


FISHER_CLASS_HEADS = ("zero", "noise")


@register("fisher_forgetting", space=dict(alpha=("log", 1e-9, 1e-2)),
          reads=("retain",), paper="Golatkar et al. 2020 (Eternal Sunshine)",
          choices=dict(class_head=FISHER_CLASS_HEADS),
          defaults=dict(alpha=1e-6, max_examples=2000, batch_size=128, class_head="zero"))
def fisher_forgetting(ctx: MethodContext, *, alpha, max_examples, batch_size, class_head):
  """Fisher forgetting: Gaussian noise, largest where the retain set does not care.

  F_r = diagonal empirical Fisher on (a random subset of at most `max_examples` of) D_r,
  from per-example gradients; θ = θ0 + sqrt(α·min(1/(F_r + 1e-8), 1e3))·ε, ε ~ N(0, I).
  Class forgetting (`MethodContext.forget_classes` given) with `class_head="zero"` (the
  default) also does what the reference's class branch does (Golatkar et al.'s
  `get_mean_var`: the forgotten class's output row gets mean 0 and variance 1e-4·10): the
  head's kernel column and bias of each forgotten class become N(0, 1e-3) draws, so the
  class's logit carries no learned evidence. It needs the adapter's `head`; `"noise"`
  keeps the head like every other layer (and needs no head).
  Reads: retain. Defaults: α 1e-6 (published 1e-6..1e-8 for larger nets), 2000 examples,
  class_head "zero". In the random scenario the head branch does not apply. `batch_size`
  (128) only chunks the per-example gradients (the Fisher is the exact mean over the
  examples); on XLA's CPU backend chunks below 64 examples are an order of magnitude
  slower.
  Behaviour at the defaults is measured, not stated here: tests/expected/
  behaviour_digits.csv (digits, both scenarios) and the README's results tables.
  """
  model = as_adapter(ctx.model)
  zero_head = bool(ctx.forget_classes) and class_head == "zero"
  if zero_head:
    model.require_head("fisher_forgetting (class_head='zero'; class_head='noise' needs none)")
  classes = jnp.asarray(ctx.forget_classes, jnp.int32)

  def unlearn(variables, data: UnlearnData, key):
    k_sub, k_noise, k_head = jax.random.split(key, 3)
    n = data.retain[0].shape[0]
    retain = subsample(data.retain, k_sub, min(1.0, max_examples / n))
    fisher = weight_importance(model, variables, retain, batch_size, "fisher")
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(k_noise, len(leaves))
    f_leaves = jax.tree_util.tree_leaves(fisher)
    noisy = [p + jnp.sqrt(alpha * jnp.minimum(1.0 / (f + 1e-8), 1e3)) *
             jax.random.normal(k, p.shape, p.dtype) for p, f, k in zip(leaves, f_leaves, keys)]
    params = jax.tree_util.tree_unflatten(treedef, noisy)
    if zero_head:
      head = dict(model.head_params(params, "fisher_forgetting"))
      k_w, k_b = jax.random.split(k_head)
      std = math.sqrt(1e-3)
      kernel = head["kernel"]
      head["kernel"] = kernel.at[:, classes].set(
          std * jax.random.normal(k_w, (kernel.shape[0], classes.size), kernel.dtype))
      if "bias" in head:
        head["bias"] = head["bias"].at[classes].set(
            std * jax.random.normal(k_b, (classes.size,), head["bias"].dtype))
      params = model.replace_head(params, head)
    return {**variables, "params": params}, {}

  return unlearn


def top_fraction_mask(scores, keep: float):
  """A tree of bools marking exactly ⌊N·keep⌋ of the N leaves' entries: those with the
  largest scores, ties broken by position in the flattened tree (a stable sort), as
  SalUn's reference (`generate_mask.py`: ranks from an argsort, rank < ⌊N·keep⌋)."""
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  flat = jnp.concatenate([jnp.ravel(g) for g in leaves])
  n = flat.shape[0]
  order = jnp.argsort(-flat, stable=True)
  ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  # ⌊N·keep⌋ in float64 arithmetic on the host when keep is a Python number; `keep` may
  # also be traced (a searched hyperparameter), then in float32.
  k = int(n * keep) if isinstance(keep, (int, float)) else jnp.floor(n * keep)
  marked = ranks < k
  out, start = [], 0
  for g in leaves:
    out.append(marked[start:start + g.size].reshape(g.shape))
    start += g.size
  return jax.tree_util.tree_unflatten(treedef, out)


def saliency_mask(model, variables, forget, batch_size: int, keep: float):
  """1 for exactly ⌊N·keep⌋ weights: the largest |∇θ CE(D_f)|, the gradient a mean over
  fixed-order forget batches (the last one short), as SalUn's reference accumulates it."""
  model = as_adapter(model)
  grads = batched_mean(lambda b, valid: _ce_grad(model, variables, *b, valid), forget,
                       batch_size)
  return top_fraction_mask(tree_map(jnp.abs, grads), keep)


SALUN_SCHEDULES = ("paired", "reference")


@register("salun", space=dict(keep=("linear", 0.1, 0.9), lr=("log", 1e-4, 0.1)),
          reads=("forget", "retain"), paper="Fan et al. 2024 (SalUn)",
          choices=dict(schedule=SALUN_SCHEDULES),
          defaults=dict(keep=0.5, schedule="paired", epochs=10, lr=0.013, batch_size=64,
                        weight_decay=5e-4))
def salun(ctx: MethodContext, *, keep, schedule, epochs, lr, batch_size, weight_decay):
  """SalUn: random-label unlearning restricted to the forget-salient weights.

  Mask m = 1 for exactly ⌊N·keep⌋ of the N weights, those with the largest |∇θ CE(θ0; D_f)|
  (ties by position, as the reference's sort). Then random-label training, SGD momentum
  with weight decay, where the mask is applied to the *result* of the optimizer step:
  θ ← m ⊙ θ_new + (1 − m) ⊙ θ, so masked-out weights stay bitwise θ0 (weight decay and
  momentum cannot move them; the reference masks gradients, and its weight decay still
  shrinks masked weights). BatchNorm statistics are not masked. `schedule`:
    * `paired` (default): E epochs over D_f, each example with one wrong label drawn once
      uniformly from the other classes, each D_f batch trained together with a random
      D_r batch. Costs E·|D_f|/B steps: the 10% random scenario is 10× cheaper than the
      reference's schedule, and a label equal to the truth teaches nothing to forget.
    * `reference` (OPTML-Group/Unlearn-Saliency, `RL.py`, CIFAR-10 branch): per epoch, one
      pass over D_f with labels redrawn every batch uniformly over *all* classes (the true
      one included), then one pass over all of D_r with true labels.
  Reads: forget and retain. Defaults: keep 0.5, paired, 10 epochs, lr 0.013, batch 64,
  wd 5e-4.
  Behaviour at the defaults is measured, not stated here: tests/expected/
  behaviour_digits.csv (digits, both scenarios) and the README's results tables.
  """
  model, C = ctx.model, ctx.num_classes

  def unlearn(variables, data: UnlearnData, key):
    k_label, k_run = jax.random.split(key)
    mask = saliency_mask(model, variables, data.forget, batch_size, keep)
    tx = sgd(lr, momentum=0.9, weight_decay=weight_decay)
    kept = sum(jnp.sum(m) for m in jax.tree_util.tree_leaves(mask))
    if schedule == "reference":
      variables = _salun_reference_epochs(model, C, variables, data, tx, mask, k_run, epochs,
                                          batch_size)
      return variables, {"salient_weights": kept}
    xf, yf = data.forget
    poisoned = (xf, random_other_labels(k_label, yf, C))

    def loss_fn(v, batch, k):
      xb, yb = batch
      xr, yr = sample_batch(data.retain, k, batch_size)
      logits, updates = model.apply(v, jnp.concatenate([xb, xr]), train=True, rng=k)
      return train_lib.cross_entropy(logits, jnp.concatenate([yb, yr])).mean(), (updates, {})

    variables, _ = run_epochs(make_step(loss_fn, tx, mask=mask), variables, tx, poisoned,
                              k_run, epochs, batch_size)
    return variables, {"salient_weights": kept}

  return unlearn


def _salun_reference_epochs(model, num_classes, variables, data, tx, mask, key, epochs,
                            batch_size):
  """SalUn's reference schedule: per epoch a D_f pass (labels uniform over all classes,
  redrawn per batch) then a D_r pass, one optimizer state throughout, one `lax.scan`."""
  def forget_loss(v, batch, k):
    x, y = batch
    k_label, k_model = jax.random.split(k)
    labels = jax.random.randint(k_label, y.shape, 0, num_classes)
    logits, updates = model.apply(v, x, train=True, rng=k_model)
    return train_lib.cross_entropy(logits, labels).mean(), (updates, {})

  forget_step = make_step(forget_loss, tx, mask=mask)
  retain_step = make_step(ce_loss(model), tx, mask=mask)

  def epoch(state, e):
    k = jax.random.fold_in(key, e)
    state, _ = train_lib.scan_epochs(forget_step, state, data.forget, jax.random.fold_in(k, 0),
                                     1, batch_size)
    state, _ = train_lib.scan_epochs(retain_step, state, data.retain, jax.random.fold_in(k, 1),
                                     1, batch_size)
    return state, None

  state, _ = jax.lax.scan(epoch, train_lib.init_train_state(variables, tx), jnp.arange(epochs))
  return state.variables


def _path_in(path: tuple, modules) -> bool:
  """Whether a flattened variable path lies inside one of the module paths."""
  return any(path[:len(m)] == tuple(m) for m in modules)


def reset_modules(variables: dict, fresh: dict, modules) -> dict:
  """`variables` with every leaf under one of the module paths (in every collection)
  taken from `fresh`."""
  out = {}
  for col, tree in variables.items():
    flat = traverse_util.flatten_dict(dict(tree))
    fresh_flat = traverse_util.flatten_dict(dict(fresh.get(col, {})))
    out[col] = traverse_util.unflatten_dict(
        {p: (fresh_flat[p] if _path_in(p, modules) and p in fresh_flat else v)
         for p, v in flat.items()})
  return out


@register("reinit", space=dict(lr=("log", 1e-3, 0.3)),
          reads=("retain",), paper="Goel et al. 2022 (CF-k / EU-k)",
          defaults=dict(num_layers=1, epochs=5, lr=0.02, batch_size=64))
def reinit(ctx: MethodContext, *, num_layers, epochs, lr, batch_size):
  """Reinitialise the last k layers, then fine-tune on D_r (EU-k style).

  k = 1 is the classifier head (the adapter's `head`). For k > 1 the layers are the
  modules with a `kernel` in the order a forward pass calls them
  (`ModelAdapter.layers`), each with the normalisation that follows it; the last k
  (which must end at the head) are replaced, in every collection, by fresh initial
  weights drawn from the key; then CE fine-tuning on D_r (SGD momentum, cosine lr).
  Reads: retain. Defaults: k 1 (the classifier head), 5 epochs, lr 0.02, batch 64.
  Needs the adapter's `head`.
  """
  adapter = ctx.model
  head = adapter.require_head("reinit")
  if num_layers < 1:
    raise ValueError(f"reinit: num_layers={num_layers} must be >= 1")

  def unlearn(variables, data: UnlearnData, key):
    k_init, k_ft = jax.random.split(key)
    fresh = adapter.init(k_init, ctx.input_shape)
    if num_layers == 1:
      modules = [head]
    else:
      layers = adapter.layers(variables, ctx.input_shape)
      if not layers or layers[-1][0] != head:
        raise ValueError(f"reinit: the last layer a forward pass calls is "
                         f"{layers[-1][0] if layers else None}, not the head {head}")
      if num_layers > len(layers):
        raise ValueError(f"reinit: num_layers={num_layers}, but the model has "
                         f"{len(layers)} layers")
      modules = [m for group in layers[-num_layers:] for m in group]
    new = reset_modules(variables, fresh, modules)
    new, _ = finetune_on(adapter, new, data.retain, k_ft, epochs=epochs, lr=lr,
                         batch_size=batch_size)
    return new, {}

  return unlearn


@register("gisa", space=dict(alpha=("log", 0.5, 50.0), step=("log", 0.01, 3.0), repair_lr=("log", 1e-3, 0.1)),
          reads=("forget", "retain"),
          paper="seed 002 (MUFAC local scoring); our interpretation, no public definition",
          choices=dict(union=SSD_UNIONS),
          defaults=dict(alpha=5.0, step=1.0, repair_epochs=1, repair_lr=0.01, union="ordered",
                        forget_batch_size=128, batch_size=64))
def gisa(ctx: MethodContext, *, alpha, step, repair_epochs, repair_lr, union, forget_batch_size,
         batch_size):
  """GISA (Gradient-Informed Synaptic Adjustment) — our interpretation of seed 002.

  No public definition exists. Synapses are selected as in SSD (importances on D_f and
  on D = D_r ∪ D_f with SSD's batches and order, selected where I_f > α·I_D); instead of dampening, each selected weight
  takes a gradient-ascent step on D_f scaled per weight by s_i = 1 − I_D,i/I_f,i ∈ (0, 1]:
      θ_i ← θ_i + η·s_i·ĝ_i,  ĝ = ∇θ CE(D_f) / max|∇θ CE(D_f)| (normalised per tensor),
  unselected weights unchanged; then a short repair FT on D_r.
  Reads: forget and retain. Defaults: α 5 (SSD's), η 1.0 (× the tensor's max |θ|), 1 repair
  epoch at lr 0.01, union ordered, batches 128 (D_f importance and gradient) and 64 (D,
  repair).
  """

  def unlearn(variables, data: UnlearnData, key):
    k_mix, k_ft = jax.random.split(key)
    model = ctx.model
    imp_f = weight_importance(model, variables, data.forget, forget_batch_size, "batch")
    imp_d = weight_importance(model, variables, union_set(data.forget, data.retain, k_mix, union),
                              batch_size, "batch")
    grad_f = batched_mean(lambda b, valid: _ce_grad(model, variables, *b, valid), data.forget,
                          forget_batch_size)

    def adjust(p, i_f, i_d, g):
      selected = i_f > alpha * i_d
      scale = jnp.where(selected, 1.0 - i_d / jnp.where(selected, i_f, 1.0), 0.0)
      g_hat = g / (jnp.max(jnp.abs(g)) + 1e-12)
      return p + step * jnp.max(jnp.abs(p)) * scale * g_hat

    params = tree_map(adjust, variables["params"], imp_f, imp_d, grad_f)
    out, _ = finetune_on(model, {**variables, "params": params}, data.retain, k_ft,
                         epochs=repair_epochs, lr=repair_lr, batch_size=batch_size)
    return out, {}

  return unlearn


def _overfit(model, variables, data, key, epochs, lr, batch_size):
  out, _ = finetune_on(model, variables, data, key, epochs=epochs, lr=lr,
                       batch_size=batch_size, weight_decay=0.0, schedule="constant")
  return out["params"]


def _low_change_mask(before, after, quantile, only=None):
  """True where |after − before| is below the tensor-global `quantile` (over the
  parameters under the module paths in `only`, or all); those weights are reinitialised."""
  flat_b = traverse_util.flatten_dict(dict(before))
  flat_a = traverse_util.flatten_dict(dict(after))
  scope = [p for p in flat_b if only is None or _path_in(p, only)]
  deltas = [jnp.abs(flat_a[p] - flat_b[p]).ravel() for p in scope]
  threshold = jnp.quantile(jnp.concatenate(deltas), quantile)
  return traverse_util.unflatten_dict(
      {p: (jnp.abs(flat_a[p] - b) < threshold if p in scope else jnp.zeros(b.shape, bool))
       for p, b in flat_b.items()})


PRUNE_SPACE = dict(quantile=("linear", 0.1, 0.95), overfit_lr=("log", 1e-3, 0.1), lr=("log", 1e-4, 0.1))
PRUNE_DOC_DEFAULTS = dict(quantile=0.3, overfit_epochs=5, overfit_lr=0.01, epochs=5, lr=0.001,
                          batch_size=64)


def _prune_factory(scope: str):
  def factory(ctx: MethodContext, *, quantile, overfit_epochs, overfit_lr, epochs, lr,
              batch_size):
    model = ctx.model
    if scope == "last_layer":
      model.require_head("prune_last_layer")

    def unlearn(variables, data: UnlearnData, key):
      k_over, k_over2, k_sub, k_init, k_ft = jax.random.split(key, 5)
      params = variables["params"]
      only = None if scope != "last_layer" else [model.require_head("prune_last_layer")]
      over_f = _overfit(model, variables, data.forget, k_over, overfit_epochs, overfit_lr,
                        batch_size)
      mask = _low_change_mask(params, over_f, quantile, only)
      if scope == "complex":
        n_f = jax.tree_util.tree_leaves(data.forget)[0].shape[0]
        n_r = jax.tree_util.tree_leaves(data.retain)[0].shape[0]
        retain_sub = subsample(data.retain, k_sub, min(1.0, n_f / n_r))
        over_r = _overfit(model, variables, retain_sub, k_over2, overfit_epochs, overfit_lr,
                          batch_size)
        mask = tree_map(jnp.logical_and, mask, _low_change_mask(params, over_r, quantile))
      fresh = model.init(k_init, ctx.input_shape)["params"]
      new_params = tree_map(jnp.where, mask, fresh, params)
      reset = sum(jnp.sum(m) for m in jax.tree_util.tree_leaves(mask))
      out, _ = finetune_on(model, {**variables, "params": new_params}, data.retain, k_ft,
                           epochs=epochs, lr=lr, batch_size=batch_size)
      return out, {"reinitialised_weights": reset}

    return unlearn
  return factory


_PRUNE_RULE = """
  Overfit a copy of θ0 on D_f (SGD, constant lr, no weight decay); weights whose
  |θ_overfit − θ0| lies below the `quantile` of all such changes{scope} are replaced by
  fresh initial weights (the model's initialisers, drawn from the key){complex}; then FT on
  D_r. Reads: forget and retain. Defaults: quantile 0.30, overfit 5 epochs at lr 0.01,
  FT 5 epochs at lr 0.001 (seed 004), batch 64.
  Behaviour at the defaults is measured, not stated here: tests/expected/
  behaviour_digits.csv (digits, both scenarios) and the README's results tables.
"""

prune = _prune_factory("all")
prune.__doc__ = ("Selective pruning (seed 004): reinitialise the weights the forget set "
                 "barely moves, then fine-tune." + _PRUNE_RULE.format(scope="", complex=""))
register("prune", space=PRUNE_SPACE,
         reads=("forget", "retain"), paper="Krahenmann et al. (seed 004, Forget with Precision)",
         defaults=PRUNE_DOC_DEFAULTS)(prune)

prune_last_layer = _prune_factory("last_layer")
prune_last_layer.__doc__ = ("Selective pruning of the final dense layer only (seed 004)." +
                            _PRUNE_RULE.format(scope=" in the last layer", complex=""))
register("prune_last_layer", space=PRUNE_SPACE,
         reads=("forget", "retain"),
         paper="Krahenmann et al. (seed 004, Forget with Precision)",
         defaults=PRUNE_DOC_DEFAULTS)(prune_last_layer)

prune_complex = _prune_factory("complex")
prune_complex.__doc__ = ("Pruning complex (seed 004): reinitialise weights 'similar' for "
                         "both D_f and a retain subset." + _PRUNE_RULE.format(
                             scope="", complex=(", but only where a second copy overfitted "
                                                "on a random D_r subset of |D_f| examples "
                                                "also changed them less than its quantile")))
register("prune_complex", space=PRUNE_SPACE,
         reads=("forget", "retain"),
         paper="Krahenmann et al. (seed 004, Forget with Precision)",
         defaults=PRUNE_DOC_DEFAULTS)(prune_complex)


# ----------------------------------------------------------------------------- influence
def per_example_grads(model, variables, data, batch_size: int) -> jax.Array:
  """[n, P]: the flattened CE gradient of every example (eval mode), via `vmap(grad)`."""
  model = as_adapter(model)
  flat0, unravel = jax.flatten_util.ravel_pytree(variables["params"])

  def one(x, y):
    g = _ce_grad(model, variables, x[None], y[None])
    return jax.flatten_util.ravel_pytree(g)[0]

  out = jax.lax.map(lambda b: jax.vmap(one)(*b), fixed_batches(data, batch_size)[0])
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  return out.reshape(-1, flat0.shape[0])[:n]


def woodfisher_inverse_product(grads: jax.Array, v: jax.Array, damp: float) -> jax.Array:
  """F⁻¹v for the WoodFisher estimate F = λI + (1/N)·Σ_i g_i g_iᵀ.

  WoodFisher (Singh & Alistarh 2020) builds F⁻¹ by N Sherman–Morrison rank-1 updates
  from F₀⁻¹ = I/λ: F_{k+1}⁻¹ = F_k⁻¹ − F_k⁻¹g gᵀF_k⁻¹ / (N + gᵀF_k⁻¹g). After all N updates
  this is exactly the Woodbury form used here, which needs an N×N solve instead of a
  P×P matrix:  F⁻¹v = (v − Gᵀ(NλI + GGᵀ)⁻¹Gv)/λ,  G = [g_1 … g_N] (tests check it against
  the recursion).
  """
  n = grads.shape[0]
  gram = grads @ grads.T + n * damp * jnp.eye(n, dtype=grads.dtype)
  coef = jnp.linalg.solve(gram, grads @ v)
  return (v - grads.T @ coef) / damp


@register("influence", space=dict(alpha=("log", 0.01, 2.0), damp=("log", 1e-5, 0.1)),
          reads=("forget", "retain"),
          paper="Koh & Liang 2017; Izzo et al. 2021; Jia et al. 2023 (IU, WoodFisher)",
          defaults=dict(alpha=0.2, num_examples=1000, damp=1e-3, max_gradient_mib=2048.0,
                        batch_size=64))
def influence(ctx: MethodContext, *, alpha, num_examples, damp, max_gradient_mib, batch_size):
  """Influence unlearning (IU): one Newton-style step that removes D_f's influence.

      θ ← θ0 + α·F⁻¹(g_f − g_r),   g_f = (n_f/n)·∇θ L(D_f),  g_r = (n_r/n)·∇θ L(D_r),

  each mean-CE gradient weighted by its set's share of D (as in the IU reference code),
  and F⁻¹ the WoodFisher inverse of the empirical Fisher built from `num_examples`
  per-example retain gradients, dampened by λ = `damp`, computed exactly through Woodbury
  (`woodfisher_inverse_product`). λ is ours: the reference recursion starts from F₀⁻¹ = I
  (λ = 1), under which the step barely moves a small model; λ = 1e-3 lets the step act
  along directions the retain gradients do not span. The
  per-example gradients are held as an N×P matrix: N is capped so that it takes at most
  `max_gradient_mib` MiB (the cap binds for the CIFAR CNN, N ≈ 380; the effective N is
  in aux). BatchNorm statistics are unchanged.
  Reads: forget and retain. Defaults: α 0.2 (published), N 1000, λ 1e-3, batch 64.
  """
  def unlearn(variables, data: UnlearnData, key):
    flat, unravel = jax.flatten_util.ravel_pytree(variables["params"])
    n_f = jax.tree_util.tree_leaves(data.forget)[0].shape[0]
    n_r = jax.tree_util.tree_leaves(data.retain)[0].shape[0]
    cap = max(1, int(max_gradient_mib * 2 ** 20 // (4 * flat.shape[0])))
    n_fisher = int(min(num_examples, n_r, cap))
    sample = subsample(data.retain, key, n_fisher / n_r)
    grads = per_example_grads(ctx.model, variables, sample, batch_size)
    mean_grad = lambda d: jax.flatten_util.ravel_pytree(
        weighted_batch_mean(lambda b, valid: _ce_grad(ctx.model, variables, *b, valid), d,
                            batch_size))[0]
    v = (n_f * mean_grad(data.forget) - n_r * mean_grad(data.retain)) / (n_f + n_r)
    delta = woodfisher_inverse_product(grads, v, damp)
    params = unravel(flat + alpha * delta)
    return {**variables, "params": params}, {"fisher_examples": jnp.float32(n_fisher),
                                            "step_norm": alpha * jnp.linalg.norm(delta)}

  return unlearn


# ----------------------------------------------------------------------------- activation reset
def _kernel_outputs(model, variables, x):
  """{module path: [batch, channels]} — each Conv/Dense output averaged over space."""
  model = as_adapter(model)
  _, captured, _ = model.capture(variables, x, lambda m: isinstance(m, (nn.Conv, nn.Dense)))
  return {path: value.reshape(value.shape[0], -1, value.shape[-1]).mean(axis=1)
          for path, value in captured.items()}


def he_normal(key, shape, dtype=jnp.float32):
  """Kaiming-normal weights (std √(2/fan_in), fan_in = all but the output axis)."""
  fan_in = max(1, int(np.prod(shape[:-1])))
  return jnp.sqrt(2.0 / fan_in).astype(dtype) * jax.random.normal(key, shape, dtype)


@register("activation_reset", space=dict(threshold=("linear", 0.5, 0.95), lr=("log", 1e-3, 0.1)),
          reads=("forget", "retain"),
          paper="Krahenmann et al. (seed 004, Forget with Precision)",
          defaults=dict(threshold=0.8, epochs=5, lr=0.01, batch_size=64))
def activation_reset(ctx: MethodContext, *, threshold, epochs, lr, batch_size):
  """Activation reset (seed 004): reinitialise the kernels D_f excites more than D_r.

  Pairs each forget example with one of an equally sized random retain subset. For every
  output channel c of every Conv/Dense layer below the head, a_c(x) is the layer's output
  (before its BatchNorm/ReLU) averaged over space; if a_c(x_f) > a_c(x_r) for at least
  `threshold` of the pairs, channel c's kernel slice is reinitialised (Kaiming normal,
  bias 0). The head (the adapter's `head`) is always reinitialised; then FT on D_r (SGD
  momentum, cosine). Only Linen `nn.Conv`/`nn.Dense` layers are seen.
  Reads: forget and retain. Defaults: threshold 0.8, FT 5 epochs at lr 0.01, batch 64.
  "Forget with Precision"'s lr 0.001 is too small to retrain a fresh head of the small
  models, hence 0.01. On a model without conv layers (the MLP) the hidden Dense units play
  the kernels' part.
  """
  model = ctx.model
  model.require_head("activation_reset")

  def unlearn(variables, data: UnlearnData, key):
    k_sub, k_init, k_ft = jax.random.split(key, 3)
    n_f = jax.tree_util.tree_leaves(data.forget)[0].shape[0]
    n_r = jax.tree_util.tree_leaves(data.retain)[0].shape[0]
    retain_x = subsample(data.retain, k_sub, min(1.0, n_f / n_r))[0]
    k = min(n_f, retain_x.shape[0])
    pairs = (data.forget[0][:k], retain_x[:k])

    def exceed(batch, valid):
      a_f = _kernel_outputs(model, variables, batch[0])
      a_r = _kernel_outputs(model, variables, batch[1])
      return {p: masked_mean((a_f[p] > a_r[p]).astype(jnp.float32), valid) for p in a_f}

    fractions = weighted_batch_mean(exceed, pairs, batch_size)
    head = model.require_head("activation_reset")
    flat = traverse_util.flatten_dict(variables["params"])
    keys = dict(zip(sorted(flat), jax.random.split(k_init, len(flat))))
    new, reset = {}, jnp.float32(0)
    for path, p in flat.items():
      module, leaf = path[:-1], path[-1]
      fresh = he_normal(keys[path], p.shape, p.dtype) if leaf == "kernel" else jnp.zeros_like(p)
      if _path_in(module, [head]):
        new[path] = fresh
      elif module in fractions and leaf in ("kernel", "bias"):
        hit = fractions[module] >= threshold
        new[path] = jnp.where(hit, fresh, p)
        if leaf == "kernel":
          reset = reset + jnp.sum(hit)
      else:
        new[path] = p
    params = traverse_util.unflatten_dict(new)
    out, _ = finetune_on(model, {**variables, "params": params}, data.retain, k_ft,
                         epochs=epochs, lr=lr, batch_size=batch_size)
    return out, {"reset_kernels": reset}

  return unlearn
