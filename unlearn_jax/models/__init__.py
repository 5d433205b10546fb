"""Flax Linen classifiers, a registry by name, and a convolution with no slow CPU path.

Every model is called as `model.apply(variables, x, train=bool)` and returns logits. Its
`unlearn_adapter()` says how methods run it (`unlearn_jax.ModelAdapter`): train/eval
keyword arguments, `batch_stats` mutable when it has BatchNorm, the head at `("head",)`
(penultimate features are the head's input). Variables are what `model.init` returns:
`{"params"}`, plus `{"batch_stats"}` for the BatchNorm models.

Convolutions. XLA's CPU backend runs the gradient of `lax.conv_general_dilated` about 80x
slower inside a compiled loop (`lax.scan`, a while loop) than outside one
(jax-ml/jax#12868): autodiff writes the backward convolutions with transposed dimension
numbers, which XLA:CPU rewrites to its fast canonical form outside loops but not inside
them. The library's models use `Conv`: an `nn.Conv` (same parameters, same
initialisation, interchangeable checkpoints) whose `conv_general_dilated` is chosen by
`conv_impl`: on the CPU backend (`auto`) XLA's convolution with its two gradients written
as canonical NHWC/HWIO convolutions (`canonical_conv_general_dilated`), fast in and out of
loops, and patches + one matmul (`patches_conv_general_dilated`) for inputs under 4×4,
where XLA's convolution is slow whatever its form (`cpu_conv_general_dilated`); elsewhere
XLA's convolution and its autodiff. `canonical`, `patches` and `xla` are selectable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from unlearn_jax.adapter import ModelAdapter, has_mutable_state

CONV_MODELS = ("cnn", "resnet18")          # the models that take `conv=` (`conv_impl`)
CONV_IMPLS = ("auto", "xla", "patches", "canonical")


# ----------------------------------------------------------------------------- convolution
def patches_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None,
                                 feature_group_count=1, precision=None, **unused):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels as patches + one matmul.

  patches[n, h, w, (c, i, j)] = the input window of output pixel (h, w), channel-major, so
  y = patches · reshape(transpose(kernel, (c, i, j, o)), [C·kh·kw, O]). Grouped convolutions
  and other layouts fall back to XLA's convolution.
  """
  del unused
  nd = rhs.ndim - 2
  if feature_group_count != 1 or nd != 2 or lhs.ndim != 4:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
  kh, kw, cin, cout = rhs.shape
  patches = lax.conv_general_dilated_patches(
      lhs, (kh, kw), window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=precision)
  kernel = jnp.transpose(rhs, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)
  return jnp.dot(patches, kernel, precision=precision)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == _NHWC


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _canonical_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _canonical_conv_fwd(x, w, strides, pads, precision):
  return _canonical_conv(x, w, strides, pads, precision), (x, w)


