"""`population.PopulationProgram`, the one way a program runs over a population: the same
members' results whether vmapped at once, in chunks or one member at a time; one
compilation per argument signature; shared arguments passed once; clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax.population import PopulationProgram


def _member(w, x, scale):
  """One member: a small nonlinear function of its own weights and the shared input."""
  return {"out": jnp.tanh(x @ w) * scale, "norm": jnp.sum(w ** 2)}


def _population(n=5):
  w = jax.random.normal(jax.random.PRNGKey(0), (n, 3, 2))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  scale = jnp.arange(1.0, n + 1.0)
  return w, x, scale


def _by_hand(w, x, scale):
  outs = [_member(w[i], x, scale[i]) for i in range(w.shape[0])]
  return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]}


@pytest.mark.parametrize("mode,chunk", [("vmap", 0), ("vmap", 2), ("vmap", 5), ("vmap", 8),
                                        ("sequential", 0)])
def test_every_way_gives_each_members_own_result_in_order(mode, chunk):
  w, x, scale = _population()
  program = PopulationProgram(_member, (0, None, 0), mode=mode, chunk=chunk)
  got = program(w, x, scale)
  want = _by_hand(w, x, scale)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-6)
  assert program.seconds >= 0 and program.compile_seconds > 0


def test_one_compilation_per_signature_and_a_shared_cache():
  """Chunks of 2 over 5 members: two executables (2 members and the last 1), reused by a
  second call; a second program with the same name and cache compiles nothing."""
  w, x, scale = _population()
  cache = {}
  program = PopulationProgram(_member, (0, None, 0), chunk=2, cache=cache, name="member")
  program(w, x, scale)
  assert len(cache) == 2 and program.executables() == 2
  spent = program.compile_seconds
  program(w, x, scale)
  assert program.compile_seconds == spent and len(cache) == 2
  again = PopulationProgram(_member, (0, None, 0), chunk=2, cache=cache, name="member")
  again(w, x, scale)
  assert again.compile_seconds == 0.0 and len(cache) == 2
  seq = PopulationProgram(_member, (0, None, 0), mode="sequential", cache=cache, name="member")
  seq(w, x, scale)
  assert len(cache) == 3          # the single-member executable is a program of its own


def test_donated_arguments_are_consumed():
  w, x, scale = _population()
  program = PopulationProgram(lambda ww, xx: ww * 2.0, (0, None), donate=(0,))
  copy = jnp.array(w)
  out = program(copy, x)
  np.testing.assert_allclose(np.asarray(out), 2 * np.asarray(w), rtol=1e-6)
  if jax.default_backend() != "cpu":      # the CPU backend may ignore donation
    assert copy.is_deleted()


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="mode='loop' is unknown; allowed: vmap, sequential"):
    PopulationProgram(_member, (0, None, 0), mode="loop")
  with pytest.raises(ValueError, match="chunk=-1"):
    PopulationProgram(_member, (0, None, 0), chunk=-1)
  w, x, scale = _population()
  with pytest.raises(ValueError, match="no argument carries the members"):
    PopulationProgram(_member, (None, None, None))(w, x, scale)


@pytest.mark.parametrize("mode,chunk,reports", [("vmap", 2, [(2, 5), (4, 5), (5, 5)]),
                                                ("vmap", 0, [(5, 5)]),
                                                ("sequential", 0, [(i, 5) for i in range(1, 6)])])
def test_progress_after_every_part_and_the_peak_memory(mode, chunk, reports):
  """`progress(done, total)` hears after each chunk or member, in order, ending at the
  whole population; `peak_bytes` is XLA's figure for the largest executable the call ran
  (at least the members' outputs it holds: 5 × 4 × 2 floats for a vmapped whole)."""
  w, x, scale = _population()
  heard = []
  program = PopulationProgram(_member, (0, None, 0), mode=mode, chunk=chunk,
                              progress=lambda done, total: heard.append((done, total)))
  program(w, x, scale)
  assert heard == reports
  assert program.peak_bytes > 0
  if mode == "vmap" and chunk == 0:
    assert program.peak_bytes >= 5 * 4 * 2 * 4
