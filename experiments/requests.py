r"""Deletion requests over time: K requests applied in order by each method, SISA and
retraining, every metric re-measured after every request.

    python -m experiments.requests --config=digits                   # 10 requests of 1%
    python -m experiments.requests --config.requests.count=5 --config.requests.kind=class \
        --config.forget_classes=3
    python -m experiments.requests --methods=sisa,finetune --config.requests.sisa_shards=8 --seeds=3

Requests: `--config.requests.kind=random` draws K disjoint sets of `--config.requests.size` examples
(a fraction of train when < 1, a count otherwise); `class` splits the `--config.forget_classes`
examples into K near-equal requests. After request k the forget set is the union of
requests 1..k (cumulative) and the retain set everything else.

* `retrain`: a model trained from scratch on the retain set after every request (the
  reference curve);
* an approximate method: applied to the previous request's model with D_f = request k and
  D_r = the current retain set (so errors compound, as in deployment);
* `sisa`: `unlearn_jax.sisa` (`requests.sisa_shards` × `requests.sisa_slices`), trained once, each
  request deleted exactly; predictions by the shard models' mean logits.

After every request: RA (current retain set), FA (cumulative forget set), TA, the loss MIA
(cumulative forget set vs test) and the seconds so far. Writes requests.csv (method, seed,
request, metrics, seconds, cumulative seconds), requests.md (per-request means and the
final and worst gaps to retrain per method) and plots/requests_<metric>.png (each metric
against the request index, retrain's curve as reference). Every other flag is
experiments.unlearn's (dataset, model, seeds, recipe, `--config.methods.<method>.<hparam>`).
"""


from absl import flags

from . import cli   # the shared flags, their parsing, the one main
from .pipeline import rundir, settings, usage
from .pipeline.requests import REQUEST_KINDS, run
from .reports.requests import write_requests
from unlearn_jax import methods as methods_lib, sisa


def job(cfg) -> str:
  R = cfg.requests
  names = [m.strip() for m in R.methods.split(",") if m.strip()]
  if not names:
    raise usage.UsageError("--methods (the field requests.methods) is empty")
  known = set(methods_lib.list_methods()) | {"sisa", "retrain"}
  bad = [m for m in names if m not in known]
  if bad:
    raise usage.UsageError(f"--methods: {bad[0]!r} is unknown; allowed: sisa, retrain, "
                           f"{', '.join(methods_lib.list_methods())}")
  if "retrain" not in names:
    names.append("retrain")
  if R.kind not in REQUEST_KINDS:
    raise usage.UsageError(f"--config.requests.kind={R.kind!r} is unknown; allowed: "
                           f"{', '.join(REQUEST_KINDS)}")
  hparams = cli.method_hparams(cfg)
  runs = [m for m in names if m not in ("sisa", "retrain")] or ["finetune"]
  cfg.methods = {m: hparams.get(m, dict(methods_lib.get_method(m).defaults)) for m in runs}
  cfg.scenario = "class" if R.kind == "class" else "random"
  if cfg.scenario == "random":
    cfg.forget_classes = ""
  for name in ("sisa_shards", "sisa_slices"):
    if R[name] < 1:
      raise usage.UsageError(f"--config.requests.{name}={R[name]} must be >= 1")
  if R.sisa_epochs_per_slice is not None and R.sisa_epochs_per_slice < 1:
    raise usage.UsageError(f"--config.requests.sisa_epochs_per_slice={R.sisa_epochs_per_slice}"
                           " must be >= 1 (or None: the recipe's epochs / slices)")
  sisa_config = sisa.SisaConfig(shards=R.sisa_shards, slices=R.sisa_slices,
                                epochs_per_slice=R.sisa_epochs_per_slice or 0)
  settings.validate(cfg)
  with rundir.staged_workdir(cli.workdir(cfg, "requests_"), flags.FLAGS.overwrite) as (final,
                                                                                     staging):
    result = run(cfg, cli.method_hparams(cfg), names, num_requests=R.count,
                 request_size=R.size, kind=R.kind, sisa_config=sisa_config,
                 log=lambda s: print(s, flush=True))
    title = (f"Deletion requests: {cfg.dataset} · {result['info']['model']} · "
             f"{R.count} {R.kind} requests")
    md = "" if staging is None else write_requests(staging, result, cfg.to_dict(), title,
                                                     cfg.plots)
  return f"\n{md}\nrun directory: {final}"


if __name__ == "__main__":
  cli.run(job, fields=("requests.count", "requests.size", "requests.kind",
                       "requests.sisa_shards", "requests.sisa_slices"),
          methods_field="requests.methods")