def _canonical_conv_bwd(strides, pads, precision, res, g):
  """The two gradients as NHWC/HWIO convolutions (derivation: `canonical_conv_...`)."""
  x, w = res
  size, k, out = x.shape[1:3], w.shape[:2], g.shape[1:3]
  # dx: g dilated by the strides, correlated with the flipped kernel (in/out swapped).
  w_t = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
  pads_x = [(kk - 1 - lo, n - (o - 1) * s - 1 + lo)
            for n, kk, o, s, (lo, _) in zip(size, k, out, strides, pads)]
  dx = lax.conv_general_dilated(g, w_t, (1, 1), pads_x, lhs_dilation=strides,
                                dimension_numbers=_NHWC, precision=precision)
  # dw: the batch is the contracted axis: x as [C, H, W, N] against g as [oh, ow, N, O]
  # (dilated by the strides) gives [C, kh, kw, O].
  pads_w = [(lo, kk + (o - 1) * s - n - lo)
            for n, kk, o, s, (lo, _) in zip(size, k, out, strides, pads)]
  dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)),
                                (1, 1), pads_w, rhs_dilation=strides,
                                dimension_numbers=_NHWC, precision=precision)
  return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def canonical_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                   rhs_dilation=None, dimension_numbers=None,
                                   feature_group_count=1, precision=None, **unused):
  """XLA's convolution (NHWC inputs, HWIO kernels) whose gradient is two more NHWC/HWIO
  convolutions, written out instead of left to autodiff.

  Why: autodiff's backward convolutions carry transposed dimension numbers (kernel `01oi`,
  the kernel gradient `f01b_i01o->01bf`). Outside a loop XLA's CPU compiler rewrites them
  to the canonical layout and runs them fast; inside a while loop (`lax.scan`) it leaves
  them as they are and emits its slow generic convolution for them (jax-ml/jax#12868:
  ~9.7 s against 0.12 s per step for one 16×16×64→128 layer here). The rule, for stride s,
  kernel k and padding (lo, hi) per spatial axis, input size n and output size o:

      dx = conv(g dilated by s, flip(w) with in/out swapped, padding (k−1−lo, n−(o−1)s−1+lo))
      dw = conv(xᵀ [C, H, W, N], gᵀ [oh, ow, N, O] dilated by s, padding (lo, k+(o−1)s−n−lo))

  the same sums autodiff computes (a test checks both gradients against `jax.vjp` of
  `lax.conv_general_dilated`). Dilated, grouped and other-layout convolutions fall back to
  `lax.conv_general_dilated` and its autodiff.
  """
  del unused
  dilated = any(d != 1 for d in (lhs_dilation or ())) or any(
      d != 1 for d in (rhs_dilation or ()))
  if (feature_group_count != 1 or lhs.ndim != 4 or dilated
      or not _is_nhwc(dimension_numbers)):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
  strides = tuple(int(s) for s in window_strides)
  pads = (tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding))
          if isinstance(padding, str) else padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return _canonical_conv(lhs, rhs, strides, pads, precision)


# `auto` on the CPU: the canonical convolution from this spatial size up, patches below.
# Measured per layer (`experiments.conv_profile`, forward + backward inside a scan, 2 CPU
# cores): at 8×8 and 4×4 inputs the canonical form was 2-4x faster than patches, at 2×2 8x
# slower (XLA's convolution is inefficient when the window exceeds the image).
CANONICAL_MIN_SIZE = 4


def cpu_conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
  """`auto` on the CPU backend: `canonical_conv_general_dilated` for inputs of at least
  `CANONICAL_MIN_SIZE` pixels along each spatial axis, `patches_conv_general_dilated` for
  smaller ones (a static choice per layer, from its input shape)."""
  small = lhs.ndim == 4 and min(lhs.shape[1:3]) < CANONICAL_MIN_SIZE
  conv = patches_conv_general_dilated if small else canonical_conv_general_dilated
  return conv(lhs, rhs, window_strides, padding, *args, **kwargs)


