"""The run directory: checked before anything is written, staged in a hidden sibling and
moved into place only when complete (`staged_workdir`), stamped with its provenance,
locked against a second writer; and the resume store beside it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import data as data_lib
from unlearn_jax import driver
from unlearn_jax import parallel
from .experiment import Setup
from .usage import UsageError


@contextlib.contextmanager
def checkpoint_errors_as_usage():
  """A corrupt or foreign resume checkpoint is the user's to fix: one line, no traceback."""
  from unlearn_jax import checkpoint
  try:
    yield
  except checkpoint.CheckpointError as e:
    raise UsageError(str(e)) from e


def prepare_workdir(workdir: str, overwrite: bool) -> tuple[Path, Path]:
  """Checks the workdir and returns (final path, staging path); writes nothing yet."""
  final = Path(workdir).expanduser().resolve()
  if final.exists() and not final.is_dir():
    raise UsageError(f"--workdir={workdir} is a file; give a directory path")
  if final.is_dir() and any(final.iterdir()) and not overwrite:
    raise UsageError(f"--workdir={workdir} already holds files; pass --overwrite to replace "
                     "them or choose another directory")
  if not final.parent.exists():
    raise UsageError(f"--workdir={workdir}: parent directory {final.parent} does not exist")
  if not os.access(final.parent, os.W_OK):
    raise UsageError(f"--workdir={workdir}: cannot write in {final.parent} (read-only or no "
                     "permission); choose a writable directory")
  staging = final.parent / f".{final.name}.partial-{os.getpid()}-{int(time.time() * 1e3)}"
  return final, staging


