"""CIFAR-10 with the small Vision Transformer: a CPU-sized and a GPU-sized recipe.

    python -m experiments.unlearn --config=experiments/configs/cifar10_vit.py          # CPU
    python -m experiments.unlearn --config=experiments/configs/cifar10_vit.py:gpu \
        --config.dataset=cifar10:/path/to/cifar-10-python.tar.gz                             # GPU

`cpu` (the default) is the memorising benchmark of `cifar10_memorise.py` with the CNN
swapped for `vit:64-2-4` (width 64, 2 pre-LayerNorm blocks, 4 heads, patch 4: 64 tokens +
the class token): 2,500 stratified training images, 2,000 test images (1,000 val /
1,000 test), no augmentation, AdamW (lr 1e-3, decoupled weight decay 0.05, one-cycle),
batch 64, 30 epochs. A transformer trained from scratch on 250 images per class
memorises them, so forgetting is measurable (retrain's forget accuracy ≈ its test
accuracy); the documentation's results pages give measured runs.

`gpu` is a DeiT-Tiny-like ViT for all 50,000 images: `vit:192-6-3` (width 192, 6 blocks,
3 heads, patch 4), crop + flip, AdamW lr 1e-3 with weight decay 0.05, cosine
schedule, batch 256, 200 epochs, 3 seeds vmapped in one program with the batch split over
every visible device; checkpoints every 5 epochs (rerun to resume).

No BatchNorm anywhere: every method runs on it through the model's own adapter
(`ViT.unlearn_adapter`: `train` keyword, optional `dropout` stream, head `head`).
"""

from unlearn_jax_experiments.configs import cifar10_memorise, cifar10_resnet18

RECIPES = ("cpu", "gpu")


def get_config(recipe: str = "cpu"):
  recipe = (recipe or "cpu").lower()
  if recipe not in RECIPES:
    raise ValueError(f"--config=...cifar10_vit.py:{recipe}: unknown recipe; allowed: "
                     f"{', '.join(RECIPES)}")
  if recipe == "cpu":
    c = cifar10_memorise.get_config()
    c.model = "vit:64-2-4"
    c.train.optimizer = "adam"
    c.train.lr = 1e-3
    c.train.weight_decay = 0.05
    return c
  # The GPU recipe is ResNet-18's (full CIFAR-10, crop + flip, cosine, batch 256, seeds
  # vmapped, checkpoints every 5 epochs) with a transformer's model and optimizer.
  c = cifar10_resnet18.get_config()
  c.model = "vit:192-6-3"
  c.train.epochs = 200
  c.train.lr = 1e-3
  c.train.optimizer = "adam"
  c.train.weight_decay = 0.05
  return c