def conv_impl(impl: str = "auto") -> Callable | None:
  """The `conv_general_dilated` for `nn.Conv`: the patches form for `patches`, XLA's
  convolution with the canonical gradient (`canonical_conv_general_dilated`) for
  `canonical`, `cpu_conv_general_dilated` (canonical, patches for tiny inputs) for `auto`
  on the CPU backend, None (XLA's convolution and its autodiff) for `xla` and for `auto`
  elsewhere."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl {impl!r} is unknown; allowed: {', '.join(CONV_IMPLS)}")
  if impl == "patches":
    return patches_conv_general_dilated
  if impl == "canonical":
    return canonical_conv_general_dilated
  if impl == "auto" and jax.default_backend() == "cpu":
    return cpu_conv_general_dilated
  return None


def Conv(features: int, kernel_size, strides=1, *, impl: str = "auto", **kwargs) -> nn.Conv:
  """`nn.Conv` (NHWC, same parameters and initialisers) with `conv_impl(impl)`."""
  if isinstance(strides, int):
    strides = (strides, strides)
  return nn.Conv(features, kernel_size, strides, conv_general_dilated=conv_impl(impl), **kwargs)


# ----------------------------------------------------------------------------- models
class _LibraryModel:
  """The adapter every library model shares: `train=` keyword, BatchNorm statistics
  mutable, head at ("head",)."""

  # The collections train mode updates: BatchNorm statistics (the MLP has none).
  MUTABLE = ("batch_stats",)

  def unlearn_adapter(self) -> ModelAdapter:
    return ModelAdapter(self, train_kwargs={"train": True}, eval_kwargs={"train": False},
                        mutable=self.MUTABLE, head=("head",), name=type(self).__name__)


class MLP(nn.Module, _LibraryModel):
  """Two hidden ReLU layers on flattened pixels."""
  MUTABLE = ()
  num_classes: int
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(self.num_classes, name="head")(h)


class CNN(nn.Module, _LibraryModel):
  """Three conv(3x3)+BatchNorm+ReLU+max-pool blocks, then two dense layers.

  The small model for CPUs, the shape of the PyTorch reference CNN that reaches 82% on
  CIFAR-10 in 10 epochs. Pooling is skipped once the map is 1x1 so that the same model
  runs on 8x8 digits. `conv` picks the convolution (`conv_impl`).
  """
  num_classes: int
  widths: Sequence[int] = (64, 128, 256)
  dense: int = 256
  conv: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x
    for i, width in enumerate(self.widths):
      h = Conv(width, (3, 3), padding="SAME", use_bias=False, impl=self.conv,
               name=f"conv{i}")(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(h)
      h = nn.relu(h)
      if h.shape[1] > 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = h.reshape((h.shape[0], -1))
    h = nn.relu(nn.Dense(self.dense, name="fc")(h))
    return nn.Dense(self.num_classes, name="head")(h)


class BasicBlock(nn.Module):
  width: int
  strides: int = 1
  conv: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    conv = functools.partial(Conv, use_bias=False, impl=self.conv)
    h = conv(self.width, (3, 3), self.strides, padding="SAME", name="conv1")(x)
    h = nn.relu(norm("bn1")(h))
    h = conv(self.width, (3, 3), padding="SAME", name="conv2")(h)
    h = norm("bn2")(h)
    if x.shape[-1] != self.width or self.strides != 1:
      x = conv(self.width, (1, 1), self.strides, name="proj")(x)
      x = norm("bn_proj")(x)
    return nn.relu(h + x)


class ResNet18(nn.Module, _LibraryModel):
  """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
  num_classes: int
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  conv: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = Conv(self.stage_widths[0], (3, 3), padding="SAME", use_bias=False, impl=self.conv,
             name="stem")(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_stem")(h))
    for s, width in enumerate(self.stage_widths):
      for b in range(2):
        strides = 2 if (s > 0 and b == 0 and h.shape[1] > 1) else 1
        h = BasicBlock(width, strides, self.conv, name=f"stage{s}_block{b}")(h, train)
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(h)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) (GELU)."""
  dim: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.LayerNorm(name="ln1")(x)
    h = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout,
                                        deterministic=not train, name="attn")(h, h)
    x = x + drop(h)
    h = nn.LayerNorm(name="ln2")(x)
    h = nn.gelu(nn.Dense(self.mlp_dim, name="mlp1")(h))
    h = nn.Dense(self.dim, name="mlp2")(drop(h))
    return x + drop(h)


class ViT(nn.Module, _LibraryModel):
  """A small Vision Transformer (Dosovitskiy et al. 2021): non-overlapping patches, a
  linear patch embedding, a class token and learned position embeddings, `depth`
  pre-LayerNorm encoder blocks, LayerNorm, then the head on the class token.

  No BatchNorm and no convolution (the embedding is a reshape and a Dense, which has no
  slow CPU path): the library's proof that methods assume neither. `patch_size` 0 picks 4
  for images of 16 pixels and more (64 tokens on 32×32) and 2 below (16 tokens on 8×8
  digits). `dropout` > 0 makes train mode draw from the `dropout` rng stream.
  """
  num_classes: int
  patch_size: int = 0
  dim: int = 96
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 2
  dropout: float = 0.0

  def unlearn_adapter(self) -> ModelAdapter:
    return ModelAdapter(self, train_kwargs={"train": True}, eval_kwargs={"train": False},
                        rng_streams=("dropout",) if self.dropout > 0 else (),
                        head=("head",), name="ViT")

  @nn.compact
  def __call__(self, x, train: bool = False):
    n, height, width, channels = x.shape
    p = self.patch_size or (4 if min(height, width) >= 16 else 2)
    if height % p or width % p:
      raise ValueError(f"ViT: patch_size={p} must divide the image size {height}x{width}")
    patches = x.reshape(n, height // p, p, width // p, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, p * p * channels)
    tokens = nn.Dense(self.dim, name="embed")(patches)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
    tokens = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.dim)).astype(tokens.dtype),
                              tokens], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                     (1, tokens.shape[1], self.dim))
    h = nn.Dropout(self.dropout, deterministic=not train)(tokens + pos)
    for i in range(self.depth):
      h = EncoderBlock(self.dim, self.heads, self.mlp_ratio * self.dim, self.dropout,
                       name=f"block{i}")(h, train)
    h = nn.LayerNorm(name="ln_final")(h[:, 0])
    return nn.Dense(self.num_classes, name="head")(h)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet18": ResNet18,
    "vit": ViT,
}


# The width field a `name:W1-W2-...` spec sets, per library model.
_WIDTH_FIELD = {"mlp": "hidden", "cnn": "widths", "resnet18": "stage_widths",
                "vit": ("dim", "depth", "heads")}


def parse_model_spec(spec: str) -> tuple[str, dict]:
  """`"cnn:16-32-64"` -> `("cnn", {"widths": (16, 32, 64)})`; a bare name has no kwargs.

  The part after ':' sets the model's layer widths (MLP hidden sizes, CNN conv widths,
  ResNet-18 stage widths) or, for the ViT, up to three numbers: width, depth, heads
  (`vit:64-2` = width 64, depth 2). ValueError names the spec and what is allowed."""
  base, sep, widths = str(spec).partition(":")
  if base not in _REGISTRY:
    raise ValueError(f"model {base!r} is unknown; allowed: {', '.join(_REGISTRY)}")
  if not sep:
    return base, {}
  field = _WIDTH_FIELD.get(base)
  try:
    values = tuple(int(w) for w in widths.split("-"))
  except ValueError:
    values = ()
  if field is None or not values or min(values) < 1 or (
      isinstance(field, tuple) and len(values) > len(field)):
    raise ValueError(f"model spec {spec!r}: after ':' give positive layer widths joined "
                     f"by '-' (e.g. cnn:16-32-64, vit:64-2-4 for width-depth-heads); "
                     f"allowed models with widths: {', '.join(_WIDTH_FIELD)}")
  if isinstance(field, tuple):
    return base, dict(zip(field, values))
  return base, {field: values}


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a registered model from its name or a `name:W1-W2-...` spec
  (`parse_model_spec`); raises ValueError naming the allowed models."""
  base, spec_kwargs = parse_model_spec(name)
  return _REGISTRY[base](num_classes=num_classes, **{**spec_kwargs, **kwargs})


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds `constructor(num_classes=..., **kwargs) -> nn.Module` under `name`: `get_model`
  builds it and the experiments CLIs accept `--model=name` (they validate against
  `list_models()`, this registry)."""
  if not isinstance(name, str) or not name or ":" in name:
    raise ValueError(f"register_model: name={name!r} must be a non-empty string without ':'")
  _REGISTRY[name] = constructor


def list_models() -> tuple:
  """The registered model names (the library's, then those added by `register_model`)."""
  return tuple(_REGISTRY)


def init_variables(model, key: jax.Array, input_shape) -> dict:
  """Initial variables of `model` (a module or a ModelAdapter) for examples of
  `input_shape` (H, W, C)."""
  from unlearn_jax.adapter import as_adapter
  return as_adapter(model).init(key, input_shape)


def has_batch_norm(variables: dict) -> bool:
  return has_mutable_state(variables, "batch_stats")


__all__ = ["list_models", "CONV_MODELS", "CONV_IMPLS", "MLP", "CNN", "ResNet18", "BasicBlock", "ViT",
           "EncoderBlock", "Conv",
           "conv_impl", "patches_conv_general_dilated", "canonical_conv_general_dilated",
           "cpu_conv_general_dilated", "get_model", "parse_model_spec", "register_model",
           "init_variables", "has_batch_norm"]
