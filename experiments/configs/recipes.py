"""The training recipes the shipped configs start from, one per model family: every field
of `unlearn_jax.train.TrainConfig`, as a ConfigDict a config file assigns to `c.train`
and then adjusts (`--config.train.<field>=` overrides any of them).

`small` is an input of at most 8×8 (digits, MNIST-1D's 40 values), `color` three channels.
"""

import dataclasses

import ml_collections

from unlearn_jax.train import TrainConfig


def as_config(**fields) -> ml_collections.ConfigDict:
  """Every TrainConfig field: `fields` over the dataclass's own values."""
  return ml_collections.ConfigDict(dataclasses.asdict(TrainConfig(**fields)))


def mlp(epochs: int = 30) -> ml_collections.ConfigDict:
  """SGD Nesterov 0.9, one-cycle lr 0.05, batch 64, wd 5e-4 (60 epochs on MNIST-1D's
  1,000 examples memorise them; 30 on digits)."""
  return as_config(epochs=epochs, batch_size=64, lr=0.05)


def cnn(small: bool = False, color: bool = True) -> ml_collections.ConfigDict:
  """Batch 64, 15 epochs at lr 0.05 on 8×8 inputs; else batch 128, 10 epochs at lr 0.1,
  wd 5e-4, crop + flip on colour images."""
  if small:
    return as_config(epochs=15, batch_size=64, lr=0.05)
  return as_config(epochs=10, batch_size=128, lr=0.1, weight_decay=5e-4, augment=color)


def vit(small: bool = False, color: bool = True) -> ml_collections.ConfigDict:
  """AdamW (decoupled weight decay 0.05) at lr 1e-3, one-cycle: the usual small-ViT recipe
  (SGD at the CNN's lr does not train a transformer from scratch)."""
  return as_config(epochs=30 if small else 40, batch_size=64 if small else 128, lr=1e-3,
                   weight_decay=0.05, optimizer="adam", augment=(not small) and color)


def resnet9(small: bool = False) -> ml_collections.ConfigDict:
  """The Easy Data Unlearning Bench's (`train_models.py`): SGD with plain momentum 0.9,
  weight decay 5e-4, batch 256, 24 epochs, a linear one-cycle peaking at lr 0.4 after 5
  epochs, no augmentation."""
  return as_config(epochs=15 if small else 24, batch_size=64 if small else 256, lr=0.4,
                   momentum=0.9, nesterov=False, weight_decay=5e-4,
                   schedule="linear_onecycle", peak_fraction=5 / 24)


def airbench94(color: bool = True) -> ml_collections.ConfigDict:
  """Airbench's (KellerJordan/cifar10-airbench `airbench94.py`), in mean-loss units: its lr
  11.5 per 1,024 examples on a summed loss with Nesterov momentum 0.85 is lr 1.5 on the
  mean at batch 1,024, its decoupled weight decay 0.0153 is 0.0153 / (1 + 1 / 0.15) / 1.5
  coupled; BatchNorm biases at lr × 64; label smoothing 0.2; a triangle from 0.2·lr to lr
  at 23% of the steps to 0.07·lr; the lookahead EMA every 5 steps from epoch 3;
  translation by 2 with alternating flips. 10 epochs (airbench: 9.9, last batches
  dropped)."""
  return as_config(
      epochs=10, batch_size=1024, lr=1.5, momentum=0.85, nesterov=True,
      weight_decay=0.0153 / (1 + 1 / 0.15) / 1.5, schedule="linear_onecycle",
      peak_fraction=0.23, start_factor=0.2, end_factor=0.07, augment=color,
      augmentation="translate_alternating_flip", label_smoothing=0.2, bias_lr_scale=64.0,
      lookahead_every=5, lookahead_start_epoch=3, lookahead_decay=0.95,
      lookahead_decay_pow=3.0)


def resnet18(small: bool = False, color: bool = True) -> ml_collections.ConfigDict:
  """SGD momentum 0.9, cosine, lr 0.1, wd 5e-4, batch 128, crop + flip: the GPU recipe."""
  return as_config(epochs=15 if small else 40, batch_size=128, lr=0.1, weight_decay=5e-4,
                   schedule="cosine", augment=(not small) and color)


def train_config(recipe) -> TrainConfig:
  """The TrainConfig of a recipe (a ConfigDict or dict of its fields)."""
  fields = recipe.to_dict() if hasattr(recipe, "to_dict") else dict(recipe)
  return TrainConfig(**fields)


def for_model(model: str, image_size: int, channels: int) -> ml_collections.ConfigDict:
  """The recipe of `model`'s family (a name or `name:widths`) for inputs of that size and
  channel count: what the benchmark scripts train each model with."""
  small, color = image_size <= 8, channels == 3
  base = model.partition(":")[0]
  families = {"mlp": lambda: mlp(), "cnn": lambda: cnn(small, color),
              "vit": lambda: vit(small, color), "resnet9": lambda: resnet9(small),
              "airbench94": lambda: airbench94(color), "resnet18": lambda: resnet18(small, color)}
  if base not in families:
    raise ValueError(f"model={model!r}: no recipe; allowed: {', '.join(families)}")
  return families[base]()


def train_config_for(model: str, ds) -> TrainConfig:
  """`for_model`'s recipe for the dataset `ds` (its image size and channels), as a
  TrainConfig."""
  return train_config(for_model(model, ds.image_size, ds.input_shape[-1]))
