"""Models: shapes, features, registry errors."""

import jax
import jax.numpy as jnp
import pytest

from unlearn_jax import models


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)),
                                        ("cnn", (32, 32, 3)), ("resnet18", (8, 8, 1))])
def test_models_give_logits_and_features(name, shape):
  m = models.get_model(name, 7)
  v = models.init_variables(m, jax.random.PRNGKey(0), shape)
  x = jnp.ones((4,) + shape)
  logits = m.apply(v, x, train=False)
  assert logits.shape == (4, 7)
  logits2, feats = m.apply(v, x, train=False, features=True)
  assert feats.shape[0] == 4 and feats.ndim == 2
  assert jnp.allclose(logits, logits2)
  assert models.has_batch_norm(v) == (name != "mlp")


def test_unknown_model_names_the_allowed_ones():
  with pytest.raises(ValueError, match="allowed: mlp, cnn, resnet18"):
    models.get_model("vit", 10)
