"""Which training program is fastest here: the loop form and the convolution, by measurement.

An epoch of training can be compiled two ways (`driver.train_population`'s `loop`):

* `scan`: the epoch as one `lax.scan` of its steps (`train.train_epochs`);
* `unrolled`: a chunk of at most `steps_per_call` steps written out without a loop
  (`train.train_steps`), called from the host until the epoch is done (1 step per call is
  a plain host loop over the compiled step).

and a conv model's convolutions three ways (`models.conv_impl`): XLA's own with autodiff's
gradient (`xla`), XLA's own with the gradient written as canonical convolutions
(`canonical`), patches and one matmul (`patches`), or the model's default (`auto`: on the
CPU canonical, patches for inputs under 4×4). They interact on
XLA's CPU backend, which emits a much slower convolution for autodiff's gradient inside a
while loop (jax-ml/jax#12868): there `scan` must not be paired with `xla`, and which pair
wins depends on the model, the batch and the machine. All give the same batches, keys and
steps, hence the same model up to rounding.

Nothing measured ships with the library: which pair wins is a property of the machine.
`python -m experiments.benchmarks.benchmark --program_table=machine` times every pair on *this*
machine and writes its table to the per-machine cache (`machine_table_path()`:
`$UNLEARN_JAX_PROGRAM_TABLE` when set, else `~/.cache/unlearn_jax/` (or
`$XDG_CACHE_HOME/unlearn_jax/`) `train_programs-<machine>.json`, named by the processor and
its core count). `choose(model_name, backend, batch_size, input_shape)` reads that table,
or `DEFAULT` (`scan` with the model's own convolution) when this machine has none: among the rows of that
backend, input shape and model (the exact spec such as `cnn:16-32-64`, else the base
model's rows), those measured at the batch size nearest to `batch_size`, the fastest,
unless the default form (`scan` with the model's own convolution, `auto`) was measured
within `MARGIN` of it: a gain smaller than that is within the timing noise of a 2-core
machine, and the default compiles fastest. Where nothing was measured it returns `DEFAULT`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib

TABLE_ENV = "UNLEARN_JAX_PROGRAM_TABLE"    # a path that overrides the per-machine table


def machine_name() -> str:
  """This machine as a file-name-safe string: processor model and core count."""
  import os
  import platform
  import re
  cpu = platform.processor() or platform.machine()
  # No /proc (macOS, Windows): the platform's processor name stays.
  with contextlib.suppress(OSError):
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1]
        break
  slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu}-{os.cpu_count()}cores").strip("-").lower()
  return slug or "unknown-machine"


def machine_table_path() -> pathlib.Path:
  """Where this machine's measured table lives (module docstring); it may not exist."""
  import os
  if os.environ.get(TABLE_ENV):
    return pathlib.Path(os.environ[TABLE_ENV]).expanduser()
  cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
  return cache / "unlearn_jax" / f"train_programs-{machine_name()}.json"
LOOPS = ("scan", "unrolled")
CONVS = ("auto", "xla", "patches", "canonical")


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """A training program: `loop` (scan | unrolled), `conv` (auto | xla | patches | canonical;
  `auto` is
  the model's own choice), `steps_per_call` (the unrolled chunk's most steps), and where
  the choice came from (`source`; `images_per_s`: the measured rate it was chosen for)."""
  loop: str = "scan"
  conv: str = "auto"
  steps_per_call: int = 8
  source: str = "default (nothing measured on this machine for this backend and model)"
  images_per_s: float = float("nan")

  def __post_init__(self):
    if self.loop not in LOOPS:
      raise ValueError(f"loop={self.loop!r} is unknown; allowed: {', '.join(LOOPS)}")
    if self.conv not in CONVS:
      raise ValueError(f"conv={self.conv!r} is unknown; allowed: {', '.join(CONVS)}")
    if (isinstance(self.steps_per_call, bool) or not isinstance(self.steps_per_call, int)
        or self.steps_per_call < 1):
      raise ValueError(f"steps_per_call={self.steps_per_call!r} must be a whole number >= 1")

  def describe(self) -> str:
    chunk = f" (≤ {self.steps_per_call} steps per call)" if self.loop == "unrolled" else ""
    rate = "" if math.isnan(self.images_per_s) else f", {self.images_per_s:,.0f} img/s measured"
    return f"{self.loop}{chunk}, conv {self.conv}: {self.source}{rate}"

  def record(self) -> dict:
    """The choice as `results.json` records it."""
    return dataclasses.asdict(self)