def provenance() -> dict:
  """What made a run, for the stamp under every table built from it: the command, the
  code's commit (None outside a git checkout; `dirty` when it had uncommitted changes
  outside `docs/results/`, the committed run directories),
  the date, the package versions and the hardware."""
  import datetime
  import platform
  import subprocess
  import __main__
  here = Path(__file__).resolve().parent

  def git(*args):
    try:
      r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                         timeout=10)
      return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
      return None

  program = sys.argv[0]
  if not program.startswith("unlearn-jax"):
    spec = getattr(__main__, "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {program}"
  # The arguments as typed: the CLI rewrites a shipped config's name (`--config=digits`)
  # into its path in sys.argv; the interpreter's own copy keeps the name.
  given = sys.argv[1:]
  typed = getattr(sys, "orig_argv", [])[len(getattr(sys, "orig_argv", [])) - len(given):]
  same = len(typed) == len(given) and all(
      t == g or (t.startswith("--config") and g.startswith("--config")) for t, g in zip(typed, given))
  args = typed if same else given
  commit = git("rev-parse", "HEAD")
  cpu = next((line.split(":", 1)[1].strip() for line in
              Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
             platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
  import unlearn_jax
  return {"command": " ".join([program, *args]),
          # Committed run directories (docs/results/) are outputs, not code: a run made
          # after another one rewrote them is still a run of the committed code.
          "commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no",
                                              "--", ":(top)", ":(top,exclude)docs/results"))
          if commit else None,
          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
          "unlearn_jax": unlearn_jax.__version__, "jax": jax.__version__,
          "python": platform.python_version(),
          "hardware": {"cpu": cpu, "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                       "devices": jax.device_count(),
                       "device_kind": jax.devices()[0].device_kind,
                       "processes": jax.process_count()}}


def commit_workdir(staging: Path, final: Path, stamp: dict | None = None) -> None:
  """Moves the finished run into place (the only step that touches `final`), with its
  `provenance.json`: `stamp` (`provenance()` taken when the run started, so the commit and
  a dirty tree are those the run began with) and the time it finished."""
  import datetime
  stamp = dict(stamp or provenance())
  stamp["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  (staging / "provenance.json").write_text(json.dumps(stamp, indent=1) + "\n")
  if final.exists():
    shutil.rmtree(final)
  staging.rename(final)


def resume_dir_for(workdir: str) -> Path:
  """Where a run's resume checkpoints live: a hidden sibling of the workdir."""
  final = Path(workdir).expanduser().resolve()
  return final.parent / f".{final.name}.resume"


def workdir_lock(final: Path):
  """The inter-process lock of a run directory and its resume store, taken without waiting:
  a second process given the same --workdir while the first still writes it gets a
  UsageError. The lock file lives in the cache (`$UNLEARN_JAX_CACHE/locks/`), keyed by the
  directory's absolute path, so nothing is added beside the run."""
  import hashlib
  import filelock
  locks = data_lib.cache_dir() / "locks"
  locks.mkdir(parents=True, exist_ok=True)
  key = hashlib.sha1(str(final).encode()).hexdigest()[:20]
  return filelock.FileLock(str(locks / f"workdir-{key}.lock"), timeout=0)


@contextlib.contextmanager
def staged_workdir(workdir: str, overwrite: bool):
  """Yields (final, staging): write into `staging`; it is moved to `final` when the block
  ends normally and deleted when it raises, so no half-written run is ever left. The
  block holds the workdir's lock (`workdir_lock`): two processes never write one run
  directory or its resume store at once. In a multi-process job only process 0 stages
  and writes; the others get `staging=None`."""
  import filelock
  final, _ = prepare_workdir(workdir, overwrite)      # bad input: nothing written yet
  if not parallel.is_writer():     # a multi-process job: process 0 writes the run
    yield final, None
    return
  lock = workdir_lock(final)
  try:
    lock.acquire()
  except filelock.Timeout:
    raise UsageError(f"--workdir={workdir} is being written by another running process; "
                     "wait for it to finish or choose another directory") from None
  try:
    final, staging = prepare_workdir(workdir, overwrite)   # again, now that it is ours
    stamp = provenance()
    try:
      yield final, staging
      commit_workdir(staging, final, stamp)
    finally:
      if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
  finally:
    lock.release()
    # Nothing is left in the cache: the lock file goes with the lock. Nobody waits on it
    # (timeout=0); only a second command on the same workdir that opened the file in the
    # microseconds between this release and this unlink could still lock the old file.
    with contextlib.suppress(OSError):
      os.unlink(lock.lock_file)


# method_checkpoint_every is fingerprinted: it decides what a mid-method checkpoint step is.
# How the job is started and where it logs (a process's id, the coordinator's port) is not
# what it computes; the tuned hparams' file is (the hyperparameters are fingerprinted);
# nor is where the references are cached (the cache has its own fingerprint).
_NOT_FINGERPRINTED = ("plots", "save_checkpoints", "checkpoint_every", "distributed",
                      "heartbeat_seconds", "coordinator_address", "num_processes",
                      "process_id", "tensorboard_dir", "wandb_project", "tuned_hparams",
                      "references_dir")


def open_resume_store(resume_dir, cfg, hparams: dict, st: Setup):
  """The `checkpoint.ResumeStore` of a run (None without `resume_dir`); UsageError when
  it holds another run's checkpoints or a corrupt fingerprint."""
  if resume_dir is None:
    return None
  from unlearn_jax import checkpoint
  fp = {"config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_FINGERPRINTED},
        "hparams": hparams, "recipe": dataclasses.asdict(st.recipe), "mode": st.mode,
        "mesh": dict(st.mesh.shape) if st.mesh is not None else None}
  with checkpoint_errors_as_usage():
    return checkpoint.ResumeStore.open(resume_dir, fp, int(cfg.get("checkpoint_every", 1)))


def resumed_method(store, name: str, like_variables, log) -> driver.ModelSet | None:
  """A method's ModelSet from the resume store, or None if it has not finished before."""
  if store is None:
    return None
  with checkpoint_errors_as_usage():
    found = store.restore_latest(f"method_{name}", None)
  if found is None:
    return None
  _, tree, meta = found
  variables = jax.tree_util.tree_map(jnp.asarray, tree["variables"])
  if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(like_variables):
    raise UsageError(f"{store.directory}/method_{name} does not hold this model's weights; "
                     f"delete {store.directory} to start over")
  log(f"method {name}: finished before, restored from {store.directory / ('method_' + name)}")
  return driver.ModelSet(name, variables, float(meta["seconds"]), float(meta["compile_seconds"]),
                  dict(meta.get("aux", {})),
                  {k: np.asarray(v) for k, v in (tree.get("artifacts") or {}).items()},
                  float(meta.get("peak_bytes", float("nan"))),
                  {k: np.asarray(v) for k, v in (tree.get("along") or {}).items()})
