"""Split specs: which training examples to forget, as a pure function of (spec, seed).

Scenarios:
  * `random`   — a `forget_fraction` of train, optionally stratified by class.
  * `class`    — every train example of the `forget_classes`.
  * `subclass` — every train example of one or more *fine* classes of a dataset with
                 coarse labels (CIFAR-100): the model is trained on the coarse labels.

The test set is split 50/50 into `val` (for attacks) and `test` (reported) with a
fixed seed that does not depend on the split seed. In the class scenarios `val`/`test`
hold the retain classes and `val_forget`/`test_forget` the forgotten ones.

Every index array is sorted int64; `forget ∩ retain = ∅`, `forget ∪ retain = train`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from collections.abc import Sequence

import numpy as np

SCENARIOS = ("random", "class", "subclass")
VAL_TEST_SEED = 1234


class SplitError(ValueError):
  """A split spec that cannot be realised on the given labels."""


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  scenario: str = "random"
  forget_fraction: float = 0.1
  forget_classes: tuple = ()
  stratified: bool = False
  seed: int = 0

  def validate(self, num_classes: int) -> None:
    if self.scenario not in SCENARIOS:
      raise SplitError(f"scenario={self.scenario!r} is unknown; allowed: {', '.join(SCENARIOS)}")
    if self.scenario == "random":
      if not 0.0 < self.forget_fraction < 1.0:
        raise SplitError(f"forget_fraction={self.forget_fraction} must lie in (0, 1)")
    else:
      if not self.forget_classes:
        raise SplitError(f"scenario={self.scenario} needs forget_classes "
                         f"(comma list of class ids in 0..{num_classes - 1})")
      bad = [c for c in self.forget_classes if not 0 <= c < num_classes]
      if bad:
        raise SplitError(f"forget_classes={','.join(map(str, self.forget_classes))}: "
                         f"{bad} outside the dataset's classes 0..{num_classes - 1}")
      if len(set(self.forget_classes)) == num_classes:
        raise SplitError("forget_classes names every class: nothing would be retained")


@dataclasses.dataclass(frozen=True)
class Split:
  spec: SplitSpec
  forget: np.ndarray
  retain: np.ndarray
  val: np.ndarray
  test: np.ndarray
  val_forget: np.ndarray
  test_forget: np.ndarray

  ARRAYS = ("forget", "retain", "val", "test", "val_forget", "test_forget")

  def digests(self) -> dict:
    return {k: sha256_indices(getattr(self, k)) for k in self.ARRAYS}

  def save(self, directory: Path) -> None:
    directory = Path(directory)
    np.savez(directory / "splits.npz", **{k: getattr(self, k) for k in self.ARRAYS})
    meta = {"spec": dataclasses.asdict(self.spec), "sha256": self.digests(),
            "sizes": {k: int(getattr(self, k).size) for k in self.ARRAYS}}
    (directory / "splits.json").write_text(json.dumps(meta, indent=2) + "\n")


def sha256_indices(idx: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()


def _random_forget(labels, fraction, stratified, rng):
  n = len(labels)
  if stratified:
    chosen = []
    for c in np.unique(labels):
      idx = np.flatnonzero(labels == c)
      k = int(round(fraction * len(idx)))
      chosen.append(rng.choice(idx, size=k, replace=False))
    return np.concatenate(chosen)
  return rng.choice(n, size=int(round(fraction * n)), replace=False)


def make_split(spec: SplitSpec, train_labels: np.ndarray, test_labels: np.ndarray,
               num_classes: int, train_fine: np.ndarray | None = None,
               test_fine: np.ndarray | None = None) -> Split:
  """Builds the split indices. `*_fine` are the fine labels for `subclass`."""
  if spec.scenario == "subclass" and (train_fine is None or test_fine is None):
    raise SplitError("scenario=subclass needs a dataset with coarse and fine labels "
                     "(cifar100); this dataset has only one label set")
  spec.validate(num_classes if spec.scenario != "subclass" else _num(train_fine))
  train_labels = np.asarray(train_labels)
  rng = np.random.default_rng(spec.seed)
  n = len(train_labels)
  if spec.scenario == "random":
    forget = _random_forget(train_labels, spec.forget_fraction, spec.stratified, rng)
    test_mask = np.zeros(len(test_labels), bool)
  else:
    by_train = train_labels if spec.scenario == "class" else np.asarray(train_fine)
    by_test = np.asarray(test_labels) if spec.scenario == "class" else np.asarray(test_fine)
    forget = np.flatnonzero(np.isin(by_train, spec.forget_classes))
    test_mask = np.isin(by_test, spec.forget_classes)
  forget = np.sort(np.asarray(forget, np.int64))
  if forget.size == 0:
    raise SplitError("the forget set is empty: raise forget_fraction or pick "
                     "forget_classes present in train")
  retain = np.setdiff1d(np.arange(n, dtype=np.int64), forget)
  # val/test: a fixed 50/50 split of the test set, independent of the split seed.
  perm = np.random.default_rng(VAL_TEST_SEED).permutation(len(test_labels))
  half = np.zeros(len(test_labels), bool)
  half[perm[: len(test_labels) // 2]] = True
  sel = lambda m: np.flatnonzero(m).astype(np.int64)
  return Split(spec, forget, retain, val=sel(half & ~test_mask), test=sel(~half & ~test_mask),
               val_forget=sel(half & test_mask), test_forget=sel(~half & test_mask))


def _num(labels: Sequence[int] | None) -> int:
  return int(np.max(labels)) + 1 if labels is not None and len(labels) else 0
