"""First use under concurrency: several processes preparing the same cache entry at once
(two jobs on a new machine, cluster nodes sharing a home directory) all succeed and read
identical arrays. Each test starts its processes on an empty cache, holds them at a
barrier so they reach the first write together, and kills them if they outlive a limit."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Processes started on an empty cache, as a user's jobs would: the integration lane.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 4
LIMIT_S = 240

# Waits for the barrier file, loads the dataset, prints a digest of every array.
CHILD = r"""
import hashlib, os, sys, time
go = sys.argv[2]
while not os.path.exists(go):
  time.sleep(0.01)
from unlearn_jax.data import load_dataset
ds = load_dataset(sys.argv[1])
h = hashlib.sha256()
for a in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
  h.update(a.tobytes())
print("digest", h.hexdigest(), len(ds.train_y), len(ds.test_y))
"""


def _load_at_once(dataset: str, cache: Path, tmp: Path):
  go = tmp / "go"
  env = {**os.environ, "UNLEARN_JAX_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
  procs = [subprocess.Popen([sys.executable, "-c", CHILD, dataset, str(go)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(PROCESSES)]
  try:
    time.sleep(1.0)       # let every child start its interpreter before the barrier opens
    go.write_text("go")
    deadline = time.monotonic() + LIMIT_S
    outs = []
    for p in procs:
      out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      outs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  failed = [(rc, err[-1500:]) for rc, _, err in outs if rc != 0]
  assert not failed, f"{len(failed)} of {PROCESSES} processes failed: {failed[0]}"
  digests = {out.split("digest", 1)[1].strip() for _, out, _ in outs}
  assert len(digests) == 1, f"the processes read different arrays: {digests}"
  return digests.pop()


def test_four_processes_prepare_digits_at_once_on_an_empty_cache(tmp_path):
  cache = tmp_path / "cache"
  assert not cache.exists()
  digest = _load_at_once("digits", cache, tmp_path)
  assert digest.endswith("1258 539"), digest
  # Exactly one prepared copy, no leftovers of the losers.
  versions = [p.name for p in (cache / "tfds" / "sklearn_digits").iterdir() if p.is_dir()]
  assert versions == ["1.0.0"], versions


def test_four_processes_decode_an_image_folder_at_once(tmp_path):
  from PIL import Image
  folder = tmp_path / "images"
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("test", 3)):
    for cls in ("cat", "dog"):
      (folder / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
            folder / split / cls / f"{i}.png")
  cache = tmp_path / "cache"
  digest = _load_at_once(f"image_folder:{folder}", cache, tmp_path)
  assert digest.endswith("12 6"), digest
  files = sorted(p.name for p in (cache / "image_folder").iterdir())
  assert len([f for f in files if f.endswith(".npz")]) == 1, files
  assert not [f for f in files if f.endswith(".tmp")], files      # no temporary left behind


HOLDER = r"""
import os, sys, time
from pathlib import Path
from experiments.pipeline import rundir, usage
lock = rundir.workdir_lock(Path(sys.argv[1]))
lock.acquire()
Path(sys.argv[2]).write_text("held")
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
  time.sleep(0.02)
"""


def test_a_workdir_in_use_by_another_process_is_a_usage_error(tmp_path, monkeypatch):
  """Two runs given one --workdir: the second is refused while the first writes, writes
  nothing, and may run once the first is done."""
  from experiments.pipeline import rundir, usage
  monkeypatch.setenv("UNLEARN_JAX_CACHE", str(tmp_path / "cache"))
  final = (tmp_path / "run").resolve()
  held, done = tmp_path / "held", tmp_path / "done"
  env = {**os.environ, "UNLEARN_JAX_CACHE": str(tmp_path / "cache")}
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(final), str(held), str(done)],
                            cwd=ROOT, env=env)
  try:
    deadline = time.monotonic() + 120
    while not held.exists():
      assert holder.poll() is None and time.monotonic() < deadline, "the holder did not start"
      time.sleep(0.05)
    with pytest.raises(usage.UsageError, match="being written by another running process"):
      with rundir.staged_workdir(str(final), overwrite=False):
        pytest.fail("entered a workdir another process holds")
    assert not final.exists() and not list(tmp_path.glob(".run.partial-*"))
    done.write_text("done")
    holder.wait(timeout=60)
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
  with rundir.staged_workdir(str(final), overwrite=False) as (_, staging):
    staging.mkdir()
    (staging / "results.csv").write_text("x")
  assert (final / "results.csv").read_text() == "x"
