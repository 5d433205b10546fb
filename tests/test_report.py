"""The memorisation signal every summary.md and report.md states."""

from experiments.reports import population as evaluation
from experiments.reports import run as report


def _rows(original_fa, retrain_fa):
  return [{"method": m, "seed": s, "retain_acc": 1.0, "forget_acc": fa[s], "test_acc": 0.9,
           "mia_loss_lr": 0.5, "seconds": 1.0}
          for s in range(3) for m, fa in (("original", original_fa), ("retrain", retrain_fa))]


def test_a_small_signal_warns_and_a_large_one_does_not():
  small = report.memorisation_signal(_rows([1.0, 1.0, 1.0], [0.98, 0.99, 0.99]))
  assert abs(small["points"][0] - 100 * (0.02 + 0.01 + 0.01) / 3) < 1e-9
  assert not small["discriminates"]
  assert "Warning: too small to rank methods" in report.signal_markdown(small)
  large = report.memorisation_signal(_rows([1.0, 1.0, 1.0], [0.55, 0.52, 0.50]))
  assert large["discriminates"] and large["original_fa"] == 100.0
  text = report.signal_markdown(large)
  assert "= 47.7 ± 2.5 points" in text and "Warning" not in text
  # Large but noisier than a third of itself: no ranking either.
  noisy = report.memorisation_signal(_rows([1.0, 1.0, 1.0], [0.99, 0.50, 0.99]))
  assert not noisy["discriminates"]
  assert report.memorisation_signal(_rows([1.0] * 3, [0.5] * 3)[::2]) is None   # no retrain


def test_population_signal_compares_the_original_with_the_retrain_floor():
  rows = [{"method": "original", "forgetting_quality": 0.107, "forget_acc": 1.0},
          {"method": "retrain", "forgetting_quality": 0.150, "forget_acc": 0.987}]
  weak = evaluation.population_signal(rows)
  assert not weak["discriminates"]
  assert "F = 0.107 against the retrain floor F = 0.150" in evaluation.signal_markdown(weak)
  rows[0].update(forgetting_quality=0.01, forget_acc=1.0)
  rows[1].update(forget_acc=0.55)
  assert evaluation.population_signal(rows)["discriminates"]


def _many_methods(n=30):
  """Rows of `n` methods (long names) over 3 seeds: seconds equal across seeds, as when
  the seeds run together as one program."""
  import numpy as np
  rng = np.random.default_rng(0)
  names = ["original", "retrain"] + [f"a_long_method_name_{i}" for i in range(n - 2)]
  return [{"method": m, "seed": s, "retain_acc": rng.uniform(), "forget_acc": rng.uniform(),
           "test_acc": rng.uniform(), "mia_loss_lr": rng.uniform(), "seconds": 2.0 + i,
           "peak_memory_mib": 3.0, "layer_distance": rng.uniform()}
          for i, m in enumerate(names) for s in range(3)]


def test_the_terminal_table_fits_a_terminal_and_shared_timings_have_no_error_bar():
  summary = report.summarize(_many_methods())
  full = report.summary_markdown(summary, 3, "t")
  short = report.summary_markdown(summary, 3, "t", terminal=True)
  rows = [line for line in short.splitlines() if line.startswith("|")]
  assert max(len(line) for line in rows) <= 100, max(rows, key=len)
  assert "seconds" not in rows[0] and "Every column: summary.md" in short
  assert "| 2.00 |" in full and "2.00 ± 0.00" not in full, "a shared timing shows ± 0.00"
  assert "measured once for seeds run together" in full


def test_the_metrics_figure_is_legible_at_its_saved_size(tmp_path):
  """30 methods: one panel per metric, methods down the side, a readable size (not a
  strip 3,000 pixels wide)."""
  from PIL import Image
  summary = report.summarize(_many_methods())
  report.plot_metric_bars(tmp_path / "m.png", summary)
  width, height = Image.open(tmp_path / "m.png").size
  assert width <= 1300 and height >= 30 * 25, (width, height)


