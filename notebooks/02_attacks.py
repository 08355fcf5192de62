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
# # 2. Every attack on one split model, side by side
#
# One split MLP is trained on scikit-learn's digits and cut before its last layer. Then
# every registered attack is run on what crossed its wire:
#
# * **model inversion** (reconstruct the client's private images from the smash):
#   `rmle`, `inverse_net`, `query_free`, `unsplit`, scored by SSIM and PSNR;
# * **label inference** (recover the private labels from the cut gradients the client
#   receives): `norm_leak`, `cosine_leak`, `unsplit_labels`, scored by AUC or accuracy.
#
# ## Threat model
#
# The **client** holds the raw images and the layers before the cut; the **server** holds
# the rest. Per training step the smash `z` and (in vanilla split learning) the labels go
# client -> server, and the cut gradient `dz` goes back. Each party is *honest but
# curious*: it follows the protocol and looks at what it receives. An attack declares in
# `needs` which fields of an `Observation` its adversary has (what crossed the wire plus
# what its threat model grants: the client's architecture, its parameters, query access,
# auxiliary data, the server's model). `Observation.only(needs)` removes everything else,
# and an attack handed less than it needs refuses to run (`MissingObservation`).
#
# `SMOKE=1` (the default, used by the tests) runs in under a minute on a CPU; `SMOKE=0` is the
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
from scipy.optimize import linear_sum_assignment

from split_workbench.attacks import (ATTACKS, OBSERVATION_FIELDS, Observation, build_attack, evaluate_attack, observe, observe_tap,
                     tap_targets)
from split_workbench import metrics
from split_workbench.data import load, split_aux
from split_workbench.models import make_model
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split
from split_workbench.training import fit

SMOKE = os.environ.get("SMOKE", "1") != "0"
EPOCHS, TARGETS, AUX = (4, 8, 300) if SMOKE else (20, 16, 400)
ATTACK_SPECS = {  # image attacks: smoke budgets are a fraction of the defaults
    "rmle": "rmle(steps=150)" if SMOKE else "rmle(steps=1000)",
    "inverse_net": "inverse_net(steps=300)" if SMOKE else "inverse_net(steps=2000)",
    "query_free": "query_free(shadow_steps=200, steps=150)" if SMOKE else "query_free(shadow_steps=1500, steps=1000)",
    "unsplit": ("unsplit(rounds=10, input_steps=10, model_steps=10, lr=0.01)" if SMOKE
                else "unsplit(rounds=100, input_steps=20, model_steps=20, lr=0.01)"),
}
LABEL_STEPS = 100 if SMOKE else 300  # unsplit_labels optimisation steps

# %% [markdown]
# ## What each attack needs
#
# Read straight from the registry: the `Observation` fields each attack's threat model grants.

# %%
print(f"{'attack':16s} {'kind':10s} needs")
for name in ATTACKS.names():
    a = build_attack(name)
    print(f"{name:16s} {a.kind:10s} {', '.join(sorted(a.needs))}")

# %% [markdown]
# | attack | adversary | what it knows beyond the wire |
# | --- | --- | --- |
# | `rmle` (He et al. 2019) | server, **white-box** | the client's architecture and trained parameters: it solves `argmin_x ||f(x) - z||² + TV(x)` |
# | `inverse_net` (He et al. 2019) | server, **black-box** | query access to the deployed client on its own auxiliary images: it trains a decoder `z -> x` |
# | `query_free` (He et al. 2019) | server | the client's architecture, the trained server and labelled auxiliary data: it trains a shadow client through the frozen server, then inverts the shadow |
# | `unsplit` (Erdogan et al. 2022) | server | the client's architecture only: it optimises the images and a clone of the client together |
# | `norm_leak`, `cosine_leak` (Li et al. 2022) | client (non-label party) | nothing: it reads the norms / directions of the gradients it receives (binary, imbalanced labels) |
# | `unsplit_labels` (Erdogan et al. 2022) | client | the label party holds only the last layer, whose architecture it knows; it matches gradients |
#
# ## Train one split model
#
# A 256-128 MLP on 8x8 digits, cut after `relu2`: the client runs `fc1, relu1, fc2, relu2`
# and sends 128 numbers per image, the server holds only the last layer `fc3`. The
# attacker's auxiliary images are carved out of the training set, disjoint from the
# private data. The wire is tapped on the first training steps for the label attacks.

