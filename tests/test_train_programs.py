"""Training programs (`unlearn_jax.train_programs`, the driver's `loop`): an unrolled epoch
takes exactly the scan's steps, and the choice is the fastest measured row."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import batching, driver, models, train, train_programs


def _mlp(digits, n=200):
  m = models.get_model("mlp", 10)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  init = jax.vmap(lambda k: models.init_variables(m, k, digits.input_shape))(keys)
  return m, init, keys, jnp.asarray(digits.train_x[:n]), jnp.asarray(digits.train_y[:n])


def _reference(model, cfg, init, x, y, key):
  """The schedule by hand: per epoch `batching.epoch_plan`'s batches and keys, one jitted
  step per batch, a NumPy loop around it."""
  spe = batching.steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = train.make_optimizer(cfg, spe)
  step = jax.jit(train.make_supervised_step(model, tx, cfg.augment))
  state = train.init_train_state(init, tx)
  for e in range(cfg.epochs):
    idx, bkeys = batching.epoch_plan(key, e, x.shape[0], cfg.batch_size)
    for i in np.arange(spe):
      state, _ = step(state, (x[idx[i]], y[idx[i]]), bkeys[i])
  return state.variables


@pytest.mark.integration   # two trainings each; the default lane's time
@pytest.mark.parametrize("seed_mode", ["vmap", "sequential"])
def test_unrolled_loop_takes_the_scans_steps(digits, seed_mode):
  """200 examples in batches of 32: 7 steps per epoch, so `steps_per_call=4` runs chunks
  of 1 step (the largest divisor of 7 that is ≤ 4) and `steps_per_call=7` one chunk per
  epoch. Both, and the scan, equal a hand-written loop over `epoch_plan`'s batches: a
  chunk that started at the wrong step, reused a key or crossed an epoch would not."""
  m, init, keys, x, y = _mlp(digits)
  cfg = train.TrainConfig(epochs=2, batch_size=32, lr=0.05)
  want = _reference(m, cfg, driver.seed_slice(init, 1), x, y, keys[1])
  for loop, k in (("scan", 8), ("unrolled", 4), ("unrolled", 7)):
    ms = driver.train_population(m, cfg, init, x, y, keys, seed_mode=seed_mode, loop=loop,
                                 steps_per_call=k, log=lambda s: None)
    chex.assert_trees_all_close(driver.seed_slice(ms.variables, 1), want, atol=2e-5,
                                custom_message=f"loop={loop}, steps_per_call={k}")


def test_unrolled_chunk_must_not_span_epochs(digits):
  m, init, keys, x, y = _mlp(digits)
  cfg = train.TrainConfig(epochs=1, batch_size=32)
  tx = train.make_optimizer(cfg, 7)
  state = train.init_train_state(driver.seed_slice(init, 0), tx)
  with pytest.raises(ValueError, match="count=3 must divide the 7 steps per epoch"):
    train.train_steps(m, cfg, state, x, y, keys[0], 3)
  with pytest.raises(ValueError, match="loop='while' is unknown; allowed: scan, unrolled"):
    driver.train_population(m, cfg, init, x, y, keys, loop="while")
  with pytest.raises(ValueError, match="steps_per_call=0 must be a whole number"):
    driver.train_population(m, cfg, init, x, y, keys, loop="unrolled", steps_per_call=0)


@pytest.mark.parametrize("spe, most, want", [(8, 8, 8), (7, 4, 1), (391, 8, 1),
                                             (40, 8, 8), (30, 8, 6), (3, 8, 3)])
def test_chunk_is_the_largest_divisor_of_the_epoch(spe, most, want):
  assert driver.chunk_steps(spe, most) == want


@pytest.mark.integration   # two conv trainings; the default lane's time
def test_xla_convolution_unrolled_trains_the_patches_scans_model(digits):
  """The conv paths differ only in rounding: a small CNN, one epoch of 4 steps, XLA's
  convolution in the unrolled loop vs patches + matmul in the scan (the same parameters)."""
  x, y = jnp.asarray(digits.train_x[:128]), jnp.asarray(digits.train_y[:128])
  keys = jax.random.split(jax.random.PRNGKey(0), 1)
  cfg = train.TrainConfig(epochs=1, batch_size=32, lr=0.05)
  out = {}
  for conv, loop in (("patches", "scan"), ("xla", "unrolled")):
    m = models.get_model("cnn", 10, widths=(4, 8), dense=16, conv=conv)
    init = jax.vmap(lambda k: models.init_variables(m, k, digits.input_shape))(keys)
    out[conv] = driver.train_population(m, cfg, init, x, y, keys, seed_mode="sequential",
                                        loop=loop, steps_per_call=4,
                                        log=lambda s: None).variables
  chex.assert_trees_all_close(out["xla"], out["patches"], atol=1e-3)
  moved = jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), out["xla"], init)
  assert max(float(v) for v in jax.tree_util.tree_leaves(moved)) > 1e-2   # it trained


def _row(model="cnn", batch=128, loop="scan", conv="patches", k=8, rate=100.0,
         input_="32x32x3", backend="cpu"):
  return {"backend": backend, "model": model, "input": input_, "batch": batch, "loop": loop,
          "conv": conv, "steps_per_call": k, "images_per_s": rate, "run": 0}


RUNS = [{"commit": "abc1234", "date": "2026-12-02", "machine": "2 cores"}]


def test_choice_is_the_fastest_row_at_the_nearest_batch():
  table = {"runs": RUNS, "rows": [
      _row(loop="scan", conv="patches", rate=197), _row(loop="unrolled", conv="xla", rate=325),
      _row(loop="unrolled", conv="xla", k=1, rate=302),
      _row(batch=512, loop="scan", conv="xla", rate=900),     # faster, but at batch 512
      _row(model="cnn:16-32-64", batch=64, loop="scan", conv="patches", rate=1600),
      _row(model="cnn:16-32-64", batch=64, loop="unrolled", conv="xla", rate=1200)]}
  p = train_programs.choose("cnn", "cpu", 128, (32, 32, 3), table)
  assert (p.loop, p.conv, p.steps_per_call, p.images_per_s) == ("unrolled", "xla", 8, 325)
  assert "abc1234" in p.source and "batch 128" in p.source
  # The exact spec's rows before the base model's.
  p = train_programs.choose("cnn:16-32-64", "cpu", 64, (32, 32, 3), table)
  assert (p.loop, p.conv) == ("scan", "patches")
  # Another spec of the same model falls back to the base model's rows.
  assert train_programs.choose("cnn:8-8", "cpu", 100, (32, 32, 3), table).conv == "xla"
  # Nothing measured for this input, backend or model: the default.
  assert train_programs.choose("cnn", "cpu", 128, (8, 8, 1), table) == train_programs.DEFAULT
  assert train_programs.choose("cnn", "gpu", 128, (32, 32, 3), table) == train_programs.DEFAULT
  assert train_programs.choose("mlp", "cpu", 128, (32, 32, 3), table) == train_programs.DEFAULT


def test_a_gain_within_the_margin_keeps_the_default_scan():
  """Unrolled XLA 5% faster than the default (a scan, the model's own `auto` convolution):
  within `MARGIN` (timing noise), so the default; 20% faster: the unrolled program."""
  for rate, want in ((1.05 * 300, "scan"), (1.2 * 300, "unrolled")):
    table = {"runs": RUNS, "rows": [_row(loop="scan", conv="auto", rate=300),
                                    _row(loop="unrolled", conv="xla", rate=rate)]}
    assert train_programs.choose("cnn", "cpu", 128, (32, 32, 3), table).loop == want, rate
  assert train_programs.MARGIN == pytest.approx(1.1)


def test_parse_names_what_is_wrong():
  p = train_programs.parse("unrolled:xla:4")
  assert (p.loop, p.conv, p.steps_per_call, p.source) == ("unrolled", "xla", 4, "chosen by hand")
  assert train_programs.parse("scan").conv == "auto"
  for bad, match in (("while", "loop='while' is unknown; allowed: scan, unrolled"),
                     ("scan:cudnn", "conv='cudnn' is unknown; allowed: auto, xla, patches, canonical"),
                     ("unrolled:xla:two", "STEPS='two' is not a whole number"),
                     ("unrolled:xla:0", "steps_per_call=0 must be a whole number >= 1"),
                     ("a:b:c:d", "must be LOOP")):
    with pytest.raises(ValueError, match=match):
      train_programs.parse(bad)


def test_a_table_row_without_its_fields_or_run_is_refused(tmp_path):
  path = tmp_path / "t.json"
  row = _row()
  del row["images_per_s"]
  path.write_text(json.dumps({"runs": RUNS, "rows": [row]}))
  with pytest.raises(ValueError, match="row 0 lacks images_per_s"):
    train_programs.load_table(path)
  path.write_text(json.dumps({"runs": [], "rows": [_row()]}))
  with pytest.raises(ValueError, match="row 0 names run 0; the table has 0"):
    train_programs.load_table(path)
  assert train_programs.load_table(tmp_path / "none.json") == {"runs": [], "rows": []}


def test_nothing_measured_ships_and_each_machine_reads_its_own_table(tmp_path, monkeypatch):
  """No table is in the package; the choice reads this machine's table from the cache
  (named by processor and core count), or the path in $UNLEARN_JAX_PROGRAM_TABLE; a
  machine never measured gets the default."""
  import pathlib
  package = pathlib.Path(train_programs.__file__).parent
  assert not list(package.glob("*.json")), "a measured table ships inside the library"
  monkeypatch.delenv(train_programs.TABLE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  path = train_programs.machine_table_path()
  assert path.parent == tmp_path / "cache" / "unlearn_jax"
  assert train_programs.machine_name() in path.name and "/" not in train_programs.machine_name()
  assert train_programs.choose("cnn", "cpu", 128, (32, 32, 3)) == train_programs.DEFAULT
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({"runs": RUNS, "rows": [_row(loop="unrolled", conv="xla")]}))
  assert train_programs.choose("cnn", "cpu", 128, (32, 32, 3)).loop == "unrolled"
  other = tmp_path / "elsewhere.json"
  other.write_text(json.dumps({"runs": RUNS, "rows": [_row(loop="scan", conv="patches")]}))
  monkeypatch.setenv(train_programs.TABLE_ENV, str(other))
  assert train_programs.choose("cnn", "cpu", 128, (32, 32, 3)).conv == "patches"
