"""A convolution with no slow CPU path: why the library's conv models use their own `Conv`.

XLA's CPU backend runs the gradient of `lax.conv_general_dilated` about 80x
slower inside a compiled loop (`lax.scan`, a while loop) than outside one
(jax-ml/jax#12868): autodiff writes the backward convolutions with transposed dimension
numbers, which XLA:CPU rewrites to its fast canonical form outside loops but not inside
them. The library's conv models use `Conv`: an `nn.Conv` (same parameters, same
initialisation, interchangeable checkpoints) whose `conv_general_dilated` is chosen by
`conv_impl`: on the CPU backend (`auto`) XLA's convolution with its two gradients written
as canonical NHWC/HWIO convolutions (`canonical_conv_general_dilated`), fast in and out of
loops, and patches + one matmul (`patches_conv_general_dilated`) for inputs under 4×4,
where XLA's convolution is slow whatever its form (`cpu_conv_general_dilated`); elsewhere
XLA's convolution and its autodiff. `canonical`, `patches` and `xla` are selectable.

This is a workaround for one backend's compiler, kept out of the models so that they read
as plain Flax: on GPUs and TPUs `auto` is XLA's convolution and nothing here runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "patches", "canonical")


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
# Measured per layer (`experiments.benchmarks.conv_profile`, forward + backward inside a scan, 2 CPU
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
