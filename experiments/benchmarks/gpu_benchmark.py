r"""The GPU check: what only an accelerator shows, as one script that writes its figures.

    python -m experiments.benchmarks.gpu_benchmark --dataset=cifar10 --out=gpu_figures.md
    python -m experiments.benchmarks.gpu_benchmark --dataset=cifar10:/data/cifar-10-python.tar.gz \
        --out=gpu_figures.md

Three parts, each written to `--out` (Markdown) and `--out`.json as soon as it ends, so that
a run stopped by a time limit keeps what it measured:

1. **airbench94 populations** on all of CIFAR-10 with airbench's recipe
   (`recipes.train_config_for("airbench94", ds)`, 10 epochs at batch 1,024): N = 1 and
   N = `--airbench_models`, vmapped as one program by `PopulationProgram`, training seconds
   (median of `--repeats`, after compilation, compile time apart), models per hour and
   test accuracy with airbench's test-time augmentation (`train.predict_tta`, level 2),
   mean ± std over members. The anchor: airbench reports 94.01% in 3.09 s per model on an
   A100 (PyTorch, `torch.compile`d, fp16), ~1,165 models per hour.
2. **ResNet-9 populations** (the Easy Data Unlearning Bench's network, full width) for
   `--resnet9_epochs` epochs of its recipe: ours vmapped against PyTorch's stacked
   `groups=N` network (`experiments.torch_population`), N = `--resnet9_models`, on the same
   GPU in the same process; models per hour are per full 24-epoch recipe (seconds per
   epoch × 24).
3. **ResNet-18 train step**: images/s of one jitted step (batch `--resnet18_batch`, median of
   `--repeats` runs of `--resnet18_steps` steps) against PyTorch's same network and step.

PyTorch rows need torch with CUDA on the machine (`torch.cuda.is_available()`); without
it they say so. Each framework runs at its own default precision for float32 (JAX and
PyTorch both use TF32 convolutions on Ampere and later). `--smoke` runs every part at toy
sizes on whatever backend there is (CI's dry run of this script).
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

from absl import app, flags, logging

import jax
import numpy as np

from unlearn_jax import data, models, train

from . import population_timing as pb
from ..pipeline import reference_models
from ..configs import recipes

flags.DEFINE_string("dataset", "cifar10", "CIFAR-10: cifar10 (tfds), cifar10:PATH (the python "
                    "archive) or image_folder:PATH")
flags.DEFINE_string("out", "", "Markdown file for the figures (and OUT.json)")
flags.DEFINE_integer("airbench_models", 8, "the airbench94 population's N")
flags.DEFINE_integer("resnet9_models", 8, "the ResNet-9 population's N")
flags.DEFINE_integer("resnet9_epochs", 1, "ResNet-9 epochs timed (models/hour per 24 epochs)")
flags.DEFINE_integer("resnet18_batch", 256, "ResNet-18 step batch size")
flags.DEFINE_integer("resnet18_steps", 30, "ResNet-18 steps per timing")
flags.DEFINE_integer("repeats", 2, "timed repetitions (median reported)")
flags.DEFINE_list("parts", ["airbench", "resnet9", "resnet18"], "which parts to run")
flags.DEFINE_bool("smoke", False, "toy sizes (a 512-image subset, narrow models, 1 epoch)")

AIRBENCH_ANCHOR = "airbench94: 94.01% mean test accuracy (n = 1,000) in 3.09 s on an A100"


class Report:
  """The figures so far, rewritten to OUT (Markdown) and OUT.json after every part."""

  def __init__(self, path: str, header: str):
    self.path, self.parts, self.header = Path(path), [], header
    self.json = {"header": header}

  def add(self, key: str, markdown: str, figures):
    self.parts.append(markdown)
    self.json[key] = figures
    self.path.write_text("\n\n".join([self.header] + self.parts) + "\n")
    Path(f"{self.path}.json").write_text(json.dumps(self.json, indent=1, default=float) + "\n")
    print(markdown, flush=True)


def torch_device(smoke: bool = False):
  """Where PyTorch's rows run: 'cuda' when PyTorch with a GPU is here; with `smoke`, 'cpu'
  when PyTorch is installed without one; else None (no PyTorch rows)."""
  try:
    import torch
  except ImportError:
    return None
  if torch.cuda.is_available():
    return "cuda"
  return "cpu" if smoke else None


def _acc(acc) -> str:
  return f"{100 * np.mean(acc):.2f} ± {100 * np.std(acc):.2f}%"


def airbench_part(F, ds, report):
  cfg = recipes.train_config_for("airbench94", ds)
  spec = "airbench94:16-32-32" if F.smoke else "airbench94"
  if F.smoke:
    cfg = train.TrainConfig(**{**cfg.__dict__, "epochs": 1, "batch_size": 128,
                               "lr": cfg.lr * 128 / 1024})
  rows, lines = [], ["## airbench94 populations", "",
                     f"{spec}, {cfg.epochs} epochs at batch {cfg.batch_size}, "
                     f"{len(ds.train_y):,} training images; anchor: {AIRBENCH_ANCHOR}.", "",
                     "| N | train s | s per model | models/hour | compile s | "
                     "TTA test accuracy (mean ± std) |", "|---|---|---|---|---|---|"]
  for n in sorted({1, F.airbench_models}):
    sec, compile_s, acc = pb.jax_population(spec, ds, cfg, n, "vmap", F.repeats, tta=2,
                                            init_images=reference_models.DATA_INIT_IMAGES)
    rows.append({"n": n, "train_s": sec, "models_per_hour": 3600 * n / sec,
                 "compile_s": compile_s, "accuracies": acc.tolist()})
    lines.append(f"| {n} | {sec:.2f} | {sec / n:.2f} | {3600 * n / sec:,.0f} | "
                 f"{compile_s:.1f} | {_acc(acc)} |")
  report.add("airbench94", "\n".join(lines), rows)


def resnet9_part(F, ds, report):
  base = recipes.train_config_for("resnet9", ds)
  cfg = train.TrainConfig(**{**base.__dict__, "epochs": F.resnet9_epochs})
  spec = "resnet9:8-16-32-16" if F.smoke else "resnet9"
  n, device = F.resnet9_models, torch_device(F.smoke)
  got = {"jax_vmap": pb.jax_population(spec, ds, cfg, n, "vmap", F.repeats)}
  if device:
    got["torch_stacked"] = pb.torch_population(spec, ds, cfg, n, True, F.repeats,
                                               device=device)
  per_recipe = base.epochs / cfg.epochs
  lines = ["## ResNet-9 populations against PyTorch stacked", "",
           f"{spec}, N = {n}, {cfg.epochs} epoch(s) of the Easy Data Unlearning Bench's "
           f"recipe timed; models/hour per {base.epochs}-epoch recipe.", "",
           "| way | train s | models/hour | × PyTorch stacked | compile s | test accuracy |",
           "|---|---|---|---|---|---|"]
  torch_s = got.get("torch_stacked", (None,))[0]
  rows = []
  for way, (sec, compile_s, acc) in got.items():
    ratio = f"{torch_s / sec:.2f}" if torch_s else "—"
    rows.append({"way": way, "train_s": sec, "models_per_hour": 3600 * n / (sec * per_recipe),
                 "compile_s": compile_s, "accuracies": acc.tolist()})
    lines.append(f"| {way} | {sec:.2f} | {3600 * n / (sec * per_recipe):,.0f} | {ratio} | "
                 f"{compile_s:.1f} | {_acc(acc)} |")
  if "torch_stacked" not in got:
    lines.append("\nNo PyTorch with CUDA here (on a CPU, --smoke with torch installed): no "
                 "PyTorch row.")
  report.add("resnet9", "\n".join(lines), rows)


def _jax_step_rate(model, shape, batch, steps, repeats):
  cfg = train.TrainConfig(epochs=1, batch_size=batch, lr=0.1)
  tx = train.make_optimizer(cfg, steps)
  step = jax.jit(train.make_supervised_step(model, tx), donate_argnums=0)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch,) + shape)
  y = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, 10)
  state = train.init_train_state(models.init_variables(model, jax.random.PRNGKey(2), shape), tx)
  state, _ = step(state, (x, y), jax.random.PRNGKey(3))           # compiles
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = step(state, (x, y), jax.random.PRNGKey(i))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return batch * steps / statistics.median(times)


def _torch_step_rate(spec, shape, batch, steps, repeats, device):
  import torch

  from . import torch_population as tp
  base, kwargs = models.parse_model_spec(spec)
  net = tp.build(base, kwargs, 1, shape, 10).to(device)
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  x = torch.randn(batch, shape[-1], *shape[:2], device=device)
  y = torch.randint(0, 10, (batch,), device=device)

  def one():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x)[:, 0], y).backward()
    opt.step()

  net.train()
  one()
  times = []
  for _ in range(repeats):
    tp.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
      one()
    tp.synchronize(device)
    times.append(time.perf_counter() - t0)
  return batch * steps / statistics.median(times)


def resnet18_part(F, ds, report):
  spec = "resnet18:8-16-32-64" if F.smoke else "resnet18"
  model = models.get_model(spec, 10)
  shape, device = ds.input_shape, torch_device(F.smoke)
  ours = _jax_step_rate(model, shape, F.resnet18_batch, F.resnet18_steps, F.repeats)
  theirs = (_torch_step_rate(spec, shape, F.resnet18_batch, F.resnet18_steps, F.repeats,
                             device) if device else None)
  lines = ["## ResNet-18 train step", "",
           f"{spec}, batch {F.resnet18_batch}, {F.resnet18_steps} steps per timing, "
           f"SGD Nesterov, float32 at each framework's default precision.", "",
           "| framework | images/s | × PyTorch |", "|---|---|---|",
           f"| JAX (jit) | {ours:,.0f} | {ours / theirs:.2f} |" if theirs else
           f"| JAX (jit) | {ours:,.0f} | — |"]
  if theirs:
    lines.append(f"| PyTorch (eager) | {theirs:,.0f} | 1.00 |")
  else:
    lines.append("\nNo PyTorch with CUDA here (on a CPU, --smoke with torch installed): no "
                 "PyTorch row.")
  report.add("resnet18", "\n".join(lines), {"jax_images_per_s": ours,
                                             "torch_images_per_s": theirs})


PARTS = {"airbench": airbench_part, "resnet9": resnet9_part, "resnet18": resnet18_part}


def main(argv):
  del argv
  F = flags.FLAGS
  if not F["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not F.out:
    raise app.UsageError("--out is required: the Markdown file the figures go to")
  unknown = sorted(set(F.parts) - set(PARTS))
  if unknown:
    raise app.UsageError(f"--parts: {unknown[0]!r} is unknown; allowed: {', '.join(PARTS)}")
  out = Path(F.out)
  if not out.parent.is_dir():
    raise app.UsageError(f"--out={F.out}: the folder {out.parent} does not exist")
  try:
    ds = data.load_dataset(F.dataset, train_subset=512 if F.smoke else 0,
                           test_subset=256 if F.smoke else 0)
  except (ValueError, OSError) as e:
    raise app.UsageError(f"--dataset={F.dataset}: {e}") from None
  device = jax.devices()[0]
  versions = f"JAX {jax.__version__}"
  if torch_device(F.smoke):
    import torch
    versions += f", PyTorch {torch.__version__}"
  header = (f"# GPU figures\n\n{getattr(device, 'device_kind', device.platform)} "
            f"({jax.default_backend()}), {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; {versions}; {F.dataset}: {len(ds.train_y):,} training, "
            f"{len(ds.test_y):,} test images; median of {F.repeats}"
            + (" (--smoke: toy sizes)" if F.smoke else ""))
  report = Report(F.out, header)
  print(header, flush=True)
  t0 = time.perf_counter()
  for name in F.parts:
    PARTS[name](F, ds, report)
  print(f"all parts in {time.perf_counter() - t0:.0f} s; figures in {F.out}")


if __name__ == "__main__":
  app.run(main)
