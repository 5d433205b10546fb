"""unlearn_jax: machine unlearning in JAX/Flax.

Every method is a pure function from a registry, every metric a pure function of
logits or losses; callers `jit` and `vmap` them. The public API is flat (optax style).
"""

__version__ = "0.1.0"
