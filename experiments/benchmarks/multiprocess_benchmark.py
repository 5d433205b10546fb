r"""Benchmark: a population trained as one program over 1 process x 8 devices vs 2 processes
x 4 devices on this machine, and the communication that program does.

    python -m experiments.benchmarks.multiprocess_benchmark                      # N = 8 digits MLPs
    python -m experiments.benchmarks.multiprocess_benchmark --models=16 --epochs=30 --repeats=5

Each layout is a separate launch of this module (`--worker`): simulated CPU devices
(`--xla_force_host_platform_device_count`), the 2-process one over `jax.distributed` on
127.0.0.1 with gloo collectives. The worker builds the population mesh the experiments
build (`parallel.population_mesh_shape`: the seeds axis over every device and process,
data within one), trains the N models with `driver.train_population` (vmapped, one
compiled epoch program) --repeats times after a warm-up, and prints the median models
trained per minute. From the compiled epoch program's HLO (`compiled.as_text()`) it counts
the cross-device collectives (all-reduce, all-gather, reduce-scatter, all-to-all,
collective-permute) and the bytes of their results (an op inside the step loop runs every
step): none when the seeds axis carries the population, since no gradient crosses a
model (with a data axis of 2, the gradient all-reduce appears).
"""

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

flags.DEFINE_integer("models", 8, "population size N (a multiple of 8)")
flags.DEFINE_integer("epochs", 10, "epochs per model (digits MLP recipe otherwise)")
flags.DEFINE_integer("repeats", 3, "timed trainings per layout (median reported)")
flags.DEFINE_bool("worker", False, "internal: run one layout's measurement")
flags.DEFINE_string("coordinator", "", "internal: host:port of the 2-process layout")
flags.DEFINE_integer("num_processes", 1, "internal")
flags.DEFINE_integer("process_id", 0, "internal")

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
                "pred": 1, "s8": 1, "u8": 1}


def collective_bytes(hlo: str) -> dict:
  """{collective: (count, bytes of its results)} in an HLO module's text."""
  out = {}
  for line in hlo.splitlines():
    m = re.search(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if not m:
      continue
    size = sum(_DTYPE_BYTES.get(dt, 4) * int(np.prod([int(d) for d in dims.split(",") if d]
                                                       or [1]))
               for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)))
    count, total = out.get(m.group(2), (0, 0))
    out[m.group(2)] = (count + 1, total + size)
  return out


def worker() -> None:
  F = flags.FLAGS
  import jax
  from unlearn_jax import parallel
  if F.num_processes > 1:
    parallel.initialize_distributed(F.coordinator, F.num_processes, F.process_id)
  import jax.numpy as jnp
  from unlearn_jax import data, driver, models, train
  ds = data.load_dataset("digits")
  seeds, data_axis = parallel.population_mesh_shape(F.models)
  mesh = parallel.make_mesh(data=data_axis, seeds=seeds)
  model = models.get_model("mlp", ds.num_classes)
  cfg = train.TrainConfig(epochs=F.epochs, batch_size=64, lr=0.05)
  keys = jax.random.split(jax.random.PRNGKey(0), F.models)
  times, programs = [], {}
  with parallel.data_parallel(mesh):
    x, y = parallel.replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)))
    init = parallel.shard_seeds(jax.jit(jax.vmap(lambda k: models.init_variables(
        model, k, ds.input_shape)))(keys))
    for r in range(F.repeats + 1):          # the first is the warm-up (and compilation)
      t0 = time.perf_counter()
      ms = driver.train_population(model, cfg, init, x, y, keys, seed_mode="vmap",
                                   log=lambda s: None, programs=programs)
      jax.block_until_ready(ms.variables)
      if r:
        times.append(time.perf_counter() - t0)
  hlo = next(iter(programs.values())).as_text()
  comm = collective_bytes(hlo)
  moved = sum(b for _, b in comm.values())
  if jax.process_index() == 0:
    median = statistics.median(times)
    print(f"RESULT {jax.process_count()} process(es) x {jax.local_device_count()} devices, "
          f"mesh seeds={seeds} x data={data_axis}: {F.models * 60 / median:,.0f} models/min "
          f"(median {median:.2f} s for {F.models} models x {F.epochs} epochs, "
          f"{F.repeats} runs); collectives in the epoch program: "
          f"{', '.join(f'{k} x{c} ({b:,} B)' for k, (c, b) in comm.items()) or 'none'} "
          f"({moved:,} bytes per execution; those in the step loop run every step)",
          flush=True)


def _launch(processes: int, devices: int) -> str:
  import os
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  F = flags.FLAGS
  args = [sys.executable, "-m", "experiments.benchmarks.multiprocess_benchmark", "--worker",
          f"--models={F.models}", f"--epochs={F.epochs}", f"--repeats={F.repeats}",
          f"--num_processes={processes}", f"--coordinator=127.0.0.1:{port}"]
  procs = [subprocess.Popen(args + [f"--process_id={i}"], env=env, text=True,
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
           for i in range(processes)]
  try:
    outs = [p.communicate(timeout=900)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  lines = [l for l in outs[0].splitlines() if l.startswith("RESULT")]
  if any(p.returncode for p in procs) or not lines:
    raise SystemExit(f"the {processes}-process layout failed: {outs[0][-2000:]}")
  return lines[0][len("RESULT "):]


def main(argv):
  del argv
  if flags.FLAGS.worker:
    worker()
    return
  import jax
  print(f"JAX {jax.__version__}; {flags.FLAGS.models} digits MLPs, {flags.FLAGS.epochs} epochs")
  for processes, devices in ((1, 8), (2, 4)):
    print(_launch(processes, devices), flush=True)


if __name__ == "__main__":
  app.run(main)
