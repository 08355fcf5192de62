# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Bring your own model and data
#
# Nothing here comes from the zoo or the dataset registry: the images are numpy arrays made
# in the notebook, the model is a list of named Flax NNX blocks written here. In a few
# lines we wrap the arrays as a `Dataset`, cut the model, train it with the split protocol,
# attack what crossed the wire, and train it again behind a defense. At the end the same
# model and data are registered, so experiment specs and sweeps (notebook 3) can use them.
#
# `SMOKE=1` (the default, used by the tests) runs in about a minute on a CPU; `SMOKE=0` is the
# full size.

# %%
import os

import jax
import matplotlib

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from split_workbench.attacks import build_attack, observe
from split_workbench.defenses import build_defense, combine
from split_workbench import metrics
from split_workbench.data import Dataset, split_aux
from split_workbench.models import Sequential, flatten, max_pool_2x2, relu
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split
from split_workbench.training import fit
from split_workbench.wire import Wire

SMOKE = os.environ.get("SMOKE", "1") != "0"
N_TRAIN, N_TEST, EPOCHS = (1200, 300, 4) if SMOKE else (6000, 1000, 15)
TARGETS = 8
# the decoder is convolutional here (the smash is 8x8x8): the smoke run narrows it to keep to CPU seconds
RMLE, INVNET = (("rmle(steps=150)", "inverse_net(steps=150, width=8)") if SMOKE else
                ("rmle(steps=1000)", "inverse_net(steps=2000)"))

# %% [markdown]
# ## Your data: numpy arrays
#
# Any float32 images in [0, 1], shaped (N, H, W, C), with int32 labels in [0, classes). Here:
# 16x16 pictures of four shapes (horizontal bar, vertical bar, square outline, disk) at
# random positions, sizes and brightness, with noise.

# %%
CLASSES = ("h-bar", "v-bar", "square", "disk")


def make_shapes(n: int, rng: np.random.Generator, size: int = 16):
    yy, xx = np.mgrid[:size, :size]
    labels = rng.integers(0, len(CLASSES), n).astype(np.int32)
    cy, cx = rng.uniform(5, size - 5, (2, n, 1, 1))
    r = rng.uniform(2.5, 4.5, (n, 1, 1))
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    cheb = np.maximum(dy, dx)
    masks = np.stack([(dy <= 1) & (dx <= r), (dx <= 1) & (dy <= r), (cheb <= r) & (cheb >= r - 1),
                      dy ** 2 + dx ** 2 <= r ** 2])  # (4, n, H, W)
    img = masks[labels, np.arange(n)] * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.normal(0, 0.08, (n, size, size))
    return np.clip(img, 0, 1).astype(np.float32)[..., None], labels


rng = np.random.default_rng(0)
x_train, y_train = make_shapes(N_TRAIN, rng)
x_test, y_test = make_shapes(N_TEST, rng)

ds = Dataset(name="shapes", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             num_classes=len(CLASSES), class_names=CLASSES, source="notebook 05")
private, aux = split_aux(ds, aux_size=200, key=jax.random.key(0))  # the attacker's images, disjoint
print(ds)
print(private, aux, sep="\n")

fig, axes = plt.subplots(1, 8, figsize=(8, 1.3))
for i, ax in enumerate(axes):
    ax.imshow(ds.x_train[i, ..., 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(CLASSES[ds.y_train[i]], fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# `Dataset` checks what it is given (dtype, shape, range, labels) and fails with a message
# that says what was wrong:

# %%
try:
    Dataset(name="bad", x_train=x_train * 255, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=4)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Your model: named blocks
#
# A model is an ordered list of `(name, block)` pairs; a block is an `nnx.Module` or a
# pure function, and every block boundary is a cut point named after the block before it.
# Below, a user-defined module (conv, GroupNorm, ReLU) and Flax's own layers. Parameter-free
# blocks are the workbench's module-level functions (`relu`, `max_pool_2x2`, `flatten`):
# a module-level function hashes the same each time the model is built, so compiled
# programs are reused (a fresh `lambda` would work too, but recompiles).


# %%
class ConvGN(nnx.Module):
    """3x3 conv, GroupNorm, ReLU. GroupNorm holds only parameters: no batch statistics to leak."""

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c_in, c_out, (3, 3), padding="SAME", rngs=rngs)
        self.norm = nnx.GroupNorm(c_out, num_groups=4, rngs=rngs)

    def __call__(self, x_BxHxWxC):
        return jax.nn.relu(self.norm(self.conv(x_BxHxWxC)))


def shapes_cnn(key: jax.Array, num_classes: int = 4):
    rngs = nnx.Rngs(params=key)
    return [("block1", ConvGN(1, 8, rngs=rngs)), ("pool1", max_pool_2x2),
            ("block2", ConvGN(8, 16, rngs=rngs)), ("pool2", max_pool_2x2),
            ("flatten", flatten), ("fc1", nnx.Linear(4 * 4 * 16, 64, rngs=rngs)), ("relu", relu),
            ("fc2", nnx.Linear(64, num_classes, rngs=rngs))]


sm = split(shapes_cnn(jax.random.key(1)), "pool1", input_shape=ds.input_shape)
print("cut points:", sm.cut_points)
print(f"cut at {sm.cut!r}: client {sm.client.names}, server {sm.server.names}")
print("smash per example:", sm.smash_shape, "| parameters:", sm.param_counts)
print("FLOPs per example:", {k: f"{v:,.0f}" for k, v in sm.flops().items()})

# the two halves compose to the whole model exactly
whole = Sequential(shapes_cnn(jax.random.key(1)), input_shape=ds.input_shape)
x8 = ds.x_test[:8]
print("max |split - whole| =", float(np.abs(sm.apply(sm.params, x8) - whole(x8)).max()))

# %% [markdown]
# A bad cut lists the valid ones, and a model with state other than parameters (BatchNorm's
# running statistics would be shared across the cut) is refused:

# %%
for bad in (lambda: split(shapes_cnn(jax.random.key(1)), "conv1", input_shape=ds.input_shape),
            lambda: split([("conv", nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))),
                           ("bn", nnx.BatchNorm(4, rngs=nnx.Rngs(0))), ("flatten", flatten)], "conv",
                          input_shape=ds.input_shape)):
    try:
        bad()
    except ValueError as e:
        print("ValueError:", e)

