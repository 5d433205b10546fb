#!/usr/bin/env bash
# The run directories the documentation's results pages are computed from, and the
# commands that made them (each run's provenance.json records its own command, commit,
# date, versions and hardware). Run from the repository root on an idle machine, then
# `python docs/_ext/generate.py` (or build the docs) to render the pages. Only small files
# are kept: the tables' CSV/JSON, the summary, the stamp and the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/results

keep_small() {   # drop checkpoints and per-example arrays from a finished run directory
  rm -rf "$1/checkpoints" "$1"/*.npz "$1"/plots/losses_*.png
}

run() {   # run NAME TITLE MODULE FLAGS...
  local name="$1" title="$2" module="$3"; shift 3
  rm -rf "${out:?}/$name"
  python -m "$module" "$@" --workdir="$out/$name"
  keep_small "$out/$name"
  echo "$title" > "$out/$name/title.txt"
}

what="${1:-digits}"
if [ "$what" = digits ] || [ "$what" = all ]; then
  run mnist1d_random "MNIST-1D, 10% random forgetting, every method (the default job)" \
    experiments.unlearn --config.save_checkpoints=False
  run digits_random "Digits, 10% random forgetting, every method" \
    experiments.unlearn --config=digits --config.save_checkpoints=False
  run digits_class "Digits, class 3 forgotten, every method" \
    experiments.unlearn --config=digits --config.scenario=class --config.forget_classes=3 \
    --config.save_checkpoints=False
  run digits_requests "Digits, 10 deletion requests of 1%: SISA, fine-tuning, SCRUB, retraining" \
    experiments.requests --config=digits --methods=sisa,finetune,scrub --seeds=3
  run digits_certified "Digits, 10 deletion requests of 1%: exact (SISA), certified (certified_head, noisy_finetune), approximate (finetune, SCRUB)" \
    experiments.requests --config=digits --methods=sisa,certified_head,noisy_finetune,finetune,scrub \
    --seeds=3
  run digits_tuning "Digits, class 3: a 16-configuration search of every data method" \
    experiments.tune --config=digits --config.scenario=class --config.forget_classes=3 --config.tune.budget=16 --seeds=2
fi
if [ "$what" = cifar ] || [ "$what" = all ]; then
  # CIFAR-10 as you have it: CIFAR10=cifar10:cifar-10-python.tar.gz (the official python
  # archive) or image_folder:PATH (a JPEG folder or its .tar.gz).
  : "${CIFAR10:?set CIFAR10=cifar10:PATH or image_folder:PATH (the CIFAR-10 data to use)}"
  run cifar10_memorise_random "Memorising CIFAR-10 subset, 10% random forgetting, every data method" \
    experiments.unlearn --config=experiments/configs/cifar10_memorise.py --config.dataset="$CIFAR10" \
    --config.save_checkpoints=False
  run cifar10_memorise_certified "Memorising CIFAR-10 subset, 3 deletion requests of 1%: exact (SISA), certified (certified_head, noisy_finetune), approximate (finetune, SCRUB)" \
    experiments.requests --config=experiments/configs/cifar10_memorise.py --config.dataset="$CIFAR10" \
    --methods=sisa,certified_head,noisy_finetune,finetune,scrub --config.requests.count=3 --seeds=2
  run cifar10_population_certified "Populations on the memorising CIFAR-10 subset: KLOM and U-LiRA of the certified methods beside fine-tuning and SCRUB" \
    experiments.evaluate --config=experiments/configs/cifar10_population.py --config.dataset="$CIFAR10" \
    --config.evaluate.num_models=64 \
    --methods=certified_head,noisy_finetune,finetune,scrub
  # The matching methods at the memorising table's settings (tests/expected/method_criteria.csv:
  # 30 epochs, lr 3e-3, batch 64), DM-Direct's multiplier fitted to the 10 oracles.
  run cifar10_population_matching "Populations on the memorising CIFAR-10 subset: Oracle Matching, DM-Direct and DMM beside every data method (KLOM and costs)" \
    experiments.evaluate --config=experiments/configs/cifar10_population.py --config.dataset="$CIFAR10" \
    --config.evaluate.num_models=64 \
    --config.methods.oracle_matching.epochs=30 --config.methods.oracle_matching.lr=0.003 \
    --config.methods.oracle_matching.batch_size=64 --config.methods.dmm.epochs=30 \
    --config.methods.dmm.lr=0.003 --config.methods.dmm.batch_size=64 \
    --config.matching.fit_multiplier=True
fi
