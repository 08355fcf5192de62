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
# # 1. Quickstart: split, train, look at the smash, invert it, defend it
#
# A model is cut at a named layer; the client runs the layers before the cut and sends
# the activations (the *smash*) to the server. We train a split MLP on scikit-learn's
# digits, look at what crosses the wire, reconstruct the inputs from it with the
# white-box rMLE attack (He et al. 2019), then add Laplace noise on the wire and compare.
#
# `SMOKE=1` (the default, used by the tests) shrinks the run to seconds; `SMOKE=0` for
# the full version.

# %%
import os

import jax
import matplotlib

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.runner import run_experiment

SMOKE = os.environ.get("SMOKE", "1") != "0"
EPOCHS, RMLE_STEPS = (3, 150) if SMOKE else (20, 1000)

# %% [markdown]
# ## Split and train
# An experiment is a spec; `run_experiment` trains the split model, observes the wire,
# runs the attacks and scores them.

# %%
base = ExperimentSpec(data="digits", model="mlp", cut="relu1", epochs=EPOCHS, batch_size=32, lr=1e-3,
                      targets=8, aux_size=200, attacks=(f"rmle(steps={RMLE_STEPS})",), seed=0)
rec = run_experiment(base)
print("test accuracy", round(rec["metrics"]["test_accuracy"], 3))
print("smash per example:", rec["split"]["smash_shape"] if "smash_shape" in rec["split"] else rec["split"])
print("bytes per epoch:", rec["bytes_per_epoch"])
print("dCor(input, smash):", round(rec["metrics"]["dcor_input_smash"], 3))

# %% [markdown]
# ## Look at the smash and invert it
# Below: what the server sees for one example, and rMLE's reconstruction of all targets.

# %%
from split_workbench.orchestration.runner import prepare, train_stage, observation

p = prepare(base)
fitted = train_stage(p)
obs, x_t, _ = observation(p, fitted.state, jax.random.key(0))
from split_workbench.attacks import build_attack

recon = build_attack(f"rmle(steps={RMLE_STEPS})")(obs.only(build_attack("rmle").needs), key=jax.random.key(1)).output

fig, axes = plt.subplots(3, 8, figsize=(8, 3.2))
for i in range(8):
    axes[0, i].imshow(np.asarray(x_t[i, ..., 0]), cmap="gray", vmin=0, vmax=1)
    axes[1, i].imshow(np.asarray(obs.smash[i]).reshape(16, -1), cmap="viridis")
    axes[2, i].imshow(np.clip(np.asarray(recon[i, ..., 0]), 0, 1), cmap="gray", vmin=0, vmax=1)
for ax in axes.ravel():
    ax.set_xticks([]), ax.set_yticks([])
for ax, t in zip(axes[:, 0], ("input", "smash", "rMLE")):
    ax.set_ylabel(t)
plt.show()

# %% [markdown]
# ## Add a defense and compare
# Laplace noise on the wire (Titcombe et al. 2021) at two scales: accuracy and the attack's SSIM.

# %%
rows = []
for defense in ((), ("laplace_noise(scale=0.5)",), ("laplace_noise(scale=2.0)",)):
    r = run_experiment(base.with_overrides([f"defense={defense[0] if defense else 'none'}"]))
    a = next(iter(r["attacks"].values()))
    rows.append((defense[0] if defense else "none", r["metrics"]["test_accuracy"], a["ssim_mean"]))
    print(f"{rows[-1][0]:28s} accuracy {rows[-1][1]:.3f}  rMLE SSIM {rows[-1][2]:.3f}")

fig, ax = plt.subplots(figsize=(4, 3))
ax.plot([r[2] for r in rows], [r[1] for r in rows], "o-")
for name, acc, ssim in rows:
    ax.annotate(name, (ssim, acc), fontsize=7)
ax.set_xlabel("rMLE SSIM (lower = more private)")
ax.set_ylabel("test accuracy")
plt.show()
