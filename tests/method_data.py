"""`select_data` for tests that run every registered method through the interface: the
methods that read `targets` (the matching methods) get zero logits on each set, targets of
the right shape. What matching real targets does is tested where it matters
(`tests/test_behaviour.py` on the memorising benchmark, `tests/test_matching.py`)."""

import jax.numpy as jnp

from unlearn_jax import methods


def select(method, forget=None, retain=None, num_classes=None, *, ctx=None):
  spec = methods.get_method(method) if isinstance(method, str) else method
  targets = None
  if "targets" in spec.reads:
    classes = num_classes if num_classes is not None else ctx.num_classes
    targets = tuple(jnp.zeros((jnp.shape(pair[0])[0], classes), jnp.float32)
                    for pair in (forget, retain))
  return methods.select_data(spec, forget, retain, num_classes, ctx=ctx, targets=targets)
