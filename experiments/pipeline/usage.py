"""User mistakes and how a CLI reports them: `UsageError` (one line, exit status 2,
nothing written), the lines for an OS error and Ctrl-C, and library messages in flag terms."""

from __future__ import annotations


import jax



_FLAG_WORDS = ("dataset", "scenario", "forget_fraction", "forget_classes", "model")


def as_flags(message: str) -> str:
  """A library message names arguments (`dataset=x`); the CLI's names them as flags."""
  import re
  words = "|".join(_FLAG_WORDS)
  message = re.sub(r"(?<![\w-])(" + words + r")(?==| needs| names)", r"--config.\1", message)
  return re.sub(r"(?<=needs )(" + words + r")\b", r"--config.\1", message)


def flag_error_line(error: Exception) -> str:
  """One line for a flag error. absl wraps an exception raised while loading a config file
  (say `get_config` refusing an unknown `--config=FILE:ARG`) with its whole traceback:
  keep the flag's own first line and the exception's message."""
  lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
  if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1]}"
  return " ".join(lines)


class UsageError(ValueError):
  """A user mistake: printed as one line, exit status 2, nothing written."""


def one_process_only(entry_point: str, why: str) -> None:
  """UsageError when `entry_point` is started as one process of several."""
  if jax.process_count() > 1:
    raise UsageError(f"{entry_point} runs in one process ({why}); start it without "
                     "--config.distributed / --config.coordinator_address")


def error_line(error: Exception) -> str:
  """The one line a CLI prints for a user mistake (then it exits with status 2)."""
  return f"error: {error}"


INTERRUPTED_LINE = ("interrupted: the run directory was not written; rerun the same command "
                    "to resume from the last checkpoint")


def redeliver_lost_interrupts() -> None:
  """Makes a Ctrl-C that Python drops be delivered again.

  Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Inside a
  garbage-collector callback (JAX registers one that frees XLA buffers) the exception
  cannot propagate: Python prints "Exception ignored in ..." through `sys.unraisablehook`
  and the run goes on, so the user's Ctrl-C is lost. This hook sends SIGINT again from a
  helper thread a moment later (sent from the hook itself, it would be raised inside the
  hook, where it is dropped too), so the interrupt lands in the main thread's own code;
  any other unraisable exception goes to the previous hook. A SIGINT that the process
  ignores (a job started in the background of a shell) stays ignored."""
  import os
  import signal
  import sys
  import threading
  previous = sys.unraisablehook

  def hook(unraisable):
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
      again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
      again.daemon = True
      again.start()
      return
    previous(unraisable)

  sys.unraisablehook = hook


def os_error_line(error: OSError) -> str:
  """The one line a CLI prints for an OS error (then it exits with status 1): what failed,
  on which path, and what to do."""
  what = error.strerror or type(error).__name__
  where = f": {error.filename}" if error.filename else ""
  return (f"error: {what}{where}; nothing was written to the run directory (choose a "
          "writable --workdir, or set UNLEARN_JAX_CACHE to a writable folder for the cache)")


def begin_cli(argv) -> None:
  """What every experiments CLI does first: refuse stray arguments, keep the console for
  progress (orbax and tfds log every file they touch at INFO), no tfds progress bars."""
  from absl import app, flags, logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
