"""The reference models every experiment trains: seed s's original on all of train and
its retrained model on the retain set, from the same initial weights."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import driver
from unlearn_jax import models as models_lib
from .experiment import Setup


# The references every experiment trains: seed s's original on all of train and its
# retrained model on the retain set, from the same initial weights (`fold_in(seed key, 0)`),
# with training keys `fold_in(seed key, salt)`.
REFERENCE_SALTS = {"original": 1, "retrain": 2}


def seed_keys(first_seed: int, count: int) -> jax.Array:
  """[count] PRNG keys of seeds first_seed, first_seed + 1, ..."""
  return jnp.stack([jax.random.PRNGKey(int(first_seed) + i) for i in range(int(count))])


# How many retain images a data-dependent initialisation reads (airbench's whitening: 5,000).
DATA_INIT_IMAGES = 5000


def initial_variables(st: Setup, keys: jax.Array):
  """Every seed's initial weights (leading axis = seed), shared by its references. A model
  whose initialisation reads data (`models.data_init`: airbench's whitening) reads the
  first `DATA_INIT_IMAGES` retain images, so that the retrained references see no forget
  example, not even through their initialisation."""
  variables = jax.jit(jax.vmap(lambda k: models_lib.init_variables(
      st.model, jax.random.fold_in(k, 0), st.ds.input_shape)))(keys)
  images = st.ds.train_x[np.asarray(st.split.retain)[:DATA_INIT_IMAGES]]
  return models_lib.data_init(st.model, variables, images)


def train_reference(st: Setup, name: str, x, y, keys: jax.Array, init_vars, log, **kwargs):
  """The `name` reference ("original" or "retrain") of every seed on (x, y): the setup's
  recipe and seed mode (`driver.train_population`; `kwargs`: label, store, programs)."""
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, REFERENCE_SALTS[name]))(keys)
  program = st.train_program
  return driver.train_population(st.train_model or st.model, st.recipe, init_vars, x, y,
                                 train_keys, seed_mode=st.mode, log=log,
                                 loop=program.loop, steps_per_call=program.steps_per_call,
                                 **{"label": name, **kwargs})
