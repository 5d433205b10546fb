"""A registered method made to do nothing: it returns the variables it is given.

The suite checks itself with it: `tests/test_behaviour.py` replaces each method in turn
and asserts that its criterion then fails, naming the method; `python -m pytest
--do-nothing=ssd` runs any lane with `ssd` replaced for the whole session."""

from __future__ import annotations

import functools

import unlearn_jax
from unlearn_jax import methods, steps
from unlearn_jax.methods import base


def doing_nothing(method):
  """`method` with its facts (name, reads, defaults, ...) whose `unlearn` hands back its
  input: `(variables, {})`, and whose steps have no phase (a caller that runs the steps,
  like the application's driver, gets the input back too). Hyperparameters are still
  validated."""
  def no_steps(ctx, **overrides):
    method.validate(overrides)
    return steps.Steps(lambda variables, data, key: steps.StepState(
        base.model_state(variables), {}, {}), ())

  @functools.wraps(method)        # its docstring, signature and every registry fact
  def replaced(ctx, **overrides):
    built = no_steps(ctx, **overrides)

    def unlearn(variables, data, key, **kwargs):
      del data, key, kwargs
      return variables, {}
    unlearn.steps = built
    return unlearn

  replaced.steps = no_steps
  return replaced


def replace_methods(names) -> dict:
  """Replaces each of `names` in the registry by `doing_nothing` of it; returns the
  originals (to put back). A ValueError names an unknown method."""
  originals = {}
  for name in names:
    method = methods.get_method(name)
    originals[name] = method
    base._REGISTRY[name] = doing_nothing(method)
    setattr(unlearn_jax, name, base._REGISTRY[name])   # uj.<name> too
  return originals


def restore(originals: dict) -> None:
  base._REGISTRY.update(originals)
  for name, method in originals.items():
    setattr(unlearn_jax, name, method)


def main() -> None:
  """`python tests/do_nothing.py [METHOD ...]`: for each registered method (or those
  named), the behaviour tests run with it doing nothing; prints the line that caught it
  (or MISSED) per method, and exits 1 if any method went uncaught."""
  import re
  import subprocess
  import sys
  from pathlib import Path

  here = Path(__file__).resolve().parent
  sys.path.insert(0, str(here))
  from test_behaviour import SLOW
  names = sys.argv[1:] or list(methods.list_methods())
  missed = []
  for name in names:
    test = f"tests/test_behaviour.py::test_the_method_meets_its_criterion[{name}]"
    lane = ["--integration"] if name in SLOW else []   # those criteria run in that lane
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", test,
                        f"--do-nothing={name}", *lane], cwd=here.parent, capture_output=True,
                       text=True)
    caught = [m.group(1) for m in re.finditer(r"^E\s+AssertionError: (.*)$", r.stdout, re.M)]
    if r.returncode == 0 or not caught or name not in caught[0]:
      missed.append(name)
      print(f"{name}: MISSED (pytest exit {r.returncode})", flush=True)
    else:
      print(f"{name}: {caught[0]}", flush=True)
  sys.exit(1 if missed else 0)


if __name__ == "__main__":
  main()
