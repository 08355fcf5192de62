"""The model zoo: architectures from the split-learning privacy literature, with named cuts.

Normalisation across the cut: a cut falls only between blocks, so a normalisation layer
always sits wholly on one side. The zoo uses no BatchNorm: ResNet-18 uses GroupNorm
(32 groups), which has no running statistics, so nothing but parameters exists on either
side, no batch statistics leak across the cut or between clients, and a split model is a
pure function of its parameters (as in federated work, e.g. Hsieh et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
from flax import nnx

from split_workbench.models.base import (
    Sequential,
    flatten,
    global_avg_pool,
    max_pool_2x2,
    relu,
    sigmoid,
    tanh,
)
from split_workbench.ops import conv_kwargs

__all__ = ["ModelInfo", "make_model", "list_models", "register_model", "MODELS"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., Sequential]
    input_shape: tuple[int, int, int]
    default_cut: str
    paper_cuts: tuple[str, ...]
    description: str


MODELS: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> None:
    if info.name in MODELS:
        raise ValueError(f"model {info.name!r} is already registered")
    MODELS[info.name] = info


def _lookup(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None


def make_model(name: str, *, key: jax.Array, input_shape: tuple[int, ...] | None = None,
               num_classes: int = 10, **kwargs) -> Sequential:
    """Builds zoo model ``name`` for inputs of ``input_shape`` (H, W, C), initialised from ``key``."""
    info = _lookup(name)
    shape = tuple(input_shape) if input_shape is not None else info.input_shape
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {shape}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return info.factory(shape, int(num_classes), nnx.Rngs(params=key), **kwargs)


def list_models() -> list[ModelInfo]:
    return [MODELS[n] for n in sorted(MODELS)]


def _conv_out(n: int, k: int, valid: bool) -> int:
    return n - k + 1 if valid else n


def he2019_lenet(shape, num_classes, rngs):
    """He et al. 2019 MNIST LeNet: conv(8,k5)-ReLU-pool-conv(16,k5)-ReLU-pool-fc 120-84-10."""
    h, w, c = shape
    h2, w2 = (_conv_out(h, 5, True) // 2 - 4) // 2, (_conv_out(w, 5, True) // 2 - 4) // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"he2019-lenet needs inputs of at least 16x16, got {shape}")
    return Sequential([
        ("conv1", nnx.Conv(c, 8, (5, 5), padding="VALID", rngs=rngs, **conv_kwargs())),
        ("relu1", relu),
        ("pool1", max_pool_2x2),
        ("conv2", nnx.Conv(8, 16, (5, 5), padding="VALID", rngs=rngs, **conv_kwargs())),
        ("relu2", relu),
        ("pool2", max_pool_2x2),
        ("flatten", flatten),
        ("fc1", nnx.Linear(h2 * w2 * 16, 120, rngs=rngs)),
        ("relu3", relu),
        ("fc2", nnx.Linear(120, 84, rngs=rngs)),
        ("relu4", relu),
        ("fc3", nnx.Linear(84, num_classes, rngs=rngs)),
    ], input_shape=shape)


def he2019_cifar(shape, num_classes, rngs):
    """He et al. 2019 CIFAR-10 CNN: (conv3x3-ReLU)x2-pool at 64, 128, 128; fc 512 (sigmoid)."""
    h, w, c = shape
    if h % 8 or w % 8:
        raise ValueError(f"he2019-cifar needs H and W divisible by 8, got {shape}")
    blocks, cin = [], c
    for stage, cout in enumerate((64, 128, 128), start=1):
        for j in (1, 2):
            blocks += [(f"conv{stage}{j}", nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())),
                       (f"relu{stage}{j}", relu)]
            cin = cout
        blocks.append((f"pool{stage}", max_pool_2x2))
    blocks += [("flatten", flatten),
               ("fc1", nnx.Linear((h // 8) * (w // 8) * 128, 512, rngs=rngs)),
               ("sigmoid", sigmoid),
               ("fc2", nnx.Linear(512, num_classes, rngs=rngs))]
    return Sequential(blocks, input_shape=shape)


def titcombe2021_mnist(shape, num_classes, rngs):
    """Titcombe et al. 2021: client conv32-conv64-pool-fc500-tanh (cut ``tanh1``), server 128-10."""
    h, w, c = shape
    h2, w2 = (h - 4) // 2, (w - 4) // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"titcombe2021-mnist needs inputs of at least 6x6, got {shape}")
    return Sequential([
        ("conv1", nnx.Conv(c, 32, (3, 3), padding="VALID", rngs=rngs, **conv_kwargs())),
        ("relu1", relu),
        ("conv2", nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs, **conv_kwargs())),
        ("relu2", relu),
        ("pool", max_pool_2x2),
        ("flatten", flatten),
        ("fc1", nnx.Linear(h2 * w2 * 64, 500, rngs=rngs)),
        ("tanh1", tanh),
        ("fc2", nnx.Linear(500, 128, rngs=rngs)),
        ("relu3", relu),
        ("fc3", nnx.Linear(128, num_classes, rngs=rngs)),
    ], input_shape=shape)


def mlp(shape, num_classes, rngs, hidden: tuple[int, ...] = (256, 128)):
    """A multilayer perceptron: flatten, then Linear-ReLU per hidden width, then the head."""
    if not hidden:
        raise ValueError("mlp needs at least one hidden layer (hidden=(...))")
    d = shape[0] * shape[1] * shape[2]
    blocks = [("flatten", flatten)]
    for i, width in enumerate(hidden, start=1):
        blocks += [(f"fc{i}", nnx.Linear(d, int(width), rngs=rngs)), (f"relu{i}", relu)]
        d = int(width)
    blocks.append((f"fc{len(hidden) + 1}", nnx.Linear(d, num_classes, rngs=rngs)))
    return Sequential(blocks, input_shape=shape)


class BasicBlock(nnx.Module):
    """ResNet basic block with GroupNorm; an atomic block (no cut inside the residual)."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", use_bias=False, rngs=rngs,
                              **conv_kwargs())
        self.norm1 = nnx.GroupNorm(cout, num_groups=min(32, cout), rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs, **conv_kwargs())
        self.norm2 = nnx.GroupNorm(cout, num_groups=min(32, cout), rngs=rngs)
        if stride != 1 or cin != cout:
            self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs, **conv_kwargs())
            self.proj_norm = nnx.GroupNorm(cout, num_groups=min(32, cout), rngs=rngs)
        else:
            self.proj = None
            self.proj_norm = None

    def __call__(self, x):
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        skip = x if self.proj is None else self.proj_norm(self.proj(x))
        return jax.nn.relu(y + skip)