DEFAULT = TrainProgram()
MARGIN = 1.1   # another program must be measured this many times faster than the default




def parse(spec: str) -> TrainProgram:
  """`LOOP[:CONV[:STEPS]]` (e.g. `unrolled:xla:8`, `scan:patches`, `scan`) as a program
  chosen by hand."""
  parts = str(spec).split(":")
  if not 1 <= len(parts) <= 3 or not parts[0]:
    raise ValueError(f"train program {spec!r} must be LOOP[:CONV[:STEPS]] with LOOP in "
                     f"{', '.join(LOOPS)} and CONV in {', '.join(CONVS)}")
  steps = DEFAULT.steps_per_call
  if len(parts) == 3:
    try:
      steps = int(parts[2])
    except ValueError:
      raise ValueError(f"train program {spec!r}: STEPS={parts[2]!r} is not a whole "
                       "number") from None
  return TrainProgram(parts[0], parts[1] if len(parts) > 1 else "auto", steps,
                      source="chosen by hand")


def load_table(path=None) -> dict:
  """The measured table (`{"runs": [...], "rows": [...]}`); `path` default: this
  machine's (`machine_table_path`), empty when it was never measured. Each row: backend,
  model, input (`HxWxC`), batch, loop, conv, steps_per_call, images_per_s and `run`, the
  index of the benchmark run (command, commit, date, machine) in `runs` that measured it."""
  path = pathlib.Path(path) if path is not None else machine_table_path()
  if not path.exists():
    return {"runs": [], "rows": []}
  table = json.loads(path.read_text())
  runs = table.get("runs", [])
  for i, row in enumerate(table.get("rows", [])):
    missing = {"backend", "model", "input", "batch", "loop", "conv", "steps_per_call",
               "images_per_s", "run"} - set(row)
    if missing:
      raise ValueError(f"{path}: row {i} lacks {', '.join(sorted(missing))}")
    if not 0 <= int(row["run"]) < len(runs):
      raise ValueError(f"{path}: row {i} names run {row['run']}; the table has {len(runs)}")
  return table


def input_name(input_shape) -> str:
  """`32x32x3` for an input shape (32, 32, 3)."""
  return "x".join(str(int(d)) for d in input_shape)


def choose(model_name: str, backend: str, batch_size: int, input_shape,
           table: dict | None = None) -> TrainProgram:
  """The fastest measured program for `model_name` (a spec like `cnn:16-32-64`) on
  `backend` and inputs of `input_shape` at the batch size nearest to `batch_size` (module
  docstring); `DEFAULT` where the table has no row for them."""
  table = load_table() if table is None else table
  rows = [r for r in table.get("rows", []) if r["backend"] == backend
          and r["input"] == input_name(input_shape)]
  base = model_name.partition(":")[0]
  mine = [r for r in rows if r["model"] == model_name] or [r for r in rows
                                                           if r["model"] == base]
  mine = [r for r in mine if math.isfinite(float(r["images_per_s"]))]
  if not mine:
    return DEFAULT
  nearest = min(abs(math.log(r["batch"] / batch_size)) for r in mine)
  mine = [r for r in mine if abs(math.log(r["batch"] / batch_size)) == nearest]
  rate = lambda r: float(r["images_per_s"])
  best = max(mine, key=rate)
  default = [r for r in mine if r["loop"] == "scan" and r["conv"] == "auto"]
  if default and rate(best) < MARGIN * rate(max(default, key=rate)):
    best = max(default, key=rate)
  measured = table["runs"][int(best["run"])]
  where = ", ".join(str(measured[k]) for k in ("machine", "commit", "date") if k in measured)
  return TrainProgram(best["loop"], best["conv"], int(best["steps_per_call"]),
                      source=f"fastest measured for {best['model']} at batch {best['batch']}"
                      + (f" ({where})" if where else ""),
                      images_per_s=float(best["images_per_s"]))
