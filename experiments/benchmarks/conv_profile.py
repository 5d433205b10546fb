r"""Where a conv model's train step spends its time: every convolution of the library CNN
alone, in each form, in and out of a loop, with its achieved GFLOP/s.

    python -m experiments.benchmarks.conv_profile                       # the library CNN, batch 128
    python -m experiments.benchmarks.conv_profile --widths=32,64,128 --batch=128 --dtype=bfloat16
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python -m experiments.benchmarks.conv_profile

For each 3×3 SAME convolution of `models.CNN` (widths --widths on --size×--size×3 inputs,
max-pooled between layers) it times one forward + backward (the gradients of the input and
the kernel, as in a train step: ≈ 3 × 2·N·H·W·C·9·O flops) compiled

* `xla`: XLA's convolution (`lax.conv_general_dilated`) and autodiff's gradient;
* `canonical`: the same forward, the gradient as canonical NHWC/HWIO convolutions
  (`models.canonical_conv_general_dilated`, what the library's models run on CPUs);
* `patches`: `lax.conv_general_dilated_patches` then one matmul (`models.Conv` on CPUs);
* `im2col` / `matmul`: the two halves of the patches form apart (the patches' bytes written:
  N·H·W·C·9 floats; the matmul [N·H·W, 9C] × [9C, O] and its two backward matmuls);

each as one program called from Python (`host`) and as --steps iterations inside one
`lax.scan` (`scan`, per iteration), so the table shows what a while loop does to each. The
sum over layers beside the whole train step (`experiments.benchmarks.benchmark`'s host-loop figure for
the same model) says how much of the step is convolution. Median of --repeats, compile
excluded (autodiff's `xla` gradient inside the scan on a CPU: 2 iterations, timed once, as
it takes seconds each). Prints the figures, writes nothing.
"""

from absl import app, flags

import jax
import jax.numpy as jnp
from jax import lax

from unlearn_jax import models

from .timing import median_seconds

flags.DEFINE_string("widths", "64,128,256", "the CNN's conv widths")
flags.DEFINE_integer("batch", 128, "batch size")
flags.DEFINE_integer("size", 32, "input height and width (3 channels)")
flags.DEFINE_integer("steps", 8, "iterations inside the scan")
flags.DEFINE_integer("repeats", 5, "timed repetitions (the median is printed)")
flags.DEFINE_string("dtype", "float32", "float32 | bfloat16: inputs and kernels")
F = flags.FLAGS

DIMS = ("NHWC", "HWIO", "NHWC")


def _median(fn, repeats):
  jax.block_until_ready(fn())   # the first run apart
  return median_seconds(fn, repeats)


def _xla(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DIMS)


def _im2col(x, k):
  return lax.conv_general_dilated_patches(x, k.shape[:2], (1, 1), "SAME",
                                          dimension_numbers=DIMS)


def _matmul(p, k):
  # The patches' feature order is (c, i, j): the kernel transposed to match.
  w = jnp.transpose(k, (2, 0, 1, 3)).reshape(-1, k.shape[-1])
  return p @ w


def _fwd_bwd(conv):
  """One forward and backward (input and kernel gradients) of `conv` as a function of
  (x, k) -> a scalar that depends on every gradient (nothing is dead code)."""
  def f(x, k):
    y, vjp = jax.vjp(conv, x, k)
    gx, gk = vjp(jnp.ones_like(y))
    return jnp.sum(y[..., :1]) + jnp.sum(gx[..., :1]) + jnp.sum(gk[..., :1])
  return f


def _in_scan(f, steps):
  """`steps` iterations of f inside one lax.scan; the input carries a dependency on the
  previous result, so no iteration can be hoisted out of the loop."""
  def g(x, k):
    def body(c, _):
      out = f(x + (c * 0).astype(x.dtype), k)
      return c + out.astype(jnp.float32), None
    return lax.scan(body, jnp.float32(0), None, length=steps)[0]
  return g


def main(argv):
  del argv
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[F.dtype]
  widths = [int(w) for w in F.widths.split(",")]
  print(f"# conv profile: jax {jax.__version__}, {jax.default_backend()}, batch {F.batch}, "
        f"{F.size}x{F.size}x3, widths {widths}, {F.dtype}, median of {F.repeats}, "
        f"scan of {F.steps}\n")
  print("| layer | N·H·W × 9C → O | path | host ms | host GFLOP/s | scan ms/iter | "
        "scan GFLOP/s | patches MiB |")
  print("|---|---|---|---|---|---|---|---|")
  key = jax.random.PRNGKey(0)
  c, size, totals = 3, F.size, {}
  for li, o in enumerate(widths):
    x = jax.random.normal(key, (F.batch, size, size, c), dtype)
    k = jax.random.normal(key, (3, 3, c, o), dtype) * 0.1
    p = _im2col(x, k)
    flops = 3 * 2 * F.batch * size * size * c * 9 * o
    mib = p.size * p.dtype.itemsize / 2**20
    shape = f"{F.batch * size * size:,} × {9 * c} → {o}"
    canonical = lambda a, b: models.canonical_conv_general_dilated(
        a, b, (1, 1), "SAME", dimension_numbers=DIMS)
    cases = {
        "xla": (_fwd_bwd(_xla), (x, k), flops),
        "canonical": (_fwd_bwd(canonical), (x, k), flops),
        "patches": (_fwd_bwd(lambda a, b: _matmul(_im2col(a, b), b)), (x, k), flops),
        "im2col": (_fwd_bwd(lambda a, b: _im2col(a, b) * b[0, 0, 0, 0]), (x, k), 0),
        "matmul": (_fwd_bwd(_matmul), (p, k), flops),
    }
    for path, (f, args, fl) in cases.items():
      host_fn = jax.jit(f).lower(*args).compile()
      host = _median(lambda: host_fn(*args), F.repeats)
      # Autodiff's gradient in a loop takes seconds per iteration on the CPU: 2 iterations,
      # timed once.
      slow = path == "xla" and jax.default_backend() == "cpu"
      n_iter, n_rep = (2, 1) if slow else (F.steps, F.repeats)
      scan_fn = jax.jit(_in_scan(f, n_iter)).lower(*args).compile()
      scan = _median(lambda: scan_fn(*args), n_rep) / n_iter
      totals.setdefault(path, [0.0, 0.0])
      totals[path][0] += host
      totals[path][1] += scan
      gf = lambda s: f"{fl / s / 1e9:,.1f}" if fl else "—"
      print(f"| conv{li} | {shape} | {path} | {1e3 * host:.2f} | {gf(host)} | "
            f"{1e3 * scan:.2f} | {gf(scan)} | {mib:,.0f} |", flush=True)
    c, size = o, max(size // 2, 1)
  print("\n| path | all convs, host ms | all convs, scan ms/iter |")
  print("|---|---|---|")
  for path, (h, s) in totals.items():
    print(f"| {path} | {1e3 * h:.1f} | {1e3 * s:.1f} |")


if __name__ == "__main__":
  app.run(main)
