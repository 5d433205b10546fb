"""The package as a user installs it: the wheel's contents, the console script, the
dependency split, the lint configuration the code passes."""

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

import unlearn_jax

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk():
  found = set()
  for top, name in (("unlearn_jax", "unlearn_jax"), ("experiments", "unlearn_jax_experiments")):
    for init in sorted((ROOT / top).rglob("__init__.py")):
      rel = init.parent.relative_to(ROOT / top).parts
      found.add(".".join((name, *rel)))
  return found


def test_the_package_list_is_every_package_on_disk():
  """pyproject lists packages explicitly (the application is renamed in the wheel): a new
  subpackage missing from the list would be left out of every installed copy."""
  assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == _packages_on_disk()


def test_the_core_is_what_the_library_imports():
  """Every third-party module `unlearn_jax` imports is a core dependency (or ships with
  one); matplotlib, chex and the test tools are not core."""
  core = " ".join(PYPROJECT["project"]["dependencies"]).lower()
  provided_by = {"sklearn": "scikit-learn", "PIL": "pillow", "tensorflow_datasets":
                 "tensorflow-datasets", "orbax": "orbax-checkpoint", "absl": "absl-py",
                 "ml_collections": "ml-collections", "etils": "etils", "flax": "flax",
                 "jax": "jax", "jaxlib": "jax", "optax": "optax", "numpy": "numpy",
                 "filelock": "filelock", "array_record": "array_record",
                 "importlib_resources": "importlib_resources", "mnist1d": "mnist1d",
                 "scipy": "scipy"}
  stdlib = set(sys.stdlib_module_names)
  imported = set()
  for path in (ROOT / "unlearn_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        imported.add(node.module.split(".")[0])
  third_party = sorted(m for m in imported - stdlib - {"unlearn_jax"})
  for module in third_party:
    assert module in provided_by, f"unlearn_jax imports {module}, which no dependency names"
    assert provided_by[module] in core, f"{module} ({provided_by[module]}) is not core"
  for extra_only in ("matplotlib", "chex", "pytest", "tensorflow-cpu", "sphinx"):
    assert extra_only not in core, f"{extra_only} is a core dependency"
  extras = PYPROJECT["project"]["optional-dependencies"]
  for name in ("plots", "attacks", "tfds-prepare", "docs", "test"):
    assert name in extras, f"extra [{name}] is missing"


def test_the_version_has_one_source():
  assert PYPROJECT["project"]["dynamic"] == ["version"]
  assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
      "attr": "unlearn_jax.__version__"}
  assert unlearn_jax.__version__.count(".") == 2


def test_the_code_passes_ruff():
  r = subprocess.run([sys.executable, "-m", "ruff", "check", "unlearn_jax", "experiments",
                      "tests", "docs"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel built from a copy of the source without build outputs (a stale `build/`
  from an earlier layout would leak its packages into the wheel)."""
  out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src") / "unlearn_jax"
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", "build", "*.egg-info", "runs", "_build", "__pycache__", ".venv*"))
  r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                      str(src)], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  (path,) = out.glob("unlearn_jax-*.whl")
  return path


@pytest.mark.integration
def test_the_wheel_claims_no_generic_top_level_name(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info",
                                                                          ".data"))}
  assert tops == {"unlearn_jax", "unlearn_jax_experiments"}, tops
  assert "unlearn_jax/py.typed" in names
  # Nothing measured on a developer's machine ships: each machine measures its own
  # train-program table into the user's cache (`train_programs.machine_table_path`).
  assert not [n for n in names if n.startswith("unlearn_jax/") and n.endswith(".json")], names
  assert "unlearn_jax_experiments/configs/cifar10_cnn.py" in names
  (entry,) = [n for n in names if n.endswith("entry_points.txt")]
  assert "unlearn-jax = unlearn_jax_experiments.console:main" in (
      zipfile.ZipFile(wheel).read(entry).decode())


@pytest.mark.integration
def test_the_installed_wheel_runs_the_main_job(wheel, tmp_path):
  """`pip install` of the wheel into a new venv, then `unlearn-jax run` from a directory
  with no checkout in it. The dependencies come from this environment's site-packages,
  appended after the new venv's own (a .pth line), so nothing is downloaded and the
  checkout's editable copy is not on the path."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  py = venv / "bin" / "python"
  inner = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
  outer = sysconfig.get_path("purelib")
  Path(inner, "outer_dependencies.pth").write_text(outer + "\n")
  r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                      "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  work = tmp_path / "elsewhere"
  work.mkdir()
  env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
         "HOME": str(tmp_path), "UNLEARN_JAX_CACHE": str(tmp_path / "cache")}
  r = subprocess.run([str(venv / "bin" / "unlearn-jax"), "run", "--methods=finetune",
                      "--seeds=1", "--config.train.epochs=2", "--config.plots=False",
                      "--workdir=run"], cwd=work, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert (work / "run" / "results.csv").is_file()
  where = subprocess.run([str(py), "-c", "import unlearn_jax_experiments as m; print(m.__file__)"],
                         cwd=work, env=env, capture_output=True, text=True)
  assert str(venv) in where.stdout, "the console script did not use the installed copy"
  bad = subprocess.run([str(venv / "bin" / "unlearn-jax"), "train"], cwd=work, env=env,
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr
  # The next step the docs give a user with only CIFAR-10's python archive: a shipped
  # config by name and the archive (a small one of the official format here).
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  from test_data import write_cifar_python
  write_cifar_python(work / "cifar-10-python.tar.gz", per_file=40)
  r = subprocess.run([str(venv / "bin" / "unlearn-jax"), "run", "--config=cifar10_memorise",
                      "--config.dataset=cifar10:cifar-10-python.tar.gz", "--config.train_subset=100",
                      "--config.test_subset=20", "--methods=finetune", "--seeds=1",
                      "--config.train.epochs=1", "--config.plots=False", "--workdir=c10"],
                     cwd=work, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert (work / "c10" / "results.csv").is_file()


@pytest.mark.integration
def test_without_matplotlib_the_job_runs_and_says_plots_are_off(tmp_path):
  """A core install has no matplotlib: the main job writes everything but the figures."""
  code = ("import runpy, sys; sys.modules['matplotlib'] = None; "
          f"sys.argv = ['unlearn', '--config=digits', '--methods=finetune', '--seeds=1', "
          f"'--workdir={tmp_path / 'run'}',"
          " '--config.train.epochs=2']; runpy.run_module('experiments.unlearn', run_name='__main__')")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "plots are off: matplotlib is not installed" in r.stderr
  assert (tmp_path / "run" / "results.csv").is_file()
  assert not list((tmp_path / "run").rglob("*.png"))
