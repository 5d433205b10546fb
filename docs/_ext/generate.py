"""The generated pages of the documentation, written when Sphinx starts (`builder-inited`)
and by hand with `python docs/_ext/generate.py` (then also the README's method list).

- `_generated/methods/<family>.md`: one page per method family (a module of
  `unlearn_jax.methods`), each method's rule (its docstring), paper, data read, what it
  needs from the adapter, defaults, search space and aux keys, all read from the registry.
- `_generated/methods/index.md`: a line per method.
- `_generated/metrics.md`: every metric's inputs, where it runs, and its docstring.
- `_generated/results/<run>.md`: a page per run directory committed under `docs/results/`,
  its tables computed from the run's CSV/JSON files and stamped with its
  `provenance.json` (command, commit, date, JAX version, hardware). No number on these
  pages is typed by hand.

Nothing here trains or evaluates anything; it reads the registry and the committed runs.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
OUT = DOCS / "_generated"
README_BEGIN, README_END = "<!-- methods:begin -->", "<!-- methods:end -->"

FAMILIES = {   # module -> (page title, one sentence)
    "baselines": ("Baselines", "Fine-tuning, gradient ascent, label poisoning and boundary "
                  "shifting: the methods every benchmark compares against."),
    "lipschitz": ("Lipschitz smoothing", "Smoothing the model around the forget examples, "
                  "with no retain data."),
    "dampening": ("Synaptic dampening", "Importance-based edits of single weights, with no "
                  "gradient step."),
    "curvature": ("Curvature", "Fisher noise and influence-function (Newton) steps."),
    "saliency": ("Saliency", "Unlearning restricted to the weights salient for the forget set."),
    "resetting": ("Resetting and pruning", "Reinitialising layers, weights or kernels, then "
                  "repairing on the retain set."),
    "distillation": ("Distillation", "Teacher-student methods: a student kept close to the "
                     "original on D_r and pushed away on D_f."),
    "noise": ("Error-maximising noise", "Impair with learned noise, then repair."),
    "zero_shot": ("Zero-shot", "No forget or retain data at all: only the original weights "
                  "and the class ids to forget."),
    "deepinversion": ("DeepInversion", "Zero-shot through images synthesised from the "
                      "original's BatchNorm statistics."),
    "certified": ("Certified removal", "A removal with a stated (ε, δ) guarantee, checked "
                  "per request."),
    "matching": ("Matching", "Fine-tuning to the outputs of models that never saw the forget "
                 "set: an oracle population's, or DM-Direct's prediction of it from "
                 "attribution scores (`unlearn_jax.attribution`)."),
}


def _registry():
  sys.path.insert(0, str(ROOT))
  from unlearn_jax import methods
  return methods, [methods.get_method(n) for n in methods.list_methods()]


def _family(spec) -> str:
  return spec.factory.__module__.rsplit(".", 1)[-1]


def _cell(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _md_code(value) -> str:
  return f"`{value!r}`" if not isinstance(value, str) else f"`{value!r}`"


def short_cite(paper: str) -> str:
  """`Golatkar, Achille & Soatto, "Title", CVPR 2020; ...` -> `Golatkar et al., CVPR 2020`;
  a project without a paper keeps its name."""
  first = paper.split(";")[0].strip()
  m = re.match(r'([^"]+?),\s*"[^"]+",\s*(.+)$', first)
  if not m:
    return first.split(":")[0].split(" (")[0]
  authors, venue = m.groups()
  venue = re.sub(r"\s*\(.*\)$", "", venue)
  if "," in authors:
    authors = authors.split(",")[0].strip() + " et al."
  return f"{authors}, {venue}"


def method_line(spec) -> str:
  """One line per method: name, what it does, the paper (short)."""
  return f"`{spec.name}`: {spec.summary} ({short_cite(spec.paper)})"


def _method_section(spec) -> list[str]:
  doc = inspect.cleandoc(spec.factory.__doc__ or "")
  body = doc.split("\n", 1)[1].strip() if "\n" in doc else ""
  space = ", ".join(
      f"`{k}` {v[0]} [{v[1]:g}, {v[2]:g}]" if isinstance(v[0], str)
      else f"`{k}` ∈ {{{', '.join(f'{x:g}' for x in v)}}}" for k, v in spec.space.items())
  rows = [
      ("paper", spec.paper),
      ("reads", ", ".join(spec.reads) or "nothing (zero-shot: the forget class ids only)"),
      ("scenarios", ", ".join(spec.scenarios)),
      ("needs from the adapter", ", ".join(spec.needs + spec.requires) or "nothing beyond "
       "running the model"),
      ("search space", space or "none (not tuned)"),
  ]
  lines = [f"## `{spec.name}`", "", spec.summary, "", "| property | value |", "|---|---|"]
  lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
  lines += ["", "| hyperparameter | default | allowed |", "|---|---|---|"]
  for k, v in spec.defaults.items():
    allowed = ", ".join(f"`{c!r}`" for c in spec.choices.get(k, ())) or type(v).__name__
    lines.append(f"| `{k}` | `{v!r}` | {allowed} |")
  from unlearn_jax.steps import COMMON_AUX
  lines += ["", "| aux key | what it is |", "|---|---|"]
  lines += [f"| `{k}` | {_cell(v)} |" for k, v in spec.aux.items()]
  lines += [f"| `{k}` | every method's: {_cell(v)} |" for k, v in COMMON_AUX.items()]
  lines += ["", f"`uj.{spec.name}(ctx, **hparams)` returns `unlearn(variables, data, key) -> "
            f"(variables, aux)`; `uj.{spec.name}.steps(ctx, **hparams)` its steps "
            "([steps](../../guide/steps.md)).", ""]
  if body:
    lines += ["The rule, as its docstring gives it (`help(uj." + spec.name + ")`):", "",
              "```text", body, "```", ""]
  return lines


def write_methods(out: Path) -> None:
  _, specs = _registry()
  by_family = defaultdict(list)
  for spec in specs:
    by_family[_family(spec)].append(spec)
  unknown = sorted(set(by_family) - set(FAMILIES))
  if unknown:
    raise ValueError(f"method families without a page title: {unknown}; add them to FAMILIES")
  (out / "methods").mkdir(parents=True, exist_ok=True)
  index = ["# Methods", "",
           f"{len(specs)} registered methods, one page per family. Every page is generated "
           "from the registry (`unlearn_jax.methods`) and the methods' docstrings.", "",
           "| method | family | reads | summary | paper |", "|---|---|---|---|---|"]
  toc = []
  for module, (title, sentence) in FAMILIES.items():
    members = by_family.get(module, [])
    if not members:
      continue
    page = [f"# {title}", "", sentence, ""]
    for spec in members:
      page += _method_section(spec)
      index.append(f"| [`{spec.name}`]({module}.md) | {title} | "
                   f"{', '.join(spec.reads) or 'none'} | {_cell(spec.summary)} | "
                   f"{_cell(spec.paper)} |")
    (out / "methods" / f"{module}.md").write_text("\n".join(page) + "\n")
    toc.append(module)
  index += ["", "```{toctree}", ":hidden:", "", *toc, "```", ""]
  (out / "methods" / "index.md").write_text("\n".join(index) + "\n")


NEEDS_WHY = {"head": "it changes the classifier head: `head=` (its path in params)",
             "features": "it reads penultimate features: `head=` (features are the head's "
                         "input) or a `features_fn`",
             "batch_norm": "it matches BatchNorm statistics: a model with BatchNorm, "
                           "`mutable=(\"batch_stats\",)`"}


def needs_table() -> str:
  """The table of what methods need from the adapter, as docs/guide/library.md holds it
  (written there, not included, so a reader of the sources sees it; tests/test_docs.py
  checks it is the registry's)."""
  sys.path.insert(0, str(ROOT))
  import unlearn_jax as uj
  rows = ["| method | needs | why |", "|---|---|---|"]
  for name in uj.list_methods():
    spec = uj.get_method(name)
    rows += [f"| `{name}` | {need} | {NEEDS_WHY[need]} |" for need in spec.needs + spec.requires]
  return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- metrics
METRICS = ("accuracy", "per_example_loss", "mia_loss_lr", "mia_efficacy", "lira", "ulira",
           "roc_summary", "js_to_retrain", "activation_distance", "zrf", "avg_gap",
           "per_example_epsilons", "forgetting_quality", "competition_score", "eps_hat",
           "hinge", "logit_scaled_confidence", "klom", "klom_percentiles", "klom_report",
           "layer_distance", "mean_layer_distance", "relearn_steps", "anamnesis_index",
           "audit_epsilon", "epsilon_lower_bound", "clopper_pearson_upper", "klom_average_95",
           "resample_indices", "bootstrap_replicates", "normal_interval", "rmia", "iam",
           "bounded_gumbel_signal", "true_class_probability", "ridge_probe",
           "linear_probe_accuracy")

# How each metric's uncertainty is reported (the metrics page's "interval" column).
_BOOTSTRAP = ("normal bootstrap over models, read against the split-half floor at the same N "
              "(`experiments.evaluate`)")
_SEEDS = "mean ± std over seeds; rankings: Student's t interval over seeds"
INTERVALS = {
    "klom": _BOOTSTRAP, "klom_average_95": _BOOTSTRAP, "klom_report": _BOOTSTRAP,
    "klom_percentiles": _BOOTSTRAP, "per_example_epsilons": _BOOTSTRAP + " (its median)",
    "forgetting_quality": _BOOTSTRAP, "competition_score": _BOOTSTRAP,
    "audit_epsilon": "one-sided Clopper-Pearson: the value is a 95% lower bound",
    "epsilon_lower_bound": "one-sided Clopper-Pearson: the value is a 95% lower bound",
    "clopper_pearson_upper": "is the interval (exact binomial)",
    "resample_indices": "the bootstrap's redraws", "bootstrap_replicates": "the bootstrap",
    "normal_interval": "is the interval",
    "accuracy": _SEEDS, "per_example_loss": _SEEDS, "mia_loss_lr": _SEEDS,
    "mia_efficacy": _SEEDS, "avg_gap": _SEEDS, "js_to_retrain": _SEEDS,
    "activation_distance": _SEEDS, "zrf": _SEEDS, "layer_distance": _SEEDS,
    "mean_layer_distance": _SEEDS, "relearn_steps": _SEEDS, "anamnesis_index": _SEEDS,
}


def first_sentence(doc: str) -> str:
  """The docstring's first sentence, whole: its first paragraph joined into one line, up
  to the first full stop followed by a space and a capital (or the paragraph's end), so a
  table cell never stops mid-sentence at a line break."""
  paragraph = " ".join(doc.strip().split("\n\n")[0].split())
  # From the 16th character on: a leading abbreviation ("Avg. Gap") is not an end.
  m = re.compile(r"(?<![.\s][a-z])\.(?=\s+[A-Z(`])").search(paragraph, 15)
  return paragraph[:m.end()] if m else paragraph


def _where(name, fn) -> str:
  if hasattr(fn, "host"):
    return "host NumPy/scikit-learn; under `jit` through `jax.pure_callback`"
  if name == "mia_loss_lr":
    return "host scikit-learn (call it on concrete arrays)"
  if name in ("audit_epsilon", "epsilon_lower_bound", "clopper_pearson_upper"):
    return "host NumPy/SciPy (call it on concrete arrays)"
  if name == "klom_report":
    return "host NumPy: returns Python floats (call it on concrete arrays, not under `jit`)"
  if name == "relearn_steps":
    return "device: a compiled SGD loop"
  return "device (`jax.numpy`): jit and vmap it"


def write_metrics(out: Path) -> None:
  sys.path.insert(0, str(ROOT))
  import unlearn_jax as uj
  missing = sorted(set(uj.metrics.__all__) - set(METRICS))
  if missing:
    raise ValueError(f"metrics without a row on the metrics page: {missing}")
  lines = ["# Metrics: the reference", "",
           "Every metric of `unlearn_jax.metrics` (also `uj.<name>`): its inputs, where it "
           "runs, and its docstring, which gives the formula or rule, the shapes, the paper "
           "or reference code, and the ideal value. Generated from the code.", "",
           "The interval column says how a report gives the metric's uncertainty; "
           "\"point estimate\" where none is computed yet.", "",
           "| metric | inputs | where it runs | interval | what |", "|---|---|---|---|---|"]
  sections = []
  for name in METRICS:
    fn = getattr(uj, name)
    doc = inspect.getdoc(fn) or ""
    sig = str(inspect.signature(fn)).replace("'", "")
    lines.append(f"| [`{name}`](#{name.replace('_', '-')}) | `{_cell(sig)}` | "
                 f"{_where(name, fn)} | {INTERVALS.get(name, 'point estimate')} | "
                 f"{_cell(first_sentence(doc))} |")
    sections += [f"## {name}", "", f"`uj.{name}{sig}`", "", "```text", doc, "```", ""]
  (out / "metrics.md").write_text("\n".join(lines + [""] + sections) + "\n")


# ----------------------------------------------------------------------------- results
def _mean_std(values) -> str:
  v = [float(x) for x in values if x not in ("", None) and not math.isnan(float(x))]
  if not v:
    return "–"
  mean = sum(v) / len(v)
  std = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
  return f"{mean:.2f} ± {std:.2f}" if abs(mean) < 10 else f"{mean:.1f} ± {std:.1f}"


def _rows(path: Path) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def stamp(run: Path) -> str:
  p = json.loads((run / "provenance.json").read_text())
  hw = p["hardware"]
  commit = (p["commit"] or "no commit")[:10] + (" (uncommitted changes)" if p.get("dirty")
                                                 else "")
  # A data set given by path names a file on the machine that ran it: shown as the
  # variable regenerate.sh reads (`CIFAR10`), not as that machine's path.
  command = re.sub(r"--(config\.)?dataset=(image_folder|cifar10|cifar100):\S+",
                   lambda m: f'--{m.group(1) or ""}dataset="$CIFAR10"', p["command"])
  return (f"Generated from `docs/results/{run.name}/` (run `{command}`; commit "
          f"{commit}; {p['date'][:10]}; unlearn_jax {p['unlearn_jax']}, JAX {p['jax']}; "
          f"{hw['backend']}: {hw['devices']} {hw['device_kind']} device(s), "
          f"{hw['cpu']} ({hw['cpu_count']} cores), {hw['processes']} process(es)).")


def _percent(values) -> str:
  return _mean_std([100 * float(v) for v in values])


def _unlearn_page(run: Path, title: str) -> list[str]:
  rows = _rows(run / "results.csv")
  info = json.loads((run / "results.json").read_text())
  by = defaultdict(list)
  for r in rows:
    by[r["method"]].append(r)
  lines = [f"# {title}", "", stamp(run), "",
           "Mean ± std over seeds. RA, FA, TA: retain, forget and test accuracy (%); MIA: "
           "the loss-based attack (`mia_loss_lr`, 0.5 = forget examples look unseen); "
           "seconds per seed after compilation. The goal is the `retrain` row.", "",
           "| method | RA | FA | TA | MIA | seconds |", "|---|---|---|---|---|---|"]
  for m, rs in by.items():
    lines.append(f"| {m} | {_percent(r['retain_acc'] for r in rs)} | "
                 f"{_percent(r['forget_acc'] for r in rs)} | "
                 f"{_percent(r['test_acc'] for r in rs)} | "
                 f"{_mean_std(r['mia_loss_lr'] for r in rs)} | "
                 f"{_mean_std(r['seconds'] for r in rs)} |")
  signal = info.get("memorisation_signal")
  if isinstance(signal, dict) and "points" in signal:
    mean, std = signal["points"]
    lines += ["", f"Memorisation signal (original FA − retrain FA): {mean:.1f} ± {std:.1f} "
              "points over seeds; " + ("enough to rank methods." if signal["discriminates"]
                                      else "**too small to rank methods**: doing nothing sits "
                                           "near retrain here.")]
  if (run / "plots" / "metrics.png").exists():
    lines += ["", *figure(f"../../results/{run.name}/plots/metrics.png", "metrics per method")]
  return lines


# A certified method's rows in requests.csv (marked by their first column) and the table of
# its certificate per request: (row label, column, format).
CERTIFICATE_TABLES = (
    ("certified_residual_bound", "the residual bound since the last refit, the budget it may "
     "reach, and the refits so far.",
     (("bound", "certified_residual_bound", ".3g"), ("budget", "certified_residual_budget", ".3g"),
      ("refits", "certified_refits", ".1f"))),
    ("certified_epsilon_bound", "the ε its bound gives, the epochs of noisy SGD the request took "
     "(the head is retrained when they would pass the cap), the W∞ bound it started from, the "
     "retrains so far.",
     (("ε", "certified_epsilon_bound", ".3g"), ("epochs", "certified_unlearn_epochs", ".0f"),
      ("W∞ bound", "certified_distance_bound", ".3g"), ("retrains", "certified_refits", ".1f"))),
)


def _requests_page(run: Path, title: str) -> list[str]:
  rows = _rows(run / "requests.csv")
  last = max(int(r["request"]) for r in rows)
  lines = [f"# {title}", "", stamp(run), "",
           f"After the last of {last} requests (the forget set is their union), mean ± std "
           "over seeds: retain, forget and test accuracy (%), the loss MIA, and the seconds "
           "spent on all requests.", "",
           "| method | RA | FA | TA | MIA | seconds, all requests |", "|---|---|---|---|---|---|"]
  by = defaultdict(list)
  for r in rows:
    if int(r["request"]) == last:
      by[r["method"]].append(r)
  for m, rs in by.items():
    lines.append(f"| {m} | {_percent(r['retain_acc'] for r in rs)} | "
                 f"{_percent(r['forget_acc'] for r in rs)} | "
                 f"{_percent(r['test_acc'] for r in rs)} | "
                 f"{_mean_std(r['mia_loss_lr'] for r in rs)} | "
                 f"{_mean_std(r['cumulative_seconds'] for r in rs)} |")
  for marker, intro, table in CERTIFICATE_TABLES:
    by_method = defaultdict(list)
    for r in rows:
      if r.get(marker):
        by_method[r["method"]].append(r)
    for m, rs in by_method.items():
      ks = sorted({int(r["request"]) for r in rs})
      mean = lambda k, c: sum(float(r[c]) for r in rs if int(r["request"]) == k) / len(
          [r for r in rs if int(r["request"]) == k])
      lines += ["", f"`{m}`'s certificate after each request (mean over seeds): {intro}", "",
                "| request | " + " | ".join(map(str, ks)) + " |", "|---|" + "---|" * len(ks)]
      for label, col, fmt in table:
        lines.append(f"| {label} | " + " | ".join(f"{mean(k, col):{fmt}}" for k in ks) + " |")
  for png in sorted((run / "plots").glob("*.png")) if (run / "plots").exists() else []:
    lines += ["", *figure(f"../../results/{run.name}/plots/{png.name}", png.stem)]
  return lines


def _tuning_page(run: Path, title: str) -> list[str]:
  tuned = json.loads((run / "tuned.json").read_text())
  table = json.loads((run / "tuning.json").read_text())["table"]
  lines = [f"# {title}", "", stamp(run), "",
           f"Selection rule `{tuned['rule']}`, {tuned['budget']} configurations per method "
           "(configuration 0 = the defaults). Every number is on the examples selection never "
           "saw, mean over seeds, accuracies in %; the chosen hyperparameters are "
           "`tuned.json`'s.", "",
           "| method | RA | FA | TA | MIA | → tuned RA | FA | TA | MIA | tuned hyperparameters |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  pct = lambda v: f"{100 * v:.1f}"
  for r in table:
    d = r["default"]
    cells = [r["method"], pct(d["retain_acc"]), pct(d["forget_acc"]), pct(d["test_acc"]),
             f"{d['mia_loss_lr']:.2f}"]
    if r["method"] in tuned["methods"]:
      t = r["tuned"]
      hp = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in sorted(tuned["methods"][r["method"]]["searched"].items()))
      cells += [pct(t["retain_acc"]), pct(t["forget_acc"]), pct(t["test_acc"]),
                f"{t['mia_loss_lr']:.2f}", hp or "the defaults"]
    else:
      cells += ["", "", "", "", ""]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


EVALUATION_COLUMNS = (("klom_average_95", "KLOM avg95 [95%]", "interval:{:.2f}"),
                      ("klom_forget_p95", "KLOM forget", "{:.2f}"),
                      ("klom_distinguishable_from_floor", "≠ floor", "verdict"),
                      ("klom_distinguishable_from_original", "≠ nothing", "verdict"),
                      ("ulira_accuracy", "U-LiRA", "{:.2f}"),
                      ("rmia_auc", "RMIA AUC", "{:.2f}"), ("iam_auc", "IAM AUC", "{:.2f}"),
                      ("audit_epsilon_lb", "audit ε ≥", "{:.2f}"),
                      ("probe_forget_acc", "probe FA", "pct"),
                      ("forgetting_quality", "F [95%]", "interval:{:.3f}"),
                      ("retain_acc", "RA", "pct"), ("forget_acc", "FA", "pct"),
                      ("test_acc", "TA", "pct"), ("seconds", "seconds", "{:.2f}"))


def _fmt(value: str, how: str, row: dict | None = None, column: str = "") -> str:
  """A cell: `pct` (%), `verdict` (yes/no), `interval:FMT` (the value and its
  `<column>_low`/`_high` from `row`), else a format."""
  if how == "verdict":
    return {"True": "yes", "False": "no"}.get(str(value), "–")
  if value in ("", None) or math.isnan(float(value)):
    return "–"
  if how.startswith("interval:"):
    fmt = how.partition(":")[2]
    low, high = ((row or {}).get(f"{column}_{end}", "") for end in ("low", "high"))
    cell = fmt.format(float(value))
    if low not in ("", None) and not math.isnan(float(low)):
      cell += f" [{fmt.format(float(low))}, {fmt.format(float(high))}]"
    return cell
  return f"{100 * float(value):.1f}" if how == "pct" else how.format(float(value))


def _evaluation_page(run: Path, title: str) -> list[str]:
  rows = _rows(run / "evaluation.csv")
  n = rows[0].get("num_models", "?") if rows else "?"
  lines = [f"# {title}", "", stamp(run), "",
           f"Populations of {n} models per method; every row scores half of its models "
           "against the same half of the retrained ones, and the `retrain` row (the other "
           "half of the retrained models) is the floor at that number of models. KLOM "
           "avg95: the mean of the p95 KLOM (nats, KL(unlearned ‖ oracle), the Easy Data "
           "Unlearning Bench's rule) over the forget, retain and test examples, with its 95% "
           "bootstrap interval over models (the floor in practice, 0 in principle); "
           "≠ floor / ≠ nothing: whether the interval of the row minus the floor / minus "
           "doing nothing (`original`) excludes 0; U-LiRA: the attack's accuracy (0.5 "
           "ideal); RMIA / IAM AUC: those attacks telling the row's models from retrained "
           "ones (0.5 ideal); audit ε ≥: an ε lower bound holding with 95% confidence "
           "(`uj.audit_epsilon`, 0 ideal); probe FA: a linear probe on the frozen features "
           "read on the forget set (%, compare with retrain); F: forgetting quality "
           "(NeurIPS 2023 scoring, 1 ideal) with its interval; RA, FA, TA: accuracies (%); "
           "seconds per model. – where the run predates a column.", "",
           "| method | " + " | ".join(c[1] for c in EVALUATION_COLUMNS) + " |",
           "|---|" + "---|" * len(EVALUATION_COLUMNS)]
  for r in rows:
    lines.append(f"| {r['method']} | " + " | ".join(_fmt(r.get(c), how, r, c)
                                                    for c, _, how in EVALUATION_COLUMNS) + " |")
  return lines + _matching_section(run, rows)


def _matching_section(run: Path, rows: list) -> list[str]:
  """For a run with the matching methods (`info.matching` in evaluation.json): what their
  targets cost, and the approximate methods ranked by forget-split KLOM."""
  import json
  saved = json.loads((run / "evaluation.json").read_text())
  info = saved.get("info", {})
  fitted = saved.get("config", {}).get("matching", {}).get("fit_multiplier", False)
  costs = info.get("matching") or {}
  if not costs:
    return []
  n = int(info.get("num_models", 0)) or 1
  lines = ["", "## The matching methods' targets and their cost", ""]
  if "oracles" in costs:
    o = costs["oracles"]
    lines.append(f"- oracle_matching's targets: the mean logits of {o['models']} oracles "
                 f"(models retrained without the forget set, seeds apart from the scored "
                 f"retrained ones), {o['seconds']:.0f} s to train"
                 + (" (reused from the population cache)" if o.get("reused") else "")
                 + f", {o['seconds'] / n:.2f} s per unlearned model of the population.")
  if "trak" in costs:
    t = costs["trak"]
    lines.append(f"- dmm's targets and the dm_direct row: TRAK scores of the forget set "
                 f"({t['models']} originals as the ensemble, projection {t['proj_dim']}), "
                 f"{t['seconds']:.0f} s ({t['seconds'] / n:.2f} s per model: dm_direct's "
                 f"`seconds`), multiplier {t['multiplier']:.4g}"
                 + (" (fitted to the oracles' mean: DMM here is not oracle-free)" if fitted
                    else "") + ".")
  lines.append("- The table's `seconds` of oracle_matching and dmm are the fine-tuning "
               "alone; their targets' cost is above, paid once for the population.")
  approximate = [r for r in rows if r["method"] not in ("original", "retrain")]
  ranked = sorted(approximate, key=lambda r: float(r["klom_forget_p95"]))
  floor = next((r for r in rows if r["method"] == "retrain"), None)
  lines += ["", "Forget-split KLOM (p95, nats; lower is nearer retraining), the approximate "
            "methods in order" + (f"; the floor (retrain) is "
                                  f"{float(floor['klom_forget_p95']):.2f}" if floor else "")
            + ": " + ", ".join(f"{r['method']} {float(r['klom_forget_p95']):.2f}"
                               for r in ranked) + "."]
  return lines


GUARANTEES = {   # what a method's output is promised to be, for the comparison page
    "retrain": "the reference: trained without the deleted examples",
    "sisa": "exact: the shards that saw a deleted example are retrained without it",
    "certified_head": "(ε, δ) = ({epsilon:g}, {delta:g}) for the head on frozen features "
                      "(Guo et al.)",
    "noisy_finetune": "(ε, δ) = ({epsilon:g}, {delta:g}) for the head on frozen features "
                      "(Chien et al., converged case)",
}
COMPARISON_RUNS = (("digits_certified", None), ("cifar10_memorise_certified",
                                                "cifar10_population_certified"))


def _comparison_page() -> list[str] | None:
  """Exact, certified and approximate methods side by side: the last request's accuracy
  and the seconds per request from the request runs, KLOM and U-LiRA from the population
  run beside them (None if no request run is committed)."""
  runs = [(DOCS / "results" / a, b and DOCS / "results" / b) for a, b in COMPARISON_RUNS]
  runs = [(a, b) for a, b in runs if (a / "requests.csv").exists()]
  if not runs:
    return None
  methods, _ = _registry()
  lines = ["# Exact, certified, approximate: the comparison", "",
           "Per data set: the accuracies after the last deletion request (mean ± std over "
           "seeds, %), the seconds per request (all requests / their number, the seeds "
           "together, the first request's compilation included), what the "
           "method guarantees, and, where a population run sits beside it, the evidence an "
           "attack gives (KLOM avg95, 0 ideal; U-LiRA accuracy, 0.5 ideal) for one 10% "
           "deletion. Each source run's page has its command and stamp."]
  for run, population in runs:
    rows = _rows(run / "requests.csv")
    last = max(int(r["request"]) for r in rows)
    evidence = ({r["method"]: r for r in _rows(population / "evaluation.csv")}
                if population is not None and (population / "evaluation.csv").exists()
                else {})
    title = (run / "title.txt").read_text().strip()
    sources = f"[{run.name}]({run.name}.md)" + (
        f"; KLOM and U-LiRA from [{population.name}]({population.name}.md), whose "
        "population has its own model and one 10% deletion" if evidence else "")
    lines += ["", f"## {title}", "", f"From {sources}.", "",
              "| method | guarantee | RA | FA | TA | seconds per request"
              + (" | KLOM avg95 | U-LiRA |" if evidence else " |"),
              "|---|---|---|---|---|---|" + ("---|---|" if evidence else "")]
    by = defaultdict(list)
    for r in rows:
      if int(r["request"]) == last:
        by[r["method"]].append(r)
    for m, rs in by.items():
      rule = GUARANTEES.get(m, "none: an approximate method, judged by attacks")
      if "{" in rule:
        rule = rule.format(**methods.get_method(m).defaults)
      cells = [m, rule, _percent(r["retain_acc"] for r in rs),
               _percent(r["forget_acc"] for r in rs), _percent(r["test_acc"] for r in rs),
               # One number: the seeds of a request run as one program, so they share it.
               f"{sum(float(r['cumulative_seconds']) for r in rs) / len(rs) / last:.2f}"]
      if evidence:
        e = evidence.get(m, {})
        cells += [_fmt(e.get("klom_average_95"), "{:.2f}"), _fmt(e.get("ulira_accuracy"),
                                                                 "{:.2f}")]
      lines.append("| " + " | ".join(cells) + " |")
  return lines


def figure(path: str, alt: str) -> list[str]:
  """A figure drawn at the column's width that opens at full size when clicked (Sphinx
  links a scaled image to its file)."""
  return [f"```{{image}} {path}", f":alt: {alt}", ":width: 100%", "```", ""]


def write_results(out: Path) -> list[str]:
  """A page per run under docs/results/ (a `title.txt` names it); returns the page names."""
  (out / "results").mkdir(parents=True, exist_ok=True)
  pages = []
  for run in sorted(p for p in (DOCS / "results").iterdir()
                    if p.is_dir() and not p.name.startswith(".")):   # not a run in progress
    title = (run / "title.txt").read_text().strip()
    if (run / "README.md").exists():       # rendered by its own script (populations)
      text = (run / "README.md").read_text()
      text = re.sub(r"!\[([^\]]*)\]\((?!http)([^)]+\.png)\)",
                    lambda m: "\n".join(figure(f"../../results/{run.name}/{m.group(2)}",
                                               m.group(1))), text)
      lines = [text]
    elif (run / "results.csv").exists():
      lines = _unlearn_page(run, title)
    elif (run / "requests.csv").exists():
      lines = _requests_page(run, title)
    elif (run / "tuned.json").exists():
      lines = _tuning_page(run, title)
    elif (run / "evaluation.csv").exists():
      lines = _evaluation_page(run, title)
    else:
      raise ValueError(f"docs/results/{run.name}: no results.csv, requests.csv, tuned.json, "
                       "evaluation.csv or README.md to render")
    (out / "results" / f"{run.name}.md").write_text("\n".join(lines) + "\n")
    pages.append(run.name)
  comparison = _comparison_page()
  if comparison is not None:
    (out / "results" / "comparison.md").write_text("\n".join(comparison) + "\n")
    pages.insert(0, "comparison")
  return pages


def readme_method_list() -> str:
  _, specs = _registry()
  return "\n".join(f"- {method_line(s)}" for s in specs)


def write_readme() -> bool:
  """Rewrites the README's method list between its markers; True if it changed."""
  path = ROOT / "README.md"
  text = path.read_text()
  a, b = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
  new = text[:a] + "\n" + readme_method_list() + "\n" + text[b:]
  path.write_text(new)
  return new != text


def generate() -> None:
  if OUT.exists():
    shutil.rmtree(OUT)
  OUT.mkdir()
  write_methods(OUT)
  write_metrics(OUT)
  pages = write_results(OUT)
  index = ["# Results", "",
           "Every table here is computed from a run directory committed under "
           "`docs/results/` and stamped with the command, commit, date, JAX version and "
           "hardware of that run.", "", "```{toctree}", ":maxdepth: 1", "", *pages, "```", ""]
  (OUT / "results" / "index.md").write_text("\n".join(index))


def setup(app):
  app.connect("builder-inited", lambda app: generate())
  return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
  generate()
  print("README method list", "rewritten" if write_readme() else "unchanged")
