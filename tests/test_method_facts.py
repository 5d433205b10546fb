"""What a method's docstring and signature promise is what it does: the aux keys it
returns, the adapter parts it needs, its defaults in the signature, its paper in help()."""

import inspect
import re

import jax
import jax.numpy as jnp
import pytest

import unlearn_jax as uj
from unlearn_jax import methods
import method_data  # tests/method_data.py: select_data with targets for every method

NAMES = methods.list_methods()
# A citation names a year; a project without a paper names the project.
YEAR = re.compile(r"\b(19|20)\d\d\b")
PROJECTS = ("Forget with Precision", "MUFAC", "Unlearnify", "CS772")


@pytest.fixture(scope="module")
def small():
  ds = uj.load_dataset("digits")
  split = uj.make_split(uj.SplitSpec("class", forget_classes=(3,)), ds.train_y, ds.test_y, 10)
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  forget = (x[split.forget][:64], y[split.forget][:64])
  retain = (x[split.retain][:256], y[split.retain][:256])
  return ds, forget, retain


def _context(model_name, ds, head=True):
  adapter = uj.as_adapter(uj.get_model(model_name, 10))
  if not head:
    adapter = uj.ModelAdapter(adapter.module, train_kwargs=adapter.train_kwargs,
                              eval_kwargs=adapter.eval_kwargs, rng_streams=adapter.rng_streams,
                              mutable=adapter.mutable, head=None)
  return adapter, uj.MethodContext(adapter, num_classes=10, input_shape=ds.input_shape,
                                   forget_classes=(3,))


def _abstract_run(name, small, head=True):
  ds, forget, retain = small
  spec = methods.get_method(name)
  model = "cnn" if "batch_norm" in spec.requires else "mlp"
  adapter, ctx = _context(model, ds, head)
  variables = adapter.init(jax.random.PRNGKey(0), ds.input_shape)
  data = method_data.select(spec, forget=forget, retain=retain, ctx=ctx)
  return jax.eval_shape(spec(ctx), variables, data, jax.random.PRNGKey(1))


@pytest.mark.parametrize("name", NAMES)
def test_declared_aux_keys_are_the_returned_ones(name, small):
  """`aux=` in the registry (and so help() and the method's page) defines exactly the keys
  of the returned aux besides the ones every method returns (`steps.COMMON_AUX`): a key a
  method returns that no page defines fails here."""
  _, aux = _abstract_run(name, small)
  declared = {**methods.get_method(name).aux, **uj.steps.COMMON_AUX}
  assert sorted(aux) == sorted(declared), (
      f"{name} returns aux keys {sorted(aux)} but defines {sorted(declared)}")
  for key, definition in declared.items():
    assert len(definition.split()) >= 4, f"{name}: aux key {key!r} has no real definition"
    assert f"{key}: {definition}" in methods.get_method(name).__doc__, (
        f"{name}: help() does not define aux key {key!r}")


@pytest.mark.parametrize("name", NAMES)
def test_declared_needs_match_a_model_without_a_head(name, small):
  """A method that declares `needs=("head",)` or `("features",)` refuses an adapter with no
  head (a ValueError saying what to add); every other method runs without one."""
  spec = methods.get_method(name)
  if spec.needs:
    with pytest.raises(ValueError, match="head=|features_fn"):
      _abstract_run(name, small, head=False)
  else:
    _abstract_run(name, small, head=False)


def stated_forms(value) -> set:
  """How a default may be written in prose: 0.0005 as 0.0005 or 5e-4, 0.3 as 30%, ..."""
  if isinstance(value, (bool, str)):
    return {str(value)}
  forms = {f"{value:g}", repr(value), str(value)}
  if isinstance(value, float) and value:
    mantissa, exponent = f"{value:e}".split("e")
    forms.add(f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}")
    if 0 < value <= 1:
      forms.add(f"{100 * value:g}%")
  return forms