class Stem(nnx.Module):
    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs, **conv_kwargs())
        self.norm = nnx.GroupNorm(cout, num_groups=min(32, cout), rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.conv(x)))


def resnet18(shape, num_classes, rngs, width: int = 64):
    """ResNet-18 for 32x32 inputs (3x3 stem, no initial max-pool), GroupNorm; cuts between blocks."""
    blocks = [("stem", Stem(shape[2], width, rngs))]
    cin = width
    for stage, mult in enumerate((1, 2, 4, 8), start=1):
        cout = width * mult
        for j in range(2):
            stride = 2 if (stage > 1 and j == 0) else 1
            blocks.append((f"layer{stage}.{j}", BasicBlock(cin, cout, stride, rngs)))
            cin = cout
    blocks += [("pool", global_avg_pool), ("fc", nnx.Linear(cin, num_classes, rngs=rngs))]
    return Sequential(blocks, input_shape=shape)


class FshaResBlock(nnx.Module):
    """Pasquini et al. 2021's ResBlock: ReLU-conv-ReLU-conv plus the input (a strided conv
    on the shortcut when the block downsamples); no normalisation."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", rngs=rngs, **conv_kwargs())
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())
        self.proj = (nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", rngs=rngs, **conv_kwargs())
                     if stride != 1 or cin != cout else None)

    def __call__(self, x):
        y = self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))
        return y + (x if self.proj is None else self.proj(x))


class FshaStem(nnx.Module):
    """conv 3x3 - GroupNorm - ReLU - max-pool 2x2 (the paper's first layer has BatchNorm). The
    conv has no bias: the normalisation removes it (its gradient is zero up to rounding)."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs, **conv_kwargs())
        self.norm = nnx.GroupNorm(cout, num_groups=min(32, cout), rngs=rngs)

    def __call__(self, x):
        return max_pool_2x2(jax.nn.relu(self.norm(self.conv(x))))


def fsha_resnet(shape, num_classes, rngs, width: int = 64):
    """The client of Pasquini et al. 2021 (FSHA): stem, then ResBlocks 64, 128 s2, 128, 256 s2
    (cuts ``level1``..``level4``; level 4 is 4x4x256 on 32x32 inputs); the server half is
    one more ResBlock, global average pooling and a dense layer. ``width`` scales every
    layer (64 in the paper)."""
    h, w, _ = shape
    if h < 8 or w < 8:
        raise ValueError(f"fsha-resnet needs inputs of at least 8x8, got {shape}")
    w1, w2, w4 = width, 2 * width, 4 * width
    blocks = [("level1", nnx.Sequential(FshaStem(shape[2], w1, rngs), FshaResBlock(w1, w1, 1, rngs))),
              ("level2", FshaResBlock(w1, w2, 2, rngs)),
              ("level3", FshaResBlock(w2, w2, 1, rngs)),
              ("level4", FshaResBlock(w2, w4, 2, rngs)),
              ("block5", FshaResBlock(w4, w4, 1, rngs)),
              ("relu5", relu),
              ("pool", global_avg_pool),
              ("fc", nnx.Linear(w4, num_classes, rngs=rngs))]
    return Sequential(blocks, input_shape=shape)


for _info in (
    ModelInfo("he2019-lenet", he2019_lenet, (28, 28, 1), "relu2", ("conv1", "relu2"),
              "He et al. 2019 MNIST LeNet (conv 8-16, fc 120-84)"),
    ModelInfo("he2019-cifar", he2019_cifar, (32, 32, 3), "relu22", ("conv11", "relu22", "relu32"),
              "He et al. 2019 CIFAR-10 CNN (conv 64-64-128-128-128-128, fc 512 sigmoid)"),
    ModelInfo("titcombe2021-mnist", titcombe2021_mnist, (28, 28, 1), "tanh1", ("tanh1",),
              "Titcombe et al. 2021 MNIST net (conv 32-64, fc 500 tanh | 128-10)"),
    ModelInfo("mlp", mlp, (28, 28, 1), "relu1", ("relu1",), "MLP, hidden 256-128"),
    ModelInfo("resnet18", resnet18, (32, 32, 3), "layer1.1", ("stem", "layer1.1", "layer2.1"),
              "ResNet-18 for 32x32 inputs, GroupNorm"),
    ModelInfo("fsha-resnet", fsha_resnet, (32, 32, 3), "level4", ("level1", "level2", "level3", "level4"),
              "Pasquini et al. 2021 FSHA client (ResBlocks 64-128-128-256), GroupNorm stem"),
):
    register_model(_info)
