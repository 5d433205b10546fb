"""Records the authors' TRAK (`traker` 0.3.2, MadryLab/trak) on a small fixed problem:
`tests/test_attribution.py` compares `unlearn_jax.attribution.trak_scores` with it.

    pip install torch traker==0.3.2 && python tests/data/make_traker_reference.py

The problem: three 3-class linear models (checkpoints: gradient descent with an L2
penalty on three random 80% subsets of 150 Gaussian-blob examples, 8 features), 50 targets,
projection dimension = the parameter count (27), damping (traker's `lambda_reg`) 1e-2, a
Rademacher `BasicProjector`, float32. Writes `traker_reference.npz` beside this file: the
data, the checkpoints and traker's scores [150, 50]."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def problem() -> dict:
  rng = np.random.default_rng(0)
  n, d, classes, n_targets, models = 150, 8, 3, 50, 3
  means = rng.normal(size=(classes, d))
  y = rng.integers(0, classes, n).astype(np.int64)
  x = (means[y] + rng.normal(size=(n, d))).astype(np.float32)
  yt = rng.integers(0, classes, n_targets).astype(np.int64)
  xt = (means[yt] + rng.normal(size=(n_targets, d))).astype(np.float32)
  kernels, biases = [], []
  for _ in range(models):           # full-batch gradient descent in NumPy, L2 penalty 0.05
    keep = rng.random(n) < 0.8
    w = rng.normal(size=(d, classes)) * 0.1
    b = np.zeros(classes)
    for _ in range(300):
      z = x[keep] @ w + b
      p = np.exp(z - z.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      err = (p - np.eye(classes)[y[keep]]) / keep.sum()
      w -= 0.5 * (x[keep].T @ err + 0.1 * w)
      b -= 0.5 * (err.sum(0) + 0.1 * b)
    kernels.append(w.astype(np.float32))
    biases.append(b.astype(np.float32))
  return {"x": x, "y": y, "xt": xt, "yt": yt, "kernels": np.stack(kernels),
          "biases": np.stack(biases), "proj_dim": d * classes + classes, "damping": 1e-2}


def traker_scores(ref, save_dir) -> np.ndarray:
  """traker's TRAK scores [train, targets] for `ref` (a `problem()` dict or the npz)."""
  import torch
  from trak import TRAKer
  from trak.projectors import BasicProjector, ProjectionType
  d, classes = ref["kernels"].shape[1:]
  n, k = len(ref["y"]), int(ref["proj_dim"])
  model = torch.nn.Linear(d, classes)
  tracker = TRAKer(model, "image_classification", n, save_dir=str(save_dir), device="cpu",
                   use_half_precision=False, proj_dim=k, lambda_reg=float(ref["damping"]),
                   projector=BasicProjector(d * classes + classes, k, 0,
                                            ProjectionType.rademacher, "cpu"),
                   logging_level=logging.ERROR)
  state = lambda m: {"weight": torch.tensor(ref["kernels"][m].T.copy()),
                     "bias": torch.tensor(ref["biases"][m])}
  models = range(len(ref["kernels"]))
  for m in models:
    tracker.load_checkpoint(state(m), model_id=m)
    tracker.featurize((torch.tensor(ref["x"]), torch.tensor(ref["y"])), num_samples=n)
  tracker.finalize_features()
  # traker frees the projection matrix in finalize_features and, when the model id does
  # not change (one checkpoint), never draws it again: draw it back.
  tracker.projector.generate_sketch_matrix(tracker.projector.generator_states[0])
  for m in models:
    tracker.start_scoring_checkpoint("targets", state(m), model_id=m,
                                     num_targets=len(ref["yt"]))
    tracker.score((torch.tensor(ref["xt"]), torch.tensor(ref["yt"])),
                  num_samples=len(ref["yt"]))
  return np.asarray(tracker.finalize_scores("targets"), np.float32)


def main() -> None:
  ref = problem()
  with tempfile.TemporaryDirectory() as tmp:
    ref["scores"] = traker_scores(ref, tmp)
  np.savez_compressed(HERE / "traker_reference.npz", **ref)
  print(f"wrote {HERE / 'traker_reference.npz'}: scores {ref['scores'].shape}")


if __name__ == "__main__":
  main()
