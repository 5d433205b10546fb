"""The README and the documentation site: the README is short and its method list is the
registry's; every Python and shell block of the README and of the docs pages runs as
written (a block that cannot run here, a cluster launch or a package install, says why in
a `<!-- not run in tests: reason -->` line right above it); the site builds with Sphinx
with warnings as errors and has a page for every method."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import generate  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs" / "guide").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- not run in tests: (?P<why>[^>]*?) -->\n)?```(?P<lang>[^\n`]*)\n"
                   r"(?P<body>.*?)```", re.S)


def _blocks():
  out = []
  for page in PAGES:
    for m in FENCE.finditer(page.read_text()):
      lang = m.group("lang").strip()
      if lang.startswith("{"):        # a MyST directive (toctree, include), not code
        continue
      out.append((page.relative_to(ROOT), lang, m.group("body"), m.group("why")))
  return out


BLOCKS = _blocks()
RUN = [b for b in BLOCKS if b[3] is None]


def test_the_readme_is_a_short_entry_page():
  lines = (ROOT / "README.md").read_text().splitlines()
  assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200)"
  first_screen = "\n".join(lines[:60])
  assert "ModelAdapter" in first_screen and "uj.scrub(ctx" in first_screen, (
      "the first screen must show how to unlearn your own model")


def test_the_readme_method_list_is_the_registry():
  text = (ROOT / "README.md").read_text()
  a = text.index(generate.README_BEGIN) + len(generate.README_BEGIN)
  b = text.index(generate.README_END)
  assert text[a:b].strip() == generate.readme_method_list().strip(), (
      "the README's method list differs from the registry: run python docs/_ext/generate.py")


def test_every_code_block_is_python_or_bash_and_a_skipped_one_says_why():
  assert len(RUN) >= 5
  for page, lang, _, why in BLOCKS:
    assert lang in ("python", "bash"), f"{page}: a ```{lang} block (python or bash only)"
    assert why is None or len(why.split()) >= 4, f"{page}: a block is skipped without a reason"


@pytest.mark.integration
@pytest.mark.parametrize("index", range(len(RUN)),
                         ids=[f"{p}-{i}" for i, (p, *_) in enumerate(RUN)])
def test_code_block_runs(index, tmp_path):
  """From an empty directory that sees the checkout's `experiments/` (so relative config
  paths and `python -m experiments.<cli>` work and run directories land in tmp)."""
  page, lang, body, _ = RUN[index]
  (tmp_path / "experiments").symlink_to(ROOT / "experiments")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  script = tmp_path / ("block.py" if lang == "python" else "block.sh")
  script.write_text(body if lang == "python" else "set -euo pipefail\n" + body)
  cmd = [sys.executable, str(script)] if lang == "python" else ["bash", str(script)]
  r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, f"a {lang} block of {page} failed:\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"


@pytest.mark.integration
def test_the_site_builds_without_warnings(tmp_path):
  r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                      str(ROOT / "docs"), str(tmp_path / "html")], cwd=ROOT,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  html = tmp_path / "html"
  from unlearn_jax import methods
  family_pages = {p.stem: p.read_text() for p in (html / "_generated" / "methods").glob("*.html")}
  for name in methods.list_methods():
    spec = methods.get_method(name)
    page = spec.factory.__module__.rsplit(".", 1)[-1]
    assert page in family_pages, f"no page for the {page} family"
    assert f"id=\"{name.replace('_', '-')}\"" in family_pages[page], f"{name} has no section"
  for page in ("getting_started", "cli", "scaling", "design", "changelog", "reproducing"):
    assert (html / f"{page}.html").is_file(), page
  assert (html / "_generated" / "metrics.html").is_file()
  results = (html / "_generated" / "results")
  assert results.is_dir() and len(list(results.glob("*.html"))) >= 2


def test_no_page_includes_a_generated_file_and_the_needs_table_is_the_registrys():
  """A reader of the sources sees every guide page whole: nothing is `{include}`d from
  docs/_generated (not in a checkout); the adapter-needs table written in the library
  guide is the one the registry gives now."""
  for page in PAGES:
    assert not re.search(r"```\{include\}[^\n]*_generated", page.read_text()), (
        f"{page.relative_to(ROOT)} includes a generated file a checkout lacks")
  assert generate.needs_table() in (ROOT / "docs" / "guide" / "library.md").read_text(), (
      "docs/guide/library.md's needs table is outdated: paste generate.needs_table()")


def test_klom_report_is_host_side_as_its_page_says():
  """The metrics page says where each metric runs: klom_report returns Python floats, so
  the page must say host (it once said jit), and jit indeed refuses it."""
  import jax
  import jax.numpy as jnp
  import unlearn_jax as uj
  assert generate._where("klom_report", uj.klom_report).startswith("host"), (
      "the metrics page claims klom_report runs on the device")
  margins = {"forget": jnp.zeros((3, 4))}
  assert set(uj.klom_report(margins, margins)) >= {"klom_p95_forget", "average_95"}
  with pytest.raises(jax.errors.TracerArrayConversionError):
    jax.jit(uj.klom_report)(margins, margins)


# ----------------------------------------------------------------------------- results pages
RESULTS = ROOT / "docs" / "results"
# The input shape of each dataset's examples (enough to build the model a run names).
SHAPES = {"digits": (8, 8, 1), "mnist1d": (1, 40, 1)}


def _same_data(name: str) -> str:
  """A dataset's identity, not its location: CIFAR-10 through tfds, its python archive or a
  JPEG folder of it is the same data."""
  name = str(name)
  return "cifar10" if name.split(":", 1)[0] == "cifar10" or "cifar10" in name else name


def today_form(args: list) -> list:
  """A recorded command's arguments as today's CLI spells them: a flag that no longer
  exists becomes the flag or config field the CLI names for it (`cli.nearest`, the hint
  its error gives); a run recorded before configs held the recipes (no --config,
  `--dataset=digits`) is today's digits config."""
  from experiments import cli
  out = []
  given = any(a.startswith("--config=") for a in args)
  for a in args:
    name, eq, value = a[2:].partition("=")
    if name == "dataset" and value == "digits" and not given:
      out.append("--config=digits")
      continue
    known = name.split(".")[0] in ("config", "workdir", "overwrite", "resume", "noresume",
                                   "methods", "seeds")
    out.append(a if known or not a.startswith("--") else
               f"{cli.nearest(name, ['x'])}{eq}{value}")
  return out


