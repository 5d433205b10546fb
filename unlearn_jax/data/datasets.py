"""Datasets by name, returned as normalised arrays in memory.

Names:
  * `digits` — scikit-learn's 8x8 digits through the offline tfds builder (default).
  * `mnist1d` — MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D",
    ICML 2024), generated offline and deterministically by the `mnist1d` package's
    `make_dataset` at its published settings: 4,000 train and 1,000 test sequences of 40
    values, 10 classes, stored as [n, 1, 40, 1]. A small model fits its training set
    exactly yet tests far lower, so it *memorises* its training examples: a model
    retrained without a random 10% forget set classifies that set about as badly as
    unseen data, where on digits it gets nearly all of it right. This is the data on
    which forgetting random examples can be measured at all (the test suite's
    memorisation benchmark, `docs/guide/benchmarks.md`).
  * `cifar10:PATH`, `cifar100:PATH` — the official python archives of CIFAR-10 / -100
    (Krizhevsky, 2009; `cifar-10-python.tar.gz`: `data_batch_1..5`, `test_batch`,
    `batches.meta`; `cifar-100-python.tar.gz`: `train`, `test`, `meta`, with the 20
    superclasses as coarse labels), or the folder they extract to. Read without
    extracting, decoded once and cached as `.npz` (below). The archives are Python
    pickles: give only the files from the dataset's page
    (https://www.cs.toronto.edu/~kriz/cifar.html).
  * `image_folder:PATH` — PATH is a `split/class/image` folder (or a `.tar.gz` of one,
    read without extracting), e.g. the shared CIFAR-10 JPEG archive. Decoded once and
    cached as `.npz` under `$UNLEARN_JAX_CACHE` (default `~/.cache/unlearn_jax`).

First use is safe under concurrency: several processes (two jobs on a new machine, the
nodes of a cluster sharing a home directory) that prepare the same cache entry at once
take turns on a lock file beside it; the first prepares and renames its result into
place atomically, the others wait and read the finished entry.
  * tfds names `cifar10`, `cifar100`, `mnist`, `fashion_mnist`, `svhn_cropped` — read
    with `tfds.data_source` (array_record, no TensorFlow needed to read; preparing a
    fresh download needs the `tfds-prepare` extra).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "svhn_cropped")
DATASET_CHOICES = ("digits", "mnist1d", "cifar10:PATH", "cifar100:PATH",
                   "image_folder:PATH") + TFDS_NAMES
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
  """A dataset name or location a user gave that cannot be loaded."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset as normalised float32 NHWC arrays.

  `coarse_*` hold superclass labels where the dataset has them (CIFAR-100); the
  `subclass` scenario trains on them and forgets one fine class.
  """
  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  class_names: tuple
  train_coarse_y: np.ndarray | None = None
  test_coarse_y: np.ndarray | None = None
  num_coarse_classes: int = 0

  @property
  def input_shape(self):
    return tuple(self.train_x.shape[1:])

  @property
  def image_size(self) -> int:
    return int(self.train_x.shape[1])


def cache_dir() -> Path:
  return Path(os.environ.get("UNLEARN_JAX_CACHE",
                             Path.home() / ".cache" / "unlearn_jax"))


def cache_lock(path: Path, timeout: float = 3600.0):
  """An inter-process lock (a `filelock.FileLock` on `path` + ".lock") guarding the first
  write of the cache entry `path`: hold it around check-prepare-rename so that exactly one
  process prepares and the others read the finished result. Waits up to `timeout`
  seconds (a first CIFAR-10 decode takes a minute on two cores)."""
  import filelock
  path.parent.mkdir(parents=True, exist_ok=True)
  return filelock.FileLock(str(path) + ".lock", timeout=timeout)


def _normalise(train: np.ndarray, test: np.ndarray, pixel_max: float):
  """Scales to [0, 1], then standardises per channel with the train statistics."""
  train = train.astype(np.float32) / pixel_max
  test = test.astype(np.float32) / pixel_max
  mean = train.mean(axis=(0, 1, 2), keepdims=True)
  std = train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
  return (train - mean) / std, (test - mean) / std


def stratified_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of a class-balanced subset of `size` examples (fixed seed)."""
  if size >= len(labels):
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
  take = {c: 0 for c in classes}
  # Round-robin over classes keeps proportions when classes are unbalanced.
  order, remaining = [], size
  while remaining > 0:
    progressed = False
    for c in classes:
      if remaining and take[c] < len(per_class[c]):
        order.append(per_class[c][take[c]])
        take[c] += 1
        remaining -= 1
        progressed = True
    if not progressed:
      break
  return np.sort(np.asarray(order))


