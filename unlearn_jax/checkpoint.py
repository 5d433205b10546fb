"""orbax checkpoints of model populations (leading axis = seed), and of runs to resume.

`save_variables(dir, variables)` writes step 0 of a `CheckpointManager` under `dir`;
`restore_variables(dir, like)` reads it back, checking the tree against `like` so a
mismatched checkpoint fails with a clear message instead of a shape error later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, or does not match the model."""


def _manager(directory: Path, alone: bool = False) -> ocp.CheckpointManager:
  """`alone`: only this process takes part (host arrays it writes by itself in a
  multi-process job); otherwise every process of the job saves and restores together."""
  options = ocp.CheckpointManagerOptions(create=True)
  if alone and jax.process_count() > 1:
    me = jax.process_index()
    Path(directory).mkdir(parents=True, exist_ok=True)   # orbax will not, for one process
    options = ocp.CheckpointManagerOptions(
        create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
  return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save_variables(directory: Path, variables, step: int = 0) -> None:
  """Writes `variables` as step `step`. Host (NumPy) arrays are written by the calling
  process alone (the one writer of a multi-process run); device arrays by every process
  of the job together (orbax's multi-process save)."""
  alone = all(not isinstance(a, jax.Array) for a in jax.tree_util.tree_leaves(variables))
  with _manager(directory, alone) as mngr:
    mngr.save(step, args=ocp.args.StandardSave(variables))
    mngr.wait_until_finished()


def restore_variables(directory: Path, like, step: int | None = None):
  directory = Path(directory)
  if not directory.is_dir():
    raise CheckpointError(f"no checkpoint directory at {directory}")
  with _manager(directory) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{directory} holds no checkpoint steps")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises several types for corrupt/mismatched trees
      raise CheckpointError(f"checkpoint {directory} step {step} does not match the model "
                            f"or is corrupt: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


# ----------------------------------------------------------------------------- resumable runs
class ResumeStore:
  """The checkpoints that let a killed run resume: one orbax `CheckpointManager` per
  population (`original`, `retrain`: the whole train state every `every` epochs, the step
  being the number of finished epochs), one per finished method (its unlearned weights)
  and, for a method run in checkpointed chunks, one of its state mid-method (the step being
  the chunks done, `driver.MethodProgram.resumable`).

  `directory/fingerprint.json` records what produced them (config and hyperparameters);
  `open` refuses a directory written by other flags instead of mixing two runs.
  """

  def __init__(self, directory: Path, every: int = 1):
    self.directory = Path(directory).resolve()
    self.every = max(1, int(every))

  @classmethod
  def open(cls, directory: Path, fingerprint: dict, every: int = 1) -> ResumeStore:
    directory = Path(directory)
    stamp = directory / "fingerprint.json"
    wanted = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if stamp.exists():
      try:
        found = json.loads(stamp.read_text())
      except json.JSONDecodeError as e:
        raise CheckpointError(f"{stamp} is corrupt ({e}); delete {directory} to start over") from e
      if found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise CheckpointError(
            f"{directory} holds checkpoints of a run with other settings (differs in: "
            f"{', '.join(diff)}); delete it, or rerun with the same flags to resume")
    elif jax.process_index() == 0:    # a multi-process job: process 0 writes it
      directory.mkdir(parents=True, exist_ok=True)
      tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
      tmp.write_text(json.dumps(wanted, sort_keys=True, indent=1))
      os.replace(tmp, stamp)     # atomic: a reader sees no fingerprint or a whole one
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("resume store opened")
    return cls(directory, every)

  def _manager(self, name: str, keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory / name,
        options=ocp.CheckpointManagerOptions(create=True, max_to_keep=keep))

  def restore_latest(self, name: str, like) -> tuple | None:
    """(step, tree, meta) of the newest checkpoint of `name`, or None if it has none.
    CheckpointError when it is corrupt or its tree does not match `like` (`like=None`:
    the tree as saved; a callable: `like(step)`, for trees whose shapes depend on the step)."""
    path = self.directory / name
    if not path.is_dir():
      return None
    with self._manager(name) as mngr:
      step = mngr.latest_step()
      if step is None:
        return None
      like = like(step) if callable(like) else like
      abstract = (None if like is None else
                  jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like))
      try:
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises several types for corrupt/mismatched trees
        raise CheckpointError(
            f"checkpoint {path} step {step} is corrupt or does not match the model "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); delete {self.directory} "
            "to start over") from e
    return step, out["state"], dict(out["meta"])

  def save(self, name: str, step: int, tree, meta: dict) -> None:
    with self._manager(name) as mngr:
      mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                              meta=ocp.args.JsonSave(meta)))
      mngr.wait_until_finished()

  def due(self, epoch: int, total: int) -> bool:
    """Whether to checkpoint after `epoch` finished epochs."""
    return epoch == total or epoch % self.every == 0