# %%
ds = load("digits")
private, aux = split_aux(ds, aux_size=AUX, key=jax.random.key(2))
model = make_model("mlp", key=jax.random.key(0), input_shape=ds.input_shape, num_classes=ds.num_classes)
sm = split(model, "relu2")
print("cut points:", sm.cut_points, "| smash shape:", sm.smash_shape, "| params:", sm.param_counts)

trainer = SplitTrainer(sm, optax.adam(1e-3), optax.adam(1e-3))
TAPS = (1, 5, 10)
res = fit(trainer, private.x_train, private.y_train, epochs=EPOCHS, batch_size=32, key=jax.random.key(1),
          x_test=ds.x_test, y_test=ds.y_test, tap_steps=TAPS)
params = res.state.params
print(f"test accuracy {res.history[-1]['test_accuracy']:.3f} after {EPOCHS} epochs")

# %% [markdown]
# ## Model inversion
#
# `observe` builds what the wire carries for the private targets at the trained
# parameters, and grants the fields we list (here: all, so that every attack can take its
# share; each attack is then handed `obs.only(attack.needs)`). `wire="train"` sends the
# smash through the training-time transforms (none here: the model is undefended).

# %%
x_t, y_t = private.x_train[:TARGETS], private.y_train[:TARGETS]
every_field = set(OBSERVATION_FIELDS) - {"input_shape"}
obs = observe(trainer, params, x_t, y_t, grants=every_field, aux=(aux.x_train, aux.y_train),
              key=jax.random.key(3), wire="train")
print("observation holds:", sorted(obs.available()))

recons, scores = {}, {}
for i, (name, spec) in enumerate(ATTACK_SPECS.items()):
    attack = build_attack(spec)
    result = attack(obs.only(attack.needs), key=jax.random.key(10 + i))
    recons[name] = np.asarray(result.output)
    scores[name] = {"ssim": float(metrics.ssim(result.output, x_t).mean()),
                    "psnr": float(np.minimum(metrics.psnr(result.output, x_t), 100.0).mean()),
                    "seconds": result.stats["seconds"]}
# a flat grey guess is the no-information baseline
grey = np.full_like(x_t, 0.5)
scores["grey guess"] = {"ssim": float(metrics.ssim(grey, x_t).mean()),
                        "psnr": float(metrics.psnr(grey, x_t).mean()), "seconds": 0.0}

print(f"{'attack':14s} {'SSIM':>7s} {'PSNR dB':>8s} {'seconds':>8s}")
for name, s in scores.items():
    print(f"{name:14s} {s['ssim']:7.3f} {s['psnr']:8.2f} {s['seconds']:8.1f}")

