"""Launching one JAX program as several processes on this machine (tests only).

Each process gets `--config.coordinator_address=127.0.0.1:<free port> --config.num_processes=N
--config.process_id=i`, simulated CPU devices (`--xla_force_host_platform_device_count`) and gloo
collectives (`parallel.initialize_distributed`); loopback only. `launch` waits for all
of them within `timeout` seconds and kills every one that is still running when it
returns or fails, so no test leaves processes behind."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(devices: int) -> dict:
  # PYTHONFAULTHANDLER: a process sent SIGABRT (a launch that ran out of time) writes the
  # Python stack of every thread to its log before it dies.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  env.pop("PYTEST_XDIST_WORKER", None)
  return env


def start(args, processes: int = 2, devices: int = 4, logs: Path | None = None):
  """Popen handles of `python -m <args> --config.coordinator_address=... --config.process_id=i`;
  stdout+stderr of process i go to `logs/process_i.log` (or a pipe)."""
  port = free_port()
  procs = []
  for i in range(processes):
    out = open(logs / f"process_{i}.log", "w") if logs else subprocess.PIPE
    procs.append(subprocess.Popen(
        [sys.executable, "-m", *args, f"--config.coordinator_address=127.0.0.1:{port}",
         f"--config.num_processes={processes}", f"--config.process_id={i}"],
        cwd=ROOT, env=env_for(devices), stdout=out, stderr=subprocess.STDOUT, text=True))
  return procs


def kill_all(procs) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    p.wait()


def launch(args, processes: int = 2, devices: int = 4, timeout: float = 300,
           logs: Path | None = None) -> list:
  """Runs the processes to the end; [(returncode, output)] per process. Kills them all
  if the time runs out (AssertionError) or anything fails."""
  procs = start(args, processes, devices, logs)
  deadline = time.time() + timeout
  try:
    for p in procs:
      left = deadline - time.time()
      p.wait(timeout=max(left, 0.1))
  except subprocess.TimeoutExpired:
    for p in procs:            # where each one is stuck: faulthandler's stacks in its log
      if p.poll() is None:
        p.send_signal(signal.SIGABRT)
    time.sleep(5)
    kill_all(procs)
    tails = "".join(
        f"\n--- process {i} ("
        f"{'still running' if p.returncode is None or p.returncode < 0 else f'rc {p.returncode}'}):\n"
        + ((logs / f"process_{i}.log").read_text()[-6000:] if logs else "")
        for i, p in enumerate(procs))
    raise AssertionError(f"{args[0]} in {processes} processes ran past {timeout} s"
                         + tails) from None
  finally:
    kill_all(procs)
  outs = []
  for i, p in enumerate(procs):
    text = (logs / f"process_{i}.log").read_text() if logs else p.stdout.read()
    outs.append((p.returncode, text))
  return outs


def run_single(args, devices: int = 8, timeout: float = 300):
  """The same job as one process over `devices` simulated devices: (returncode, output)."""
  p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env_for(devices),
                     capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stdout + p.stderr
