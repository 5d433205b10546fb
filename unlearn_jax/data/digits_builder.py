"""scikit-learn's 8x8 handwritten digits as a tfds dataset that prepares offline.

The 1,797 images ship inside scikit-learn, so preparing needs no network and no
TensorFlow: the features are plain `Tensor`s and the records are written as
array_record, which `tfds` reads through `as_data_source`.

The train/test split is fixed and stratified (70/30, seed 0): 1,257 train and 540
test images. Pixels keep scikit-learn's range 0..16 (uint8).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.3
SPLIT_SEED = 0


def stratified_train_test(labels: np.ndarray, test_fraction: float, seed: int):
  """Fixed stratified split: per class, a `test_fraction` share goes to test."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    n_test = int(round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits (UCI optical recognition of handwritten digits), 8x8x1."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Fixed stratified 70/30 train/test split, seed 0."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            # Position in scikit-learn's array: tfds shuffles records on disk,
            # so readers sort by it to get one canonical order.
            "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    from sklearn.datasets import load_digits
    digits = load_digits()
    train, test = stratified_train_test(digits.target, TEST_FRACTION, SPLIT_SEED)
    return {
        "train": self._generate_examples(digits, train),
        "test": self._generate_examples(digits, test),
    }

  def _generate_examples(self, digits, indices):
    for i in indices:
      yield int(i), {
          "image": digits.images[i].astype(np.uint8)[..., None],
          "label": int(digits.target[i]),
          "index": int(i),
      }
