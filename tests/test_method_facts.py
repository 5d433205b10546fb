"""What a method's docstring and signature promise is what it does: the aux keys it
returns, the adapter parts it needs, its defaults in the signature, its paper in help()."""

import inspect
import re

import jax
import jax.numpy as jnp
import pytest

import unlearn_jax as uj
from unlearn_jax import methods

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
  data = methods.select_data(spec, forget=forget, retain=retain, ctx=ctx)
  return jax.eval_shape(spec(ctx), variables, data, jax.random.PRNGKey(1))


@pytest.mark.parametrize("name", NAMES)
def test_declared_aux_keys_are_the_returned_ones(name, small):
  """`aux=` in the registry (and so help()) lists exactly the keys of the returned aux."""
  _, aux = _abstract_run(name, small)
  assert tuple(sorted(aux)) == tuple(sorted(methods.get_method(name).aux)), (
      f"{name} returns aux keys {sorted(aux)} but declares {methods.get_method(name).aux}")


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


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_paper_defaults_and_returns(name):
  spec = methods.get_method(name)
  assert YEAR.search(spec.paper) or any(p in spec.paper for p in PROJECTS), spec.paper
  doc = inspect.getdoc(spec)
  assert f"Paper: {spec.paper}" in doc
  for section in ("Reads:", "Defaults:", "Args:", "Returns:", "aux keys:"):
    assert section in doc, f"{name}: help() lacks {section!r}"
  assert "seed 00" not in doc and "--" not in doc.split("Paper:")[0], name
  signature = inspect.signature(spec)
  assert list(signature.parameters)[0] == "ctx"
  assert {k: p.default for k, p in list(signature.parameters.items())[1:]} == spec.defaults


def test_register_refuses_an_unknown_need():
  with pytest.raises(ValueError, match="needs .*allowed"):
    methods.register("nothing_real", reads=(), defaults={}, paper="x 2020", needs=("tail",))