@pytest.mark.parametrize("name", NAMES)
def test_the_docstring_its_author_wrote_states_the_paper_and_every_default(name):
  """help() appends the registry's facts to the method's own docstring, so those always
  agree; the prose the author wrote (the rule and its "Defaults:") can go stale when a
  default changes in `register(...)`. Every default value must appear in it, and the
  paper must name a year or the project it comes from."""
  spec = methods.get_method(name)
  assert YEAR.search(spec.paper) or any(p in spec.paper for p in PROJECTS), (
      f"{name}: paper={spec.paper!r} names no year and no known project")
  prose = inspect.cleandoc(spec.factory.__doc__ or "")
  assert "Defaults:" in prose and "Reads:" in prose, f"{name}: its docstring has no Reads:/Defaults:"
  unstated = [f"{k}={v!r}" for k, v in spec.defaults.items()
              if not any(re.search(r"(?<![\d.])" + re.escape(f) + r"(?![\d])", prose)
                         for f in stated_forms(v))]
  assert not unstated, f"{name}: its docstring does not state the defaults {unstated}"
  assert "seed 00" not in prose, name


def test_register_refuses_an_unknown_need():
  with pytest.raises(ValueError, match="needs .*allowed"):
    methods.register("nothing_real", reads=(), defaults={}, bounds={}, paper="x 2020",
                     needs=("tail",))


@pytest.mark.parametrize("bounds, match", [
    ({}, "missing for lr"),                                   # a numeric one undeclared
    ({"lr": "(0, inf)", "mode": "[0, 1]"}, "mode, which are not numeric"),
    ({"lr": "[1, inf)"}, "default lr=0.1 lies outside its bounds"),
    ({"lr": "0 to 1"}, "written like"),
])
def test_register_refuses_bounds_that_do_not_cover_every_numeric_hyperparameter(bounds, match):
  with pytest.raises(ValueError, match=match):
    methods.register("nothing_real", reads=(), defaults=dict(lr=0.1, mode="a"), bounds=bounds,
                     choices=dict(mode=("a",)), paper="x 2020")


def test_register_refuses_a_search_space_outside_the_bounds():
  with pytest.raises(ValueError, match="search space of keep .* leaves its bounds"):
    methods.register("nothing_real", reads=(), defaults=dict(keep=0.5),
                     bounds=dict(keep="(0, 1]"), space=dict(keep=("linear", 0.1, 2.0)),
                     paper="x 2020")


@pytest.mark.parametrize("name", NAMES)
def test_every_bound_is_enforced_at_its_ends(name):
  """Each declared interval, read from the method itself: a value just outside either
  finite end is refused with one line naming the method, the hyperparameter and the
  bounds; the ends themselves are accepted exactly when the interval is closed there."""
  spec = methods.get_method(name)
  for k, iv in spec.bounds.items():
    integer = isinstance(spec.defaults[k], int)
    step = 1 if integer else 1e-9
    for end, closed, outside in ((iv.low, iv.low_closed, iv.low - step),
                                 (iv.high, iv.high_closed, iv.high + step)):
      if end in (float("inf"), float("-inf")):
        continue
      if integer and not float(end).is_integer():
        continue
      value = int(end) if integer else float(end)
      with pytest.raises(methods.HyperparameterError) as err:
        spec.validate({k: int(outside) if integer else outside})
      line = str(err.value)
      assert "\n" not in line and line.startswith(f"{name}: {k}=") and str(iv) in line, line
      if closed:
        assert spec.validate({k: value})[k] == value
      else:
        with pytest.raises(methods.HyperparameterError):
          spec.validate({k: value})


def test_a_method_is_a_frozen_value_whose_help_shows_its_rule_paper_and_bounds():
  import dataclasses
  import pydoc
  assert isinstance(uj.scrub, methods.Method)
  with pytest.raises(dataclasses.FrozenInstanceError):
    uj.scrub.defaults = {}
  with pytest.raises(TypeError):
    uj.scrub.defaults["lr"] = 1.0               # the facts are read-only too
  page = pydoc.render_doc(uj.scrub)
  for fact in ("Kurmanji", "Defaults: ", "lr=0.002", "Bounds: ", "lr in (0, inf)"):
    assert fact in page, f"help(uj.scrub) does not show {fact!r}"
  assert list(inspect.signature(uj.scrub).parameters)[1:] == list(uj.scrub.defaults)
