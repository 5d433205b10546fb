"""Flax Linen classifiers and a registry by name.

Every model is called as `model.apply(variables, x, train=bool)` and returns logits. Its
`unlearn_adapter()` says how methods run it (`unlearn_jax.ModelAdapter`): train/eval
keyword arguments, `batch_stats` mutable when it has BatchNorm, the head at `("head",)`
(penultimate features are the head's input). Variables are what `model.init` returns:
`{"params"}`, plus `{"batch_stats"}` for the BatchNorm models.

Convolutions: the library's conv models use `Conv` (`unlearn_jax.models.conv`), an
`nn.Conv` whose implementation avoids XLA:CPU's slow gradient inside compiled loops
(jax-ml/jax#12868); that module says why and how.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from unlearn_jax.adapter import ModelAdapter, has_mutable_state
from unlearn_jax.models.conv import (CONV_IMPLS, Conv, canonical_conv_general_dilated,
                                     conv_impl, cpu_conv_general_dilated,
                                     patches_conv_general_dilated)

# The models that take `conv=` (`conv_impl`).
CONV_MODELS = ("cnn", "resnet18", "resnet9", "airbench94")


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


class ConvBN(nn.Module):
  """Convolution (no bias) → BatchNorm → ReLU: the Easy Data Unlearning Bench's `conv_bn`."""
  width: int
  kernel: int = 3
  strides: int = 1
  padding: int = 1
  conv: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    h = Conv(self.width, (self.kernel, self.kernel), self.strides,
             padding=((self.padding, self.padding),) * 2, use_bias=False, impl=self.conv,
             name="conv")(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h))


class ResNet9(nn.Module, _LibraryModel):
  """The Easy Data Unlearning Bench's ResNet-9 (easydub/EasyDUB-code, `easydub/models.py`),
  the model of its 200 pretrained models and 2,000 oracles.

  conv3×3 3→w0; conv5×5 w0→w1 stride 2 pad 2; residual of two conv3×3 w1→w1; conv3×3
  w1→w2; max-pool 2; residual of two conv3×3 w2→w2; conv3×3 w2→w3 pad 0; global max-pool;
  linear w3→classes without bias; output ×0.2. Every conv is conv (no bias) → BatchNorm
  → ReLU. `widths` (w0, w1, w2, w3) default (64, 128, 256, 128), the benchmark's;
  `resnet9:16-32-64-32` is a CPU-sized one. The ×0.2 is applied to the features before
  the head, which gives the same logits and gradients (the head is linear) and keeps
  `logits = head(features)` for the methods that read the head.
  """
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 128)
  conv: str = "auto"
  scale: float = 0.2

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.widths) != 4:
      raise ValueError(f"ResNet9: widths={tuple(self.widths)} must be 4 numbers (w0-w1-w2-w3)")
    w0, w1, w2, w3 = self.widths
    block = functools.partial(ConvBN, conv=self.conv)
    h = block(w0, name="prep")(x, train)
    h = block(w1, kernel=5, strides=2, padding=2, name="layer1")(h, train)
    h = h + block(w1, name="res1b")(block(w1, name="res1a")(h, train), train)
    h = block(w2, name="layer2")(h, train)
    if h.shape[1] > 1:
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = h + block(w2, name="res2b")(block(w2, name="res2a")(h, train), train)
    h = block(w3, padding=0 if h.shape[1] > 2 else 1, name="layer3")(h, train)
    h = jnp.max(h, axis=(1, 2))                      # global max-pool
    return nn.Dense(self.num_classes, use_bias=False, name="head")(self.scale * h)



def dirac_init(base: Callable = nn.initializers.lecun_normal()) -> Callable:
  """A conv kernel (H, W, in, out) whose first min(in, out) output channels are the
  identity (1 at the centre tap of their own input channel, 0 elsewhere) and the rest
  `base`'s: airbench's implicit residual (`torch.nn.init.dirac_` on `weight[:in]`)."""
  def init(key, shape, dtype=jnp.float32):
    kh, kw, c_in, c_out = shape
    w = base(key, shape, dtype)
    k = min(c_in, c_out)
    eye = jnp.zeros((kh, kw, c_in, k), dtype).at[kh // 2, kw // 2].set(jnp.eye(c_in, k, dtype=dtype))
    return w.at[..., :k].set(eye)
  return init


def whitening_kernel(images: jax.Array, size: int = 2, eps: float = 5e-4) -> jax.Array:
  """Airbench's whitening filters: the eigenvectors of the covariance of every `size`×`size`
  patch of `images` (NHWC), each divided by √(eigenvalue + eps), largest eigenvalue
  first, and then their negatives: a (size, size, C, 2·C·size²) kernel whose outputs are
  the patches' decorrelated, unit-variance coordinates (and their negatives, so that the
  GELU after it keeps both signs)."""
  c = images.shape[-1]
  patches = lax.conv_general_dilated_patches(
      images.astype(jnp.float32), (size, size), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))           # (N, H', W', C·size²), C-major
  flat = patches.reshape(-1, patches.shape[-1])
  cov = flat.T @ flat / flat.shape[0]
  eigenvalues, eigenvectors = jnp.linalg.eigh(cov)
  order = jnp.argsort(-eigenvalues)
  filters = eigenvectors[:, order] / jnp.sqrt(eigenvalues[order] + eps)   # (C·size², K)
  # The patches' features are ordered (channel, row, column): back to (row, column, channel).
  filters = filters.reshape(c, size, size, -1).transpose(1, 2, 0, 3)
  return jnp.concatenate([filters, -filters], axis=-1)


