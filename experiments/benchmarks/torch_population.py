"""PyTorch counterparts of the library's MLP, CNN and ResNet-9, for benchmarks only.

`experiments.benchmarks.population_benchmark` trains populations with these beside ours. One class
per model takes `members=M`: M independent models as one network, the Easy Data
Unlearning Bench's way (`easydub/train_models.py`): every convolution is grouped
(`groups=M`, channels M·C), every BatchNorm normalises its M·C channels (per model, per
channel, as M separate BatchNorms would), every dense layer is a batched matrix product
over (M, out, in) weights. `members=1` is the plain single model (groups=1), so "one model
at a time" and "stacked" run the same code.

Inputs are (B, M·C, H, W): member m's batch in channels [m·C, (m+1)·C). Logits come back
(B, M, classes). Each member draws its own batch order and augmentation (`train_members`).

PyTorch is not a dependency of unlearn_jax: this module imports it, and only the benchmark
imports this module (after checking that torch is installed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class StackedLinear(nn.Module):
  """M dense layers: (M, B, in) -> (M, B, out); PyTorch's `nn.Linear` initialisation."""

  def __init__(self, members: int, d_in: int, d_out: int, bias: bool = True):
    super().__init__()
    bound = 1 / math.sqrt(d_in)
    self.weight = nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound))
    self.bias = nn.Parameter(torch.empty(members, 1, d_out).uniform_(-bound, bound)) \
        if bias else None

  def forward(self, h):
    out = torch.bmm(h, self.weight)
    return out + self.bias if self.bias is not None else out


def conv_bn(members: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
            padding: int = 1) -> nn.Sequential:
  """Grouped conv (no bias) -> BatchNorm -> ReLU over M members (flax momentum 0.9)."""
  return nn.Sequential(
      nn.Conv2d(members * c_in, members * c_out, kernel, stride, padding, bias=False,
                groups=members),
      nn.BatchNorm2d(members * c_out, momentum=0.1),
      nn.ReLU(inplace=True))


def _to_members(h, members: int):
  """(B, M·D) or (B, M·C, H, W) -> (M, B, rest)."""
  return h.reshape(h.shape[0], members, -1).transpose(0, 1)


class MLP(nn.Module):
  """Two hidden ReLU layers on flattened pixels (the library's `mlp`)."""

  def __init__(self, members: int, input_shape, num_classes: int, hidden=(256, 256)):
    super().__init__()
    self.members = members
    d = int(np.prod(input_shape))
    widths = (d,) + tuple(hidden)
    self.layers = nn.ModuleList(StackedLinear(members, a, b)
                                for a, b in zip(widths[:-1], widths[1:]))
    self.head = StackedLinear(members, widths[-1], num_classes)

  def forward(self, x):
    h = _to_members(x, self.members)
    for layer in self.layers:
      h = F.relu(layer(h))
    return self.head(h).transpose(0, 1)


class CNN(nn.Module):
  """Conv3×3-BN-ReLU-max-pool blocks, dense ReLU, head (the library's `cnn`)."""

  def __init__(self, members: int, input_shape, num_classes: int, widths=(64, 128, 256),
               dense: int = 256):
    super().__init__()
    self.members = members
    h, _, c = input_shape
    blocks = []
    for w in widths:
      blocks.append(conv_bn(members, c, w))
      if h > 1:
        blocks.append(nn.MaxPool2d(2))
        h //= 2
      c = w
    self.body = nn.Sequential(*blocks)
    self.fc = StackedLinear(members, c * h * h, dense)
    self.head = StackedLinear(members, dense, num_classes)

  def forward(self, x):
    h = _to_members(self.body(x), self.members)
    return self.head(F.relu(self.fc(h))).transpose(0, 1)