# ----------------------------------------------------------------------------- digits
def _digits_source(data_dir: str | None, split: str):
  from unlearn_jax.data.digits_builder import SklearnDigits
  root = Path(data_dir or cache_dir() / "tfds")
  # tfds prepares into `incomplete.XXXX` and renames it to the version directory; two
  # processes preparing at once race on that rename. Under the lock the builder is made
  # (it looks for a finished version when constructed) and prepared by one process.
  with cache_lock(root / "sklearn_digits"):
    # Prepared from scikit-learn's copy, nothing downloaded: tfds's "Downloading and
    # preparing dataset Unknown size" line, its progress bars and its warnings about the
    # not-yet-written version folder would say otherwise.
    import contextlib
    from absl import logging as absl_logging
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
      builder = SklearnDigits(data_dir=str(root), file_format="array_record")
      if not builder.is_prepared():
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
          builder.download_and_prepare()
    finally:
      absl_logging.set_verbosity(verbosity)
  return builder.as_data_source(split=split)


def _read_source(source, keys):
  """Reads every record of a tfds data source into stacked numpy arrays."""
  out = {k: [] for k in keys}
  n = len(source)
  for start in range(0, n, 4096):
    keys_ = list(range(start, min(n, start + 4096)))
    try:
      records = source.__getitems__(keys_)
    except TypeError:  # tfds.testing.mock_data's sources only index one record at a time
      records = [source[i] for i in keys_]
    for r in records:
      for k in keys:
        out[k].append(np.asarray(r[k]))
  return {k: np.stack(v) if v else np.zeros((0,)) for k, v in out.items()}


def load_digits(data_dir: str | None = None) -> Dataset:
  parts = {}
  for split in ("train", "test"):
    arrays = _read_source(_digits_source(data_dir, split), ("image", "label", "index"))
    order = np.argsort(arrays["index"], kind="stable")
    parts[split] = arrays["image"][order], arrays["label"][order].astype(np.int32)
  train_x, test_x = _normalise(parts["train"][0], parts["test"][0], 16.0)
  return Dataset("digits", train_x, parts["train"][1], test_x, parts["test"][1],
                 10, tuple(str(i) for i in range(10)))


# ----------------------------------------------------------------------------- MNIST-1D
MNIST1D_LENGTH = 40


def load_mnist1d() -> Dataset:
  """MNIST-1D at the package's published settings (seed 42, 5,000 sequences, 80/20 split).

  `mnist1d.data.make_dataset` seeds NumPy's and Python's global generators; their states
  are restored afterwards, so loading the data changes no other random stream. The package
  centres and scales the whole set (mean 0, std 1) itself; no further normalisation."""
  import random

  try:
    from mnist1d.data import get_dataset_args, make_dataset
  except ImportError as e:   # a declared dependency; an incomplete install says so in one line
    raise DatasetError(f"dataset=mnist1d needs the `mnist1d` package and its dependencies "
                       f"(missing: {e.name}): pip install mnist1d") from e
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(get_dataset_args())
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  shape = (1, MNIST1D_LENGTH, 1)
  as_x = lambda a: np.asarray(a, np.float32).reshape((-1,) + shape)
  return Dataset("mnist1d", as_x(data["x"]), np.asarray(data["y"], np.int32),
                 as_x(data["x_test"]), np.asarray(data["y_test"], np.int32), 10,
                 tuple(str(i) for i in range(10)))