def _ranked_rows(gaps: dict, retrain_fa=(0.5, 0.5, 0.5)):
  """Rows whose per-seed gap to retrain is exactly `gaps[method][seed]` points (the gap is
  put on FA alone, so the mean over RA, FA, TA and MIA is a quarter of the FA difference)."""
  rows = []
  for s in range(3):
    rows.append({"method": "retrain", "seed": s, "retain_acc": 1.0, "forget_acc": retrain_fa[s],
                 "test_acc": 0.9, "mia_loss_lr": 0.5, "seconds": 1.0})
    for m, g in gaps.items():
      rows.append({"method": m, "seed": s, "retain_acc": 1.0,
                   "forget_acc": retrain_fa[s] + 4 * g[s] / 100, "test_acc": 0.9,
                   "mia_loss_lr": 0.5, "seconds": 1.0})
  return rows


def test_the_ranking_has_intervals_ties_and_doing_nothing():
  """Gaps with known per-seed values: each interval is mean ± t(0.975, 2)·s/√3 (t from a
  table: 4.302653), overlapping intervals share a rank, `original` is ranked."""
  import math
  gaps = {"original": [40.0, 42.0, 44.0], "a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 3.5],
          "c": [10.0, 10.5, 11.0]}
  rows = _ranked_rows(gaps)
  signal = report.memorisation_signal(rows)
  ranked = report.ranking(rows, signal)
  by = {d["method"]: d for d in ranked["rows"]}
  for m, g in gaps.items():
    mean = sum(g) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in g) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert abs(by[m]["gap"] - mean) < 1e-9 and abs(by[m]["high"] - (mean + half)) < 1e-4
  assert (by["a"]["rank"], by["b"]["rank"], by["c"]["rank"], by["original"]["rank"]) == (
      1, 1, 3, 4)
  text = report.ranking_markdown(ranked)
  assert "1. a 2.0 [" in text and "4. original 42.0" in text


def test_no_ranking_when_the_signal_interval_includes_zero():
  rows = _ranked_rows({"original": [0.5, -0.5, 1.0], "a": [1.0, 2.0, 3.0]})
  signal = report.memorisation_signal(rows)
  assert signal["interval"][0] < 0 < signal["interval"][1]
  ranked = report.ranking(rows, signal)
  assert ranked["rows"] == [] and ranked["reason"].startswith(
      "No ranking: the memorisation signal's 95% interval")
  assert report.ranking_markdown(ranked).strip() == ranked["reason"]


def _population_row(method, klom, low, high, apart=None, score=0.5):
  return {"method": method, "klom_average_95": klom, "klom_average_95_low": low,
          "klom_average_95_high": high, "competition_score": score,
          "competition_score_low": score - 0.01, "competition_score_high": score + 0.01,
          "klom_distinguishable_from_floor": apart, "forgetting_quality": 0.01,
          "forget_acc": 1.0}


def test_population_rankings_share_ranks_where_intervals_overlap_and_keep_every_row():
  rows = [_population_row("original", 9.0, 8.5, 9.5, apart=True, score=0.01),
          _population_row("retrain", 3.0, 2.5, 3.5, score=0.2),
          _population_row("a", 5.0, 4.0, 6.0, apart=True, score=0.1),
          _population_row("b", 5.5, 4.5, 6.5, apart=True, score=0.1),
          _population_row("c", 8.8, 8.0, 9.6, apart=True, score=0.02)]
  rows[1].update(forget_acc=0.4, forgetting_quality=0.2)
  ranked = evaluation.ranked_with_ties(rows, "klom_average_95", lower_is_better=True)
  assert [(rank, r["method"]) for rank, r in ranked] == [
      (1, "retrain"), (2, "a"), (2, "b"), (4, "c"), (4, "original")]
  text = "\n".join(evaluation.ranking_markdown(rows, {"num_models": 64, "models_per_side": 32}))
  assert "1. retrain 3.00 [2.50, 3.50], 2. a 5.00 [4.00, 6.00], 2. b" in text
  assert "Ranked by competition score" in text and "original" in text


def test_no_population_ranking_when_klom_cannot_tell_doing_nothing_from_the_floor():
  rows = [_population_row("original", 3.4, 2.9, 3.9, apart=False),
          _population_row("retrain", 3.0, 2.5, 3.5), _population_row("a", 5.0, 4.0, 6.0)]
  rows[1].update(forget_acc=0.4, forgetting_quality=0.2)
  text = "\n".join(evaluation.ranking_markdown(rows, {"num_models": 32, "models_per_side": 16}))
  assert "**No ranking:** at 16 models per side KLOM does not tell doing nothing" in text
  assert "Ranked by" not in text