def _config_of_command(command: str):
  """The config a run's recorded command gives with today's code (`today_form`): its
  config file (a path or a shipped name), its `--config.x=v` overrides, `--seeds` and
  `--methods` (for experiments.requests, the field `requests.methods`)."""
  import importlib.util
  import shlex
  from experiments import cli
  from experiments.configs import default
  args = today_form(shlex.split(command)[3:])
  flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
  path = cli.config_by_name(["x", f"--config={flags.get('config', 'default')}"])[1]
  path, _, arg = path[len("--config="):].partition(":")
  spec = importlib.util.spec_from_file_location("results_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(arg) if arg else module.get_config()
  for key, value in flags.items():
    if key == "seeds":
      cfg.seeds = int(value)
    elif key == "methods" and "experiments.requests" in command:
      cfg.requests.methods = value
    elif key == "methods":
      cfg.methods = default.methods_config(value)
    elif key.startswith("config."):
      *parents, leaf = key[len("config."):].split(".")
      node = cfg
      for part in parents:
        node = node[part]
      old = node[leaf]
      node[leaf] = (value.lower() == "true" if isinstance(old, bool) else
                    value if old is None else type(old)(value))
  return cfg


# Fields an earlier run recorded that moved: the evaluation's population cache is every
# stage's `references_dir` (a cache: where it lives changes no result).
MOVED = {("evaluate", "populations_dir"), ("evaluate", "reuse_populations")}


# A field an earlier run recorded as "the recipe's or the dataset's value" (-1, "") or "all"
# (0): what it resolved to is the run's `recipe` and `info`, checked instead.
UNSET = (-1, -1.0, "", 0)


def _recorded_matches_today(was: dict, today: dict, regen: str) -> None:
  """Every field the run recorded, against the one today's config gives it."""
  for key, value in today.items():
    if key in ("methods", "train", "evaluate", "tune", "requests") or key not in was:
      continue
    old = was[key]
    if key == "dataset":
      value, old = _same_data(value), _same_data(old)
    if key in ("model",) and old == "":
      continue
    if old in UNSET[:3] or (value is None and old == 0):
      continue
    assert old == value, f"{regen} (config {key}: {old!r} then, {value!r} today)"
  for key in ("evaluate", "tune", "requests"):   # an entry point's own settings, when recorded
    if isinstance(was.get(key), dict):
      # where the populations were cached moved to `references_dir` (it changes no result)
      then = {k: v for k, v in was[key].items() if (key, k) not in MOVED}
      assert then == today[key], f"{regen} (config {key}: {then!r} then, {today[key]!r} today)"
  for key, old in was.get("train", {}).items():
    if old not in UNSET[:3]:
      assert today["train"][key] == old, f"{regen} (config train.{key}: {old!r} then, " \
          f"{today['train'][key]!r} today)"


def _runs():
  return sorted(p for p in RESULTS.iterdir() if (p / "provenance.json").exists())


@pytest.mark.parametrize("run", _runs(), ids=lambda p: p.name)
def test_a_results_page_is_what_its_command_gives_today(run):
  """A results page is outdated when the code it documents would now run something else:
  its recorded configuration differs from the one its command gives today (a changed
  default, a new field, a config file's new method list), its recorded recipe or
  hyperparameters differ from today's, or, for a run of every method, its methods differ
  from today's registry. The message says how to regenerate it."""
  import json
  from experiments.pipeline import settings
  group = "cifar" if "cifar" in run.name else "digits"
  regen = (f"docs/results/{run.name} is outdated; regenerate it: "
           f"CIFAR10=cifar10:PATH docs/results/regenerate.sh {group}" if group == "cifar" else
           f"docs/results/{run.name} is outdated; regenerate it: docs/results/regenerate.sh digits")
  stamp = json.loads((run / "provenance.json").read_text())
  recorded = next(json.loads(f.read_text()) for f in sorted(run.glob("*.json"))
                  if f.name != "provenance.json" and "config" in json.loads(f.read_text()))
  cfg = _config_of_command(stamp["command"])
  today, was = cfg.to_dict(), recorded["config"]
  _recorded_matches_today(was, today, regen)
  assert recorded["info"]["model"] == today["model"], f"{regen} (model)"
  if "recipe" in recorded:      # a field added since is at its default: what ran then
    import dataclasses
    from unlearn_jax.train import TrainConfig
    recipe = {**dataclasses.asdict(TrainConfig()), **recorded["recipe"]}
    assert recipe == settings.recipe_of(cfg).__dict__, f"{regen} (the recipe)"
  if isinstance(was.get("methods"), str) and was["methods"]:
    # Only experiments.evaluate trains oracles: elsewhere the matching methods are skipped.
    from unlearn_jax import methods as registry
    runnable = [m for m in today["methods"] if "experiments.evaluate" in stamp["command"]
                or m not in registry.list_methods()
                or "targets" not in registry.get_method(m).reads]
    chosen = today["requests"]["methods"] if "requests" in stamp["command"] else \
        ",".join(runnable)
    assert [m for m in was["methods"].split(",") if m != "sisa"] == [
        m for m in chosen.split(",") if m not in ("sisa", "retrain")] or set(
        was["methods"].split(",")) == set(runnable), f"{regen} (methods)"
  if (run / "results.csv").exists():
    import jax
    from unlearn_jax import models
    with open(run / "results.csv") as f:
      rows = list(__import__("csv").DictReader(f))
    ran = list(dict.fromkeys(r["method"] for r in rows if r["method"] not in
                             ("original", "retrain")))
    model = models.get_model(recorded["info"]["model"], 10)
    shape = SHAPES.get(_same_data(today["dataset"]), (32, 32, 3))
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
    # results.csv pages are runs of experiments.unlearn, which has no oracles: no targets
    want = list(settings.resolve_methods(list(today["methods"]), today["scenario"],
                                      models.has_batch_norm(shapes), targets=False))
    assert ran == want, f"{regen} (methods {ran} then, {want} today)"
    hparams = settings.resolve_hparams(want, today["methods"], today["scenario"], lambda s: None,
                                    today["model"])
    assert recorded["hparams"] == hparams, f"{regen} (the methods' hyperparameters)"


def test_a_results_page_names_no_path_of_the_machine_that_ran_it():
  """A recorded command's data path (`--dataset=` or `--config.dataset=image_folder:/...`)
  is the running machine's: the page shows `$CIFAR10`, the variable regenerate.sh reads."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "_ext" / "generate.py")
  generate = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(generate)
  for run in _runs():
    text = generate.stamp(run)
    assert "/work/" not in text and "shared/data" not in text, (run.name, text)
  cifar = [r for r in _runs() if "cifar" in r.name]
  assert cifar and all("$CIFAR10" in generate.stamp(r) for r in cifar)