# ----------------------------------------------------------------------------- tfds
def reachable(host: str = "storage.googleapis.com", port: int = 443,
              timeout: float = 3.0) -> bool:
  """Whether a TCP connection to `host` opens within `timeout` seconds (tfds's download
  mirror by default): a download is only tried when it does."""
  import socket
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def load_tfds(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
  """Loads a tfds image classification dataset through `tfds.data_source`.

  A dataset not yet prepared in `data_dir` is downloaded only when the network answers
  (`reachable`); offline it is a `DatasetError` within seconds, before tfds writes
  anything (tfds itself retries for minutes and leaves partial downloads behind)."""
  import tensorflow_datasets as tfds
  source = lambda split, get: tfds.data_source(name, split=split, data_dir=data_dir,
                                                download=get)
  from absl import logging as absl_logging
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)   # its warnings about unprepared folders
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    label_feature = builder.info.features["label"]
    try:      # prepared already (or tfds's mock data): nothing to download
      sources = {s: source(s, False) for s in ("train", "test")}
    except Exception:  # noqa: BLE001  not prepared: tfds raises several types
      if not download:
        raise
      if not reachable():
        raise DatasetError(
            f"dataset={name}: not prepared in {builder.data_dir} and the network cannot "
            "be reached to download it. Offline, use dataset=mnist1d or dataset=digits"
            + (f", or dataset={name}:PATH with the official python archive (https://www.cs."
               "toronto.edu/~kriz/cifar.html)" if name in CIFAR_PYTHON else
               ", or dataset=image_folder:PATH")) from None
      sources = {s: source(s, True) for s in ("train", "test")}
  except DatasetError:
    raise
  except Exception as e:  # tfds raises many types; the user needs one line.
    raise DatasetError(
        f"dataset={name}: tfds could not provide it ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Offline? Use dataset=digits or "
        "dataset=image_folder:PATH; preparing a download needs "
        "`pip install -e .[tfds-prepare]`.") from e
  finally:
    absl_logging.set_verbosity(verbosity)
  has_coarse = "coarse_label" in builder.info.features
  keys = ("image", "label") + (("coarse_label",) if has_coarse else ())
  arrays = {s: _read_source(src, keys) for s, src in sources.items()}
  train_x, test_x = _normalise(arrays["train"]["image"], arrays["test"]["image"], 255.0)
  names = tuple(getattr(label_feature, "names", None) or
                [str(i) for i in range(label_feature.num_classes)])
  coarse = {}
  if has_coarse:
    coarse = dict(
        train_coarse_y=arrays["train"]["coarse_label"].astype(np.int32),
        test_coarse_y=arrays["test"]["coarse_label"].astype(np.int32),
        num_coarse_classes=builder.info.features["coarse_label"].num_classes)
  return Dataset(name, train_x, arrays["train"]["label"].astype(np.int32), test_x,
                 arrays["test"]["label"].astype(np.int32), label_feature.num_classes,
                 names, **coarse)


# ----------------------------------------------------------------------------- CIFAR archives
# The members each official python archive holds: {split: files}, the label key, the meta
# file and its class-name key (Krizhevsky's page; the archives extract to one folder).
CIFAR_PYTHON = {
    "cifar10": dict(train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    label=b"labels", meta="batches.meta", names=b"label_names"),
    "cifar100": dict(train=["train"], test=["test"], label=b"fine_labels", meta="meta",
                     names=b"fine_label_names", coarse=b"coarse_labels"),
}


