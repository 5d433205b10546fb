"""Datasets by name: the offline digits builder, image folders, tfds (mocked)."""

import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from unlearn_jax.data import DatasetError, load_dataset, stratified_subset



def test_digits_is_the_real_sklearn_data(digits):
  from sklearn.datasets import load_digits
  assert digits.train_x.shape == (1258, 8, 8, 1) and digits.test_x.shape == (539, 8, 8, 1)
  assert digits.num_classes == 10 and digits.train_x.dtype == np.float32
  # Stratified: every class holds ~70% of its examples in train.
  counts = np.bincount(digits.train_y, minlength=10) / np.bincount(load_digits().target)
  assert np.all(np.abs(counts - 0.7) < 0.01)
  np.testing.assert_allclose(digits.train_x.mean(), 0.0, atol=1e-4)


def test_digits_order_is_canonical(digits):
  again = load_dataset("digits")
  np.testing.assert_array_equal(digits.train_x, again.train_x)
  np.testing.assert_array_equal(digits.test_y, again.test_y)


def _write_folder(root, size=(6, 6), per_class=3):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for cls in ("cat", "airplane"):  # unsorted on purpose: labels follow sorted names
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder(tmp_path, monkeypatch, as_tar):
  monkeypatch.setenv("UNLEARN_JAX_CACHE", str(tmp_path / "cache"))
  _write_folder(tmp_path / "imgs")
  path = tmp_path / "imgs"
  if as_tar:
    path = tmp_path / "imgs.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
      tar.add(tmp_path / "imgs", arcname="imgs")
  ds = load_dataset(f"image_folder:{path}")
  assert ds.class_names == ("airplane", "cat")
  assert ds.train_x.shape == (6, 6, 6, 3) and ds.test_x.shape == (6, 6, 6, 3)
  np.testing.assert_array_equal(ds.train_y, [0, 0, 0, 1, 1, 1])
  cached = load_dataset(f"image_folder:{path}")  # second read comes from the .npz cache
  np.testing.assert_array_equal(ds.train_x, cached.train_x)


def test_image_folder_errors(tmp_path):
  with pytest.raises(DatasetError, match="no such file"):
    load_dataset(f"image_folder:{tmp_path}/missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DatasetError, match="expected PATH/train"):
    load_dataset(f"image_folder:{tmp_path}/empty")


def test_unknown_dataset_names_allowed_values():
  with pytest.raises(DatasetError, match="allowed: digits"):
    load_dataset("imagenet")


@pytest.mark.parametrize("name,shape,classes", [("cifar10", (32, 32, 3), 10),
                                                ("mnist", (28, 28, 1), 10),
                                                ("fashion_mnist", (28, 28, 1), 10),
                                                ("svhn_cropped", (32, 32, 3), 10)])
def test_tfds_loading_with_mock_data(name, shape, classes):
  with tfds.testing.mock_data(num_examples=12):
    ds = load_dataset(name)
  assert ds.input_shape == shape and ds.num_classes == classes
  assert len(ds.train_y) == 12 and ds.train_x.dtype == np.float32
  assert ds.train_coarse_y is None


def test_tfds_cifar100_has_coarse_labels():
  with tfds.testing.mock_data(num_examples=10):
    ds = load_dataset("cifar100")
  assert ds.num_classes == 100 and ds.num_coarse_classes == 20
  assert ds.train_coarse_y.shape == (10,) and ds.train_coarse_y.max() < 20


def test_subsets_are_stratified(digits):
  idx = stratified_subset(digits.train_y, 200)
  assert len(idx) == 200 and np.all(np.diff(idx) > 0)
  assert np.bincount(digits.train_y[idx]).min() >= 19
  ds = load_dataset("digits", train_subset=100, test_subset=50)
  assert len(ds.train_y) == 100 and len(ds.test_y) == 50


def test_mnist1d_is_the_packages_data_and_leaves_global_random_state_alone():
  """The authors' `make_dataset` at its published settings, reshaped to [n, 1, 40, 1];
  loading it does not move NumPy's or Python's global generators (the package seeds them)."""
  import random

  from mnist1d.data import get_dataset_args, make_dataset
  np.random.seed(7)
  random.seed(7)
  ds = load_dataset("mnist1d")
  after = (np.random.random(), random.random())
  np.random.seed(7)
  random.seed(7)
  assert after == (np.random.random(), random.random()), "the global generators moved"
  ref = make_dataset(get_dataset_args())
  assert ds.input_shape == (1, 40, 1) and ds.num_classes == 10
  assert (len(ds.train_y), len(ds.test_y)) == (4000, 1000)
  np.testing.assert_array_equal(ds.train_x[:, 0, :, 0], ref["x"].astype(np.float32))
  np.testing.assert_array_equal(ds.test_y, ref["y_test"])
  assert np.bincount(ds.train_y).min() > 300          # every class present