class ResNet9(nn.Module):
  """The Easy Data Unlearning Bench's ResNet-9 (the library's `resnet9`), M members."""

  def __init__(self, members: int, input_shape, num_classes: int,
               widths=(64, 128, 256, 128), scale: float = 0.2):
    super().__init__()
    m = members
    self.members, self.scale = m, scale
    w0, w1, w2, w3 = widths
    c = input_shape[-1]
    self.prep = conv_bn(m, c, w0)
    self.layer1 = conv_bn(m, w0, w1, kernel=5, stride=2, padding=2)
    self.res1 = nn.Sequential(conv_bn(m, w1, w1), conv_bn(m, w1, w1))
    self.layer2 = conv_bn(m, w1, w2)
    self.res2 = nn.Sequential(conv_bn(m, w2, w2), conv_bn(m, w2, w2))
    size = input_shape[0]
    size = -(-size // 2)                          # layer1's stride 2
    size = size // 2 if size > 1 else size        # the max-pool (skipped on a 1×1 map)
    # Unpadded on 32×32 (8×8 → 6×6); padded on maps of 2×2 or less, as the library's.
    self.layer3 = conv_bn(m, w2, w3, padding=0 if size > 2 else 1)
    self.pool = size > 1
    self.head = StackedLinear(m, w3, num_classes, bias=False)

  def forward(self, x):
    h = self.layer1(self.prep(x))
    h = h + self.res1(h)
    h = self.layer2(h)
    h = F.max_pool2d(h, 2) if self.pool else h
    h = h + self.res2(h)
    h = torch.amax(self.layer3(h), dim=(2, 3))
    return self.head(_to_members(self.scale * h, self.members)).transpose(0, 1)


class BasicBlock(nn.Module):
  """ResNet's basic block over M members (the library's `BasicBlock`)."""

  def __init__(self, members: int, c_in: int, width: int, stride: int):
    super().__init__()
    m = members
    self.conv1 = nn.Conv2d(m * c_in, m * width, 3, stride, 1, bias=False, groups=m)
    self.bn1 = nn.BatchNorm2d(m * width, momentum=0.1)
    self.conv2 = nn.Conv2d(m * width, m * width, 3, 1, 1, bias=False, groups=m)
    self.bn2 = nn.BatchNorm2d(m * width, momentum=0.1)
    self.proj = None
    if c_in != width or stride != 1:
      self.proj = nn.Sequential(
          nn.Conv2d(m * c_in, m * width, 1, stride, bias=False, groups=m),
          nn.BatchNorm2d(m * width, momentum=0.1))

  def forward(self, x):
    h = F.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    return F.relu(h + (x if self.proj is None else self.proj(x)))


class ResNet18(nn.Module):
  """ResNet-18 with the CIFAR stem (the library's `resnet18`), M members."""

  def __init__(self, members: int, input_shape, num_classes: int,
               widths=(64, 128, 256, 512)):
    super().__init__()
    self.members = members
    self.stem = conv_bn(members, input_shape[-1], widths[0])
    blocks, c, size = [], widths[0], input_shape[0]
    for s, w in enumerate(widths):
      for b in range(2):
        stride = 2 if (s > 0 and b == 0 and size > 1) else 1
        size = -(-size // stride)
        blocks.append(BasicBlock(members, c, w, stride))
        c = w
    self.blocks = nn.Sequential(*blocks)
    self.head = StackedLinear(members, c, num_classes)

  def forward(self, x):
    h = self.blocks(self.stem(x)).mean(dim=(2, 3))
    return self.head(_to_members(h, self.members)).transpose(0, 1)


MODELS = {"mlp": MLP, "cnn": CNN, "resnet9": ResNet9, "resnet18": ResNet18}


def build(base: str, kwargs: dict, members: int, input_shape, num_classes: int) -> nn.Module:
  """The PyTorch model for a library spec (`models.parse_model_spec`'s (base, kwargs))."""
  if base not in MODELS:
    raise ValueError(f"model {base!r} has no PyTorch counterpart; allowed: {', '.join(MODELS)}")
  widths = {"mlp": "hidden"}.get(base, "widths")   # resnet18's stage widths too
  extra = {widths: tuple(kwargs[next(iter(kwargs))])} if kwargs else {}
  return MODELS[base](members, input_shape, num_classes, **extra)


def _augment(x, generator, pad: int = 4):
  """Random crop (zero padding `pad`) and horizontal flip per image: x (K, C, H, W)."""
  k, c, h, w = x.shape
  padded = F.pad(x, (pad, pad, pad, pad))
  dev = x.device
  off = torch.randint(0, 2 * pad + 1, (k, 2), generator=generator).to(dev)
  rows = (off[:, 0:1] + torch.arange(h, device=dev))[:, :, None]            # (K, H, 1)
  cols = (off[:, 1:2] + torch.arange(w, device=dev))[:, None, :]            # (K, 1, W)
  idx = torch.arange(k, device=dev)[:, None, None]
  out = padded.permute(0, 2, 3, 1)[idx, rows, cols]             # (K, H, W, C)
  flip = (torch.rand(k, generator=generator) < 0.5).to(dev)
  out = torch.where(flip[:, None, None, None], out.flip(2), out)
  return out.permute(0, 3, 1, 2)


def synchronize(device: str) -> None:
  """Waits for the device's queued work (CUDA runs asynchronously; timings need this)."""
  if str(device).startswith("cuda"):
    torch.cuda.synchronize()


def train_members(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                  batch_size: int, lr_by_step: np.ndarray, momentum: float,
                  weight_decay: float, nesterov: bool, augment: bool, seed: int) -> nn.Module:
  """Trains the `net.members` members of `net` on (x, y) (NCHW), each member with its own
  permutation per epoch (the last batch wraps around, as the library's batches do) and
  its own augmentation; mean cross-entropy per member; SGD with coupled weight decay
  and the learning rate of step t = lr_by_step[t] (the library's schedule, same values)."""
  m, n = net.members, x.shape[0]
  g = torch.Generator().manual_seed(seed)     # on the host: indices move to x's device
  opt = torch.optim.SGD(net.parameters(), lr=float(lr_by_step[0]), momentum=momentum,
                        weight_decay=weight_decay, nesterov=nesterov and momentum > 0)
  steps = -(-n // batch_size)
  net.train()
  t = 0
  for _ in range(epochs):
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(m)])     # (M, n)
    order = torch.cat([order, order[:, :steps * batch_size - n]], 1).to(x.device)
    for s in range(steps):
      idx = order[:, s * batch_size:(s + 1) * batch_size]                      # (M, B)
      xb = x[idx.reshape(-1)]                                                  # (M·B, C, H, W)
      if augment:
        xb = _augment(xb, g)
      b = idx.shape[1]
      xb = xb.reshape(m, b, *x.shape[1:]).transpose(0, 1).reshape(b, -1, *x.shape[2:])
      logits = net(xb)                                                         # (B, M, K)
      loss = F.cross_entropy(logits.reshape(b * m, -1), y[idx].T.reshape(-1)) * m
      for group in opt.param_groups:
        group["lr"] = float(lr_by_step[min(t, len(lr_by_step) - 1)])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      t += 1
  return net


@torch.no_grad()
def member_accuracies(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 500) -> np.ndarray:
  """Eval-mode test accuracy of each member: (M,)."""
  net.eval()
  m = net.members
  correct = torch.zeros(m, device=x.device)
  for i in range(0, x.shape[0], batch_size):
    xb = x[i:i + batch_size]
    xb = xb.repeat(1, m, 1, 1) if xb.dim() == 4 else xb.repeat(1, m)
    correct += (net(xb).argmax(-1) == y[i:i + batch_size, None]).float().sum(0)
  return (correct / x.shape[0]).cpu().numpy()
