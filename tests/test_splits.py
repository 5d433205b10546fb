"""Split specs: indices are a pure function of (spec, seed) and partition train."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from unlearn_jax.data import SplitError, SplitSpec, make_split, sha256_indices



def _labels(n, c, seed):
  return np.random.default_rng(seed).integers(0, c, n)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 400), c=st.integers(2, 12), frac=st.floats(0.05, 0.9),
       seed=st.integers(0, 10_000), stratified=st.booleans())
def test_random_split_partitions_train(n, c, frac, seed, stratified):
  y = _labels(n, c, seed)
  spec = SplitSpec("random", frac, stratified=stratified, seed=seed)
  try:
    s = make_split(spec, y, _labels(50, c, 1), c)
  except SplitError:
    return  # a fraction too small for any example: the error is the contract
  assert np.intersect1d(s.forget, s.retain).size == 0
  np.testing.assert_array_equal(np.union1d(s.forget, s.retain), np.arange(n))
  again = make_split(spec, y, _labels(50, c, 1), c)
  assert again.digests() == s.digests()
  # val/test halve the test set whatever the split seed.
  assert s.val.size + s.test.size == 50 and abs(s.val.size - s.test.size) <= 1


@settings(max_examples=40, deadline=None)
@given(c=st.integers(3, 10), seed=st.integers(0, 1000), data=st.data())
def test_class_split_takes_whole_classes(c, seed, data):
  y, yt = _labels(300, c, seed), _labels(80, c, seed + 1)
  classes = tuple(sorted(data.draw(st.sets(st.integers(0, c - 1), min_size=1, max_size=c - 1))))
  s = make_split(SplitSpec("class", forget_classes=classes), y, yt, c)
  assert set(np.unique(y[s.forget])) <= set(classes)
  assert not set(np.unique(y[s.retain])) & set(classes)
  np.testing.assert_array_equal(np.union1d(s.forget, s.retain), np.arange(300))
  assert set(np.unique(yt[s.test_forget])) <= set(classes)
  assert not set(np.unique(yt[s.test])) & set(classes)


def test_subclass_forgets_one_fine_class():
  fine = np.repeat(np.arange(10), 10)
  coarse = fine // 5
  s = make_split(SplitSpec("subclass", forget_classes=(7,)), coarse, coarse, 2, fine, fine)
  np.testing.assert_array_equal(s.forget, np.arange(70, 80))
  assert np.all(fine[s.test_forget] == 7)


def test_different_seeds_differ_and_digest_is_sha256():
  y = _labels(200, 5, 0)
  a = make_split(SplitSpec("random", 0.2, seed=0), y, y, 5)
  b = make_split(SplitSpec("random", 0.2, seed=1), y, y, 5)
  assert a.digests()["forget"] != b.digests()["forget"]
  assert len(sha256_indices(a.forget)) == 64


@pytest.mark.parametrize("spec,match", [
    (SplitSpec("random", 0.0), "forget_fraction"),
    (SplitSpec("random", 1.0), "forget_fraction"),
    (SplitSpec("class"), "needs forget_classes"),
    (SplitSpec("class", forget_classes=(12,)), "outside"),
    (SplitSpec("class", forget_classes=(0, 1, 2)), "every class"),
    (SplitSpec("bogus"), "allowed: random, class, subclass"),
    (SplitSpec("subclass", forget_classes=(1,)), "coarse"),
    (SplitSpec("random", 0.001), "empty"),
])
def test_bad_specs_say_what_is_wrong(spec, match):
  y = _labels(100, 3, 0)
  with pytest.raises(SplitError, match=match):
    make_split(spec, y, y, 3)


def test_save_writes_indices_and_digests(tmp_path, digits_split):
  import json
  digits_split.save(tmp_path)
  meta = json.loads((tmp_path / "splits.json").read_text())
  z = np.load(tmp_path / "splits.npz")
  assert meta["sha256"]["forget"] == sha256_indices(z["forget"])
  assert meta["sizes"]["forget"] == 126
