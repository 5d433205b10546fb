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


# ----------------------------------------------------------------------------- CIFAR archives
def write_cifar_python(path, kind="cifar10", per_file=4, seed=0):
  """A small archive in the official python format (pickled dicts of uint8 rows: the red,
  green and blue 32×32 planes in turn); returns {split: (rows, labels, coarse)}."""
  import io
  import pickle
  rng = np.random.default_rng(seed)
  files = ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
           if kind == "cifar10" else {"train": ["train"], "test": ["test"]})
  blobs, truth = {}, {}
  for split, names in files.items():
    rows, labels, coarse = [], [], []
    for name in names:
      data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
      y = [int(v) for v in rng.integers(0, 10 if kind == "cifar10" else 100, per_file)]
      entry = {b"data": data}
      if kind == "cifar10":
        entry[b"labels"] = y
      else:
        c = [v // 5 for v in y]
        entry.update({b"fine_labels": y, b"coarse_labels": c})
        coarse += c
      blobs[name] = pickle.dumps(entry)
      rows.append(data)
      labels += y
    truth[split] = (np.concatenate(rows), np.asarray(labels), np.asarray(coarse))
  meta, key = (("batches.meta", b"label_names") if kind == "cifar10"
               else ("meta", b"fine_label_names"))
  n = 10 if kind == "cifar10" else 100
  blobs[meta] = pickle.dumps({key: [f"class{i}".encode() for i in range(n)]})
  folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
  with tarfile.open(path, "w:gz") as tar:
    for name, blob in blobs.items():
      info = tarfile.TarInfo(f"{folder}/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return truth


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_python_archive_is_read_as_its_format_says(tmp_path, monkeypatch, kind):
  """`cifar10:PATH` reads the official archive (and the folder it extracts to): images are
  the rows' three planes, standardised with the train statistics (computed here in plain
  NumPy); labels, class names and CIFAR-100's superclasses as written."""
  monkeypatch.setenv("UNLEARN_JAX_CACHE", str(tmp_path / "cache"))
  archive = tmp_path / f"{kind}-python.tar.gz"
  truth = write_cifar_python(archive, kind)
  images = {s: rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0
            for s, (rows, _, _) in truth.items()}
  mean = images["train"].mean(axis=(0, 1, 2))
  std = images["train"].std(axis=(0, 1, 2)) + 1e-6
  extracted = tmp_path / "extracted"
  with tarfile.open(archive) as tar:
    tar.extractall(extracted)
  for path in (archive, extracted):
    ds = load_dataset(f"{kind}:{path}")
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
      np.testing.assert_allclose(x, (images[split] - mean) / std, rtol=1e-4, atol=1e-4)
      np.testing.assert_array_equal(y, truth[split][1])
    assert ds.class_names[:2] == ("class0", "class1")
    if kind == "cifar100":
      np.testing.assert_array_equal(ds.train_coarse_y, truth["train"][2])
      assert ds.num_classes == 100 and ds.num_coarse_classes == truth["train"][2].max() + 1
  assert len(list((tmp_path / "cache" / kind).glob("*.npz"))) == 2     # decoded once each
  assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cifar_archive_errors_are_one_line(tmp_path, monkeypatch):
  monkeypatch.setenv("UNLEARN_JAX_CACHE", str(tmp_path / "cache"))
  with pytest.raises(DatasetError, match=r"no such file or folder \(the official archive is "
                     r"cifar-10-python.tar.gz"):
    load_dataset(f"cifar10:{tmp_path / 'absent.tar.gz'}")
  write_cifar_python(tmp_path / "c100.tar.gz", "cifar100")
  with pytest.raises(DatasetError) as e:
    load_dataset(f"cifar10:{tmp_path / 'c100.tar.gz'}")
  assert "not the official python archive of cifar10: batches.meta, data_batch_1" in str(
      e.value) and "\n" not in str(e.value)


def test_offline_an_unprepared_tfds_dataset_fails_in_seconds_and_writes_nothing(tmp_path,
                                                                                 monkeypatch):
  """No network (the reachability probe says so): one line naming the offline choices,
  before tfds retries a download for minutes or writes a partial file."""
  import time
  from unlearn_jax.data import datasets
  monkeypatch.setattr(datasets, "reachable", lambda *a, **k: False)
  t = time.perf_counter()
  with pytest.raises(DatasetError) as e:
    load_dataset("cifar10", data_dir=str(tmp_path / "tfds"))
  assert time.perf_counter() - t < 30
  message = str(e.value)
  assert "\n" not in message and "the network cannot be reached" in message
  assert "dataset=cifar10:PATH with the official python archive" in message
  assert not (tmp_path / "tfds").exists() or not any(
      p.is_file() for p in (tmp_path / "tfds").rglob("*")), "tfds wrote files"
