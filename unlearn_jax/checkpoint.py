"""orbax checkpoints of model populations (leading axis = seed).

`save_variables(dir, variables)` writes step 0 of a `CheckpointManager` under `dir`;
`restore_variables(dir, like)` reads it back, checking the tree against `like` so a
mismatched checkpoint fails with a clear message instead of a shape error later.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, or does not match the model."""


def _manager(directory: Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(Path(directory).resolve(),
                               options=ocp.CheckpointManagerOptions(create=True))


def save_variables(directory: Path, variables, step: int = 0) -> None:
  with _manager(directory) as mngr:
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