# %% [markdown]
# ## Train, attack, defend
#
# `SplitTrainer` runs the six steps of split learning (one jitted `lax.scan` per epoch).
# Defenses come from the registry as spec strings; `combine` turns a list of them into the
# trainer's wire transforms, client loss terms and (for DP-SGD) gradient privatizer.


# %%
def make_trainer(defense_specs=()):
    parts = combine([build_defense(s) for s in defense_specs])
    return SplitTrainer(sm, optax.adam(1e-3), optax.adam(1e-3),
                        wire=Wire(parts["forward"], parts["backward"], parts["inference"]),
                        loss_terms=parts["loss_terms"], privatizer=parts["privatizer"])


attacks = [build_attack(RMLE), build_attack(INVNET)]
grants = set().union(*(a.needs for a in attacks))
x_t = private.x_train[:TARGETS]
print("the attacker is granted:", sorted(grants))

results = {}
for defense in ((), ("laplace_noise(scale=1.0)",), ("nopeek(alpha=3.0)",)):
    trainer = make_trainer(defense)
    run = fit(trainer, private.x_train, private.y_train, epochs=EPOCHS, batch_size=32, key=jax.random.key(2),
              x_test=ds.x_test, y_test=ds.y_test)
    obs = observe(trainer, run.state.params, x_t, grants=grants, aux=(aux.x_train, aux.y_train),
                  key=jax.random.key(3), wire="train")
    row = {"accuracy": run.history[-1]["test_accuracy"], "bytes/epoch": run.history[-1]["forward_bytes"]}
    for a in attacks:
        out = a(obs.only(a.needs), key=jax.random.key(4)).output
        row[a.name] = (float(metrics.ssim(out, x_t).mean()), np.asarray(out))
    label = defense[0] if defense else "none"
    results[label] = row
    print(f"{label:26s} accuracy {row['accuracy']:.3f}  " +
          "  ".join(f"{a.name} SSIM {row[a.name][0]:.3f}" for a in attacks))

# %%
panels = [("private input", x_t)] + [(f"{d} | {a.name}", r[a.name][1]) for d, r in results.items() for a in attacks]
fig, axes = plt.subplots(len(panels), TARGETS, figsize=(TARGETS + 2.5, 1.05 * len(panels)), squeeze=False)
for i, (label, imgs) in enumerate(panels):
    for j in range(TARGETS):
        axes[i, j].imshow(np.clip(imgs[j, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The cut after one conv block leaves a half-resolution 8-channel image on the wire, and
# both attackers recover the shapes from it. Laplace noise on the wire degrades both
# reconstructions for a small loss of accuracy on this easy task; NoPeek's
# distance-correlation penalty, at this weight, changes little of what crosses. Notebook 3
# measures such trade-offs over seeds and strengths.

# %% [markdown]
# ## The same model and data in experiment specs
#
# Register them once in the session, and `ExperimentSpec`, `run_experiment` and the sweeps
# of notebook 3 take their names like any zoo model or dataset (the registries are
# per-process: a shell `split-workbench` command does not see what a notebook registers).
# The factory receives `(input_shape, num_classes, rngs)`.

# %%
from split_workbench.data import DatasetInfo, list_datasets, register_dataset
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.models import MODELS, ModelInfo, register_model
from split_workbench.orchestration.runner import run_experiment

if "shapes" not in {d["name"] for d in list_datasets()}:  # re-running the cell must not register twice
    register_dataset(DatasetInfo(name="shapes", input_shape=ds.input_shape, num_classes=ds.num_classes,
                                 splits=f"train {ds.num_train} / test {ds.num_test}", how_to_get="notebook 05",
                                 load=lambda root: ds))
if "shapes-cnn" not in MODELS:
    register_model(ModelInfo(name="shapes-cnn", input_shape=ds.input_shape, default_cut="pool1", paper_cuts=(),
                             description="notebook 05's CNN",
                             factory=lambda shape, num_classes, rngs: Sequential(
                                 shapes_cnn(rngs.params(), num_classes), input_shape=shape)))

spec = ExperimentSpec(data="shapes", model="shapes-cnn", cut="pool1", epochs=EPOCHS, aux_size=200,
                      targets=TARGETS, defenses=("laplace_noise(scale=1.0)",), attacks=(RMLE,))
rec = run_experiment(spec)
print(f"run {rec['hash']}: accuracy {rec['metrics']['test_accuracy']:.3f}, "
      f"dCor(x, z) {rec['metrics']['dcor_input_smash']:.3f}, rMLE SSIM {rec['attacks'][RMLE]['ssim_mean']:.3f}")