class Airbench94(nn.Module, _LibraryModel):
  """Airbench's 94% CIFAR-10 network (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a
  single GPU", KellerJordan/cifar10-airbench `airbench94.py`).

  A frozen 2×2 whitening convolution (3 → 24 channels, with a trained bias; its kernel
  lives in the `constants` collection, set from training images by `init_from_data`
  (`models.data_init`); before that, the whitening of white noise: one pixel per filter),
  GELU, then three groups of conv3×3 → max-pool 2 → BatchNorm → GELU → conv3×3 →
  BatchNorm → GELU at widths (64, 256, 256); a 3×3 max-pool, a linear head without bias
  and the output × 1/9. Convolutions have no bias and start as the identity on their
  first channels (`dirac_init`); BatchNorm has no trained scale (the weight is frozen at 1),
  ε 1e-12 and running-average momentum 0.6. GELU is the exact (erf) one, as PyTorch's.
  The × 1/9 is applied to the features before the head (same logits and gradients, and
  `logits = head(features)` for the methods that read the head).
  """
  num_classes: int
  widths: Sequence[int] = (64, 256, 256)
  whiten_size: int = 2
  scale: float = 1 / 9
  conv: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.widths) != 3:
      raise ValueError(f"Airbench94: widths={tuple(self.widths)} must be 3 numbers")
    c, k = x.shape[-1], self.whiten_size
    whiten_width = 2 * c * k * k
    kernel = self.variable("constants", "whiten_kernel", _white_noise_whitening, k, c)
    bias = self.param("whiten_bias", nn.initializers.zeros, (whiten_width,))
    h = lax.conv_general_dilated(x, kernel.value.astype(x.dtype), (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    h = nn.gelu(h, approximate=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.6,
                             epsilon=1e-12, use_scale=False)
    conv = functools.partial(Conv, kernel_size=(3, 3), padding="SAME", use_bias=False,
                             impl=self.conv, kernel_init=dirac_init(_TORCH_CONV_INIT))
    for g, width in enumerate(self.widths):
      h = conv(width, name=f"group{g}_conv1")(h)
      if h.shape[1] > 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      h = nn.gelu(norm(name=f"group{g}_norm1")(h), approximate=False)
      h = conv(width, name=f"group{g}_conv2")(h)
      h = nn.gelu(norm(name=f"group{g}_norm2")(h), approximate=False)
    window = min(3, h.shape[1])
    h = nn.max_pool(h, (window, window), strides=(window, window))
    h = h.reshape((h.shape[0], -1))
    return nn.Dense(self.num_classes, use_bias=False, name="head")(self.scale * h)

  def init_from_data(self, variables: dict, images) -> dict:
    """`variables` (any leading population axes) with the whitening kernel computed from
    `images` (airbench uses the first 5,000 training images), the same for every member."""
    target = variables["constants"]["whiten_kernel"]
    kernel = whitening_kernel(jnp.asarray(images), self.whiten_size)
    constants = {**variables["constants"],
                 "whiten_kernel": jnp.broadcast_to(kernel, target.shape).astype(target.dtype)}
    return {**variables, "constants": constants}


def _white_noise_whitening(size: int, channels: int) -> jax.Array:
  """The whitening kernel of white noise (identity covariance): each filter reads one
  pixel of the patch, then the negatives. The start before `init_from_data`."""
  d = channels * size * size
  filters = jnp.eye(d, dtype=jnp.float32).reshape(size, size, channels, d)
  return jnp.concatenate([filters, -filters], axis=-1)


# PyTorch's default conv initialisation (kaiming uniform, a = √5: U(±1/√fan_in)), which
# airbench's convolutions keep for their non-identity channels.
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


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
    "resnet9": ResNet9,
    "airbench94": Airbench94,
    "vit": ViT,
}


# The width field a `name:W1-W2-...` spec sets, per library model.
_WIDTH_FIELD = {"mlp": "hidden", "cnn": "widths", "resnet18": "stage_widths", "resnet9": "widths",
                "airbench94": "widths", "vit": ("dim", "depth", "heads")}


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


def data_init(model, variables: dict, images) -> dict:
  """`variables` completed from training images where the model's initialisation needs data
  (a module with `init_from_data(variables, images)`, e.g. `Airbench94`'s whitening);
  unchanged otherwise. Works on one model's variables or a population's."""
  from unlearn_jax.adapter import as_adapter
  module = as_adapter(model).module
  if hasattr(module, "init_from_data"):
    return module.init_from_data(variables, images)
  return variables


def has_batch_norm(variables: dict) -> bool:
  return has_mutable_state(variables, "batch_stats")


__all__ = ["list_models", "CONV_MODELS", "CONV_IMPLS", "MLP", "CNN", "ResNet18", "BasicBlock", "ViT",
           "ResNet9", "ConvBN", "Airbench94", "whitening_kernel", "dirac_init", "data_init",
           "EncoderBlock", "Conv",
           "conv_impl", "patches_conv_general_dilated", "canonical_conv_general_dilated",
           "cpu_conv_general_dilated", "get_model", "parse_model_spec", "register_model",
           "init_variables", "has_batch_norm"]