# %%
rows = {"private input": x_t, **recons}
fig, axes = plt.subplots(len(rows), TARGETS, figsize=(1.0 * TARGETS + 1.5, 1.05 * len(rows)), squeeze=False)
for r, (label, imgs) in enumerate(rows.items()):
    for c in range(TARGETS):
        axes[r, c].imshow(np.clip(imgs[c, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
fig.suptitle("Reconstructions of the private targets from the smash at relu2", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# An attacker holding the client's weights (`rmle`) or able to query it (`inverse_net`)
# reconstructs the digits: this client maps 64 pixels to 128 numbers, so the smash pins
# the image down. The attackers that know only the client's architecture (`query_free`,
# `unsplit`) must first find *a* client that explains the smash, which is far harder;
# compare them with the grey guess. `SMOKE=0` gives every attack its full budget.
#
# ## Label inference from the cut gradients
#
# Now the client is the attacker: it never receives labels, only `dz`. `observe_tap`
# builds the observation from what the wire carried at a tapped training step (the
# gradients really returned during training, not recomputed), and `tap_targets` gives
# the true labels behind that step for scoring.
#
# **`norm_leak` and `cosine_leak`** assume a binary task with a rare positive class. On our
# 10-class model we can still score them one-vs-rest, class by class: an AUC far from 0.5
# (in either direction) means the gradient's norm or direction depends on the label.

# %%
def label_leak_aucs(run, trainer, x_train, *, positive):
    """Leak AUC of norm_leak and cosine_leak at each tapped step (NaN if the class is absent)."""
    out = {}
    for spec in ("norm_leak", "cosine_leak"):
        aucs = []
        for step in TAPS:
            o = observe_tap(run.taps[0], step, trainer, None, grants={"cut_grads"}, key=jax.random.key(0))
            _, y = tap_targets(run.taps[0], step, x_train)
            aucs.append(evaluate_attack(build_attack(spec), o, y, key=jax.random.key(0), positive=positive)["auc"])
        out[spec] = aucs
    return out


print("10-class model, one-vs-rest AUC averaged over the tapped steps", TAPS)
print(f"{'class':>5s} {'norm_leak':>10s} {'cosine_leak':>12s}")
for c in range(ds.num_classes):
    per = label_leak_aucs(res, trainer, private.x_train, positive=c)
    print(f"{c:5d} {np.nanmean(per['norm_leak']):10.3f} {np.nanmean(per['cosine_leak']):12.3f}")

# %% [markdown]
# In Li et al.'s setting, a binary task with imbalanced labels (here: "is the digit a 0?",
# about 10% positives), the gradients of the rare class are larger (the model is less sure
# of them) and point the other way. Same architecture and cut, relabelled data:

# %%
y_bin = (private.y_train == 0).astype(np.int32)
sm_bin = split(make_model("mlp", key=jax.random.key(0), input_shape=ds.input_shape, num_classes=2), "relu2")
trainer_bin = SplitTrainer(sm_bin, optax.adam(1e-3), optax.adam(1e-3))
res_bin = fit(trainer_bin, private.x_train, y_bin, epochs=1, batch_size=64, key=jax.random.key(1), tap_steps=TAPS)
binary = label_leak_aucs(res_bin, trainer_bin, private.x_train, positive=1)
for spec, aucs in binary.items():
    print(f"binary model,   {spec:12s} leak AUC at steps {TAPS}: {np.round(aucs, 3)}")

# %% [markdown]
# **`unsplit_labels`**: the label party (our server) holds only the last layer, and the
# attacker knows its architecture. Here the attacker is the client, so in the
# `Observation` the "client" fields describe the *label party's* layer
# (`client_apply = sm.server.apply`, `client_init` its initial parameters, `input_shape`
# the smash shape, that layer's input); `smash` is what the client sent and `cut_grads` what
# came back at one tapped step. We build that Observation by hand. A clone started from
# random weights names the classes only up to a permutation (nothing in a gradient says that
# class 3 is called "3"), so we also score the accuracy under the best one-to-one matching of
# predicted to true classes. That matching is computed from the true labels: it measures how
# well the attack *groups* the examples by class; to *name* the groups, the attacker needs
# something more (say, a few examples whose labels it knows).

# %%
step = TAPS[-1]
i = list(res.taps[0].steps).index(step)
label_obs = Observation(smash=res.taps[0].smash[i], cut_grads=res.taps[0].cut_grads[i],
                        client_apply=sm.server.apply, client_init=sm.params["server"],
                        input_shape=sm.smash_shape)
_, y_step = tap_targets(res.taps[0], step, private.x_train)
attack = build_attack(f"unsplit_labels(steps={LABEL_STEPS})")
pred = np.asarray(attack(label_obs, key=jax.random.key(4)).output)
raw = evaluate_attack(attack, label_obs, y_step, key=jax.random.key(4))["label_accuracy"]
confusion = np.zeros((ds.num_classes, ds.num_classes))
np.add.at(confusion, (pred, y_step), 1)
r_, c_ = linear_sum_assignment(-confusion)
matched = confusion[r_, c_].sum() / len(y_step)
print(f"unsplit_labels at step {step}: accuracy {raw:.3f} raw, {matched:.3f} up to a class permutation "
      f"(chance {1 / ds.num_classes:.1f})")

# %% [markdown]
# ## Summary plot

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
names = list(scores)
a1.bar(names, [scores[n]["ssim"] for n in names], color=["C0"] * (len(names) - 1) + ["gray"])
a1.set_ylabel("SSIM (higher = more leakage)")
a1.set_title("model inversion", fontsize=9)
a1.tick_params(axis="x", rotation=30, labelsize=8)
labels = ["norm_leak\n(binary AUC)", "cosine_leak\n(binary AUC)", "unsplit_labels\n(matched acc.)"]
a2.bar(labels, [np.mean(binary["norm_leak"]), np.mean(binary["cosine_leak"]), matched], color=["C1", "C1", "C2"])
a2.axhline(0.5, ls=":", color="gray", label="AUC chance")
a2.axhline(0.1, ls="--", color="gray", lw=0.8, label="10-class chance")
a2.set_ylim(0, 1.3)
a2.set_ylabel("AUC / accuracy")
a2.set_title("label inference", fontsize=9)
a2.tick_params(axis="x", labelsize=8)
a2.legend(fontsize=7, loc="upper center", ncol=2)
fig.tight_layout()
plt.show()
