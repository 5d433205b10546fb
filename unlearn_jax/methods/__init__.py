"""Unlearning methods: one registry, one interface (see `base`)."""
from unlearn_jax.methods.base import (HyperparameterError, Interval, Method, MethodContext,
                                      MethodSpec,
                                      UnlearnData, check_labels, get_method, list_methods,
                                      make_method, register, select_data)
# Importing the family modules registers their methods, in this order.
from unlearn_jax.methods import baselines  # noqa: F401
from unlearn_jax.methods import lipschitz  # noqa: F401
from unlearn_jax.methods import dampening  # noqa: F401
from unlearn_jax.methods import curvature  # noqa: F401
from unlearn_jax.methods import saliency  # noqa: F401
from unlearn_jax.methods import resetting  # noqa: F401
from unlearn_jax.methods import distillation  # noqa: F401
from unlearn_jax.methods import noise  # noqa: F401
from unlearn_jax.methods import zero_shot  # noqa: F401
from unlearn_jax.methods import deepinversion  # noqa: F401
from unlearn_jax.methods import certified  # noqa: F401
from unlearn_jax.methods import matching  # noqa: F401