def _cifar_members(path: Path, wanted: set) -> dict:
  """{member name: bytes} of the wanted files, from the archive or its extracted folder."""
  found = {}
  if path.is_file():
    try:
      with tarfile.open(path, "r:*") as tar:
        for member in tar:
          if member.isfile() and Path(member.name).name in wanted:
            found[Path(member.name).name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as e:
      raise DatasetError(f"{path}: not a readable .tar.gz ({e})") from e
  else:
    for name in wanted:
      hits = sorted(path.rglob(name))
      if hits:
        found[name] = hits[0].read_bytes()
  return found


def _decode_cifar_python(kind: str, path: Path):
  """(arrays {split: (x uint8 [n, 32, 32, 3], y, coarse y or None)}, class names)."""
  import pickle
  spec = CIFAR_PYTHON[kind]
  wanted = set(spec["train"] + spec["test"] + [spec["meta"]])
  found = _cifar_members(path, wanted)
  missing = sorted(wanted - set(found))
  if missing:
    raise DatasetError(f"dataset={kind}:{path}: not the official python archive of {kind}: "
                       f"{', '.join(missing)} missing (expected {', '.join(sorted(wanted))})")
  load = lambda name: pickle.loads(found[name], encoding="bytes")
  out = {}
  for split in ("train", "test"):
    batches = [load(f) for f in spec[split]]
    # Each row is 3072 bytes: the red, green and blue 32×32 planes in turn.
    x = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
    x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([np.asarray(b[spec["label"]], np.int32) for b in batches])
    coarse = (np.concatenate([np.asarray(b[spec["coarse"]], np.int32) for b in batches])
              if "coarse" in spec else None)
    out[split] = (x, y, coarse)
  names = tuple(n.decode() for n in load(spec["meta"])[spec["names"]])
  return out, names


def load_cifar_python(kind: str, path: str) -> Dataset:
  """`cifar10:PATH` / `cifar100:PATH`: the official python archive (module docstring),
  decoded once into the cache."""
  p = Path(path).expanduser().resolve()
  if not p.exists():
    raise DatasetError(f"dataset={kind}:{path}: no such file or folder (the official "
                       f"archive is {kind.replace('cifar', 'cifar-')}-python.tar.gz from "
                       "https://www.cs.toronto.edu/~kriz/cifar.html)")
  stat = p.stat()
  key = hashlib.sha1(f"{p}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
  cached = cache_dir() / kind / f"{p.name}-{key}.npz"

  def prepare():
    arrays, names = _decode_cifar_python(kind, p)
    fields = {f"{s}_{k}": v for s, (x, y, c) in arrays.items()
              for k, v in (("x", x), ("y", y), ("coarse", c)) if v is not None}
    return {**fields, "classes": np.asarray(names)}

  z = _cached_npz(cached, prepare)
  train_x, test_x = _normalise(z["train_x"], z["test_x"], 255.0)
  coarse = {}
  if "train_coarse" in z:
    coarse = dict(train_coarse_y=z["train_coarse"], test_coarse_y=z["test_coarse"],
                  num_coarse_classes=int(z["train_coarse"].max()) + 1)
  classes = tuple(str(c) for c in z["classes"])
  # Named by the file, not its folder: titles and logs show what the data is, not where a
  # machine keeps it (the config records the path given).
  return Dataset(f"{kind}:{p.name}", train_x, z["train_y"], test_x, z["test_y"], len(classes),
                 classes, **coarse)


def _cached_npz(cached: Path, prepare) -> dict:
  """The arrays of the cache entry `cached`, made by `prepare() -> {name: array}` on first
  use: under `cache_lock`, written to a temporary name of this writer's own in the same
  directory, then renamed into place atomically (a reader never sees a half-written file,
  two writers never share a temporary)."""
  with cache_lock(cached):
    if not cached.exists():
      arrays = prepare()
      fd, tmp = tempfile.mkstemp(prefix=f".{cached.name}.", suffix=".tmp", dir=cached.parent)
      try:
        with os.fdopen(fd, "wb") as f:
          np.savez(f, **arrays)
        os.replace(tmp, cached)
      finally:
        if os.path.exists(tmp):
          os.unlink(tmp)
  with np.load(cached, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- image folder
def _folder_entries(path: Path):
  """Yields (split, class_name, name, bytes_reader) for a folder or a .tar.gz."""
  if path.is_file():
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        parts = Path(member.name).parts
        if not member.isfile() or len(parts) < 3:
          continue
        if not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
          continue
        data = tar.extractfile(member).read()
        yield parts[-3], parts[-2], member.name, data
  else:
    for file in sorted(path.glob("*/*/*")):
      if file.suffix.lower() in _IMAGE_SUFFIXES:
        yield file.parts[-3], file.parts[-2], str(file), file.read_bytes()


def _decode_image_folder(path: Path):
  from PIL import Image
  images = {"train": [], "test": []}
  for split, cls, name, data in _folder_entries(path):
    if split in images:
      images[split].append((cls, name, data))
  if not images["train"] or not images["test"]:
    raise DatasetError(
        f"dataset=image_folder:{path}: expected PATH/train/<class>/<image> and "
        f"PATH/test/<class>/<image>; found {len(images['train'])} train and "
        f"{len(images['test'])} test images")
  classes = sorted({c for c, _, _ in images["train"]})
  index = {c: i for i, c in enumerate(classes)}
  out = {}
  for split, items in images.items():
    items.sort(key=lambda t: (t[0], t[1]))  # canonical order, whatever the archive's
    unknown = sorted({c for c, _, _ in items} - set(classes))
    if unknown:
      raise DatasetError(f"dataset=image_folder:{path}: test classes {unknown} are "
                         "not among the train classes")
    xs = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for _, _, d in items]
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
      raise DatasetError(f"dataset=image_folder:{path}: images differ in size {shapes}")
    out[split] = (np.stack(xs), np.asarray([index[c] for c, _, _ in items], np.int32))
  return out, tuple(classes)


def load_image_folder(path: str) -> Dataset:
  p = Path(path).expanduser().resolve()
  if not p.exists():
    raise DatasetError(f"dataset=image_folder:{path}: no such file or folder")
  stat = p.stat()
  key = hashlib.sha1(f"{p}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
  cached = cache_dir() / "image_folder" / f"{p.name}-{key}.npz"

  def prepare():
    arrays, classes = _decode_image_folder(p)
    return dict(train_x=arrays["train"][0], train_y=arrays["train"][1],
                test_x=arrays["test"][0], test_y=arrays["test"][1], classes=np.asarray(classes))

  z = _cached_npz(cached, prepare)
  arrays = {"train": (z["train_x"], z["train_y"]), "test": (z["test_x"], z["test_y"])}
  classes = tuple(str(c) for c in z["classes"])
  train_x, test_x = _normalise(arrays["train"][0], arrays["test"][0], 255.0)
  return Dataset(f"image_folder:{p.name}", train_x, arrays["train"][1], test_x,
                 arrays["test"][1], len(classes), classes)


# ----------------------------------------------------------------------------- entry point
def load_dataset(name: str, data_dir: str | None = None,
                 train_subset: int = 0, test_subset: int = 0) -> Dataset:
  """Loads a dataset by name; `*_subset` > 0 keeps a stratified subset (fixed seed)."""
  if name == "digits":
    ds = load_digits(data_dir)
  elif name == "mnist1d":
    ds = load_mnist1d()
  elif name.startswith("image_folder:"):
    ds = load_image_folder(name.split(":", 1)[1])
  elif name.split(":", 1)[0] in CIFAR_PYTHON and ":" in name:
    ds = load_cifar_python(*name.split(":", 1))
  elif name in TFDS_NAMES:
    ds = load_tfds(name, data_dir)
  else:
    raise DatasetError(f"dataset={name!r} is unknown; allowed: {', '.join(DATASET_CHOICES)}")
  if train_subset or test_subset:
    tr = stratified_subset(ds.train_y, train_subset) if train_subset else slice(None)
    te = stratified_subset(ds.test_y, test_subset) if test_subset else slice(None)
    ds = dataclasses.replace(
        ds, train_x=ds.train_x[tr], train_y=ds.train_y[tr], test_x=ds.test_x[te],
        test_y=ds.test_y[te],
        train_coarse_y=None if ds.train_coarse_y is None else ds.train_coarse_y[tr],
        test_coarse_y=None if ds.test_coarse_y is None else ds.test_coarse_y[te])
  return ds
