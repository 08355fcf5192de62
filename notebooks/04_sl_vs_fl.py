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
# # 4. Split learning vs federated learning, measured
#
# With K clients, three ways to train one model on their data:
#
# * **split learning (SL)**, round-robin: the clients take turns with the server; each runs
#   the client part on its batches, sends the smash (and labels), gets the cut gradient
#   back, then hands the client part on to the next client (peer hand-over).
# * **SplitFed V1**: all clients run in parallel against one server part; after each epoch
#   the client parts are averaged (a FedAvg over the client parts only).
# * **FedAvg**: every client trains the whole model locally for one epoch; the server
#   averages the models.
#
# All three run here on the same clients (same partition, same batches, same initial
# model, same optimizer), from one key. Every byte is counted from what the protocol moved
# (`Ledger`), FLOPs come from XLA's cost analysis of the compiled per-example programs, and
# a simple network model gives a simulated wall time. `SMOKE=1` (the default, used by the
# tests) runs in under a minute; `SMOKE=0` is the full size (Fashion-MNIST and He et al.'s LeNet
# when the dataset is installed).

# %%
import os

import jax
import matplotlib

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax

from split_workbench.data import available, load, subset
from split_workbench.models import make_model
from split_workbench.split import split
from split_workbench.topology import (KINDS, NetworkModel, Task, fedavg, make_clients, same_optimizer_trainer,
                                split_learning, splitfed_v1)
from split_workbench.topology.compare import crossover

SMOKE = os.environ.get("SMOKE", "1") != "0"
if SMOKE or not available("fashion-mnist"):
    DATA, MODEL, CUT = "digits", "mlp", "relu1"
else:
    DATA, MODEL, CUT = "fashion-mnist", "he2019-lenet", "relu2"
KS = (1, 5, 20) if SMOKE else (1, 5, 20, 100)
N_TRAIN, EPOCHS, BATCH = (1000, 1, 10) if SMOKE else (3000, 2, 10)
ALPHA = None  # IID clients; a number such as 0.5 gives Dirichlet label skew

# %% [markdown]
# ## Data, model, cut

# %%
key = jax.random.key(0)
ds = load(DATA)
pick = np.sort(np.asarray(jax.random.permutation(jax.random.fold_in(key, 10), ds.num_train))[:N_TRAIN])
ds = subset(ds, pick)
sm = split(make_model(MODEL, key=jax.random.fold_in(key, 1), input_shape=ds.input_shape,
                      num_classes=ds.num_classes), CUT)
trainer = same_optimizer_trainer(sm, optax.adam(1e-3))  # client and server use the same optimizer, as FedAvg
flops = sm.flops()
print(f"{MODEL} cut at {CUT} on {DATA}: {ds.num_train} training examples, {ds.num_test} test")
print(f"parameters: client {sm.param_counts['client']:,}, server {sm.param_counts['server']:,}; "
      f"smash {sm.smash_size} floats per example")
print("FLOPs per example:", {k: f"{v:,.0f}" for k, v in flops.items()})

# %% [markdown]
# ## Train every topology for each number of clients

# %%
network = NetworkModel()  # 10 Mbit/s up, 50 Mbit/s down, 20 ms latency, 1 GFLOP/s clients, 100 GFLOP/s server
runs = []
for k in KS:
    clients = make_clients(ds.y_train, k, key=jax.random.fold_in(key, 2), batch_size=BATCH, alpha=ALPHA)
    task = Task.build(ds.x_train, ds.y_train, ds.x_test, ds.y_test, clients)
    for topology in (lambda: split_learning(trainer, task, epochs=EPOCHS, key=key, network=network),
                     lambda: splitfed_v1(trainer, task, epochs=EPOCHS, key=key, network=network),
                     lambda: fedavg(sm, optax.adam(1e-3), task, epochs=EPOCHS, key=key, network=network)):
        s = topology().summary()
        s.update(smash_size=sm.smash_size, N=sum(sm.param_counts.values()), eta_N=sm.param_counts["client"])
        runs.append(s)

print(f"{'topology':20s} {'K':>3s} {'client sent':>12s} {'client recv':>12s} {'server sent':>12s} "
      f"{'client GFLOP':>12s} {'server GFLOP':>12s} {'sim. s':>7s} {'test acc':>8s}")
for r in runs:
    b = r["bytes_per_epoch"]
    print(f"{r['topology']:20s} {r['num_clients']:3d} {b['per_client_sent_mean'] / 1e6:10.3f}MB "
          f"{b['per_client_received_mean'] / 1e6:10.3f}MB {b['server_sent'] / 1e6:10.3f}MB "
          f"{r['client_flops_per_epoch_mean'] / 1e9:12.4f} {r['server_flops_per_epoch'] / 1e9:12.4f} "
          f"{r['sim_seconds_per_epoch']:7.1f} {r['test_accuracy']:8.3f}")
print("(bytes and FLOPs per epoch; client figures are the mean over the K clients)")

# %% [markdown]
# What crosses the wire, by kind, for the largest K (bytes per epoch, all parties):

# %%
kmax = max(KS)
print(f"{'topology':20s} " + " ".join(f"{kind:>12s}" for kind in KINDS))
for r in (r for r in runs if r["num_clients"] == kmax):
    print(f"{r['topology']:20s} " + " ".join(f"{r['bytes_per_epoch']['by_kind'][kind] / 1e6:10.3f}MB"
                                             for kind in KINDS))

# %% [markdown]
# ## Where split learning becomes cheaper
#
# Per client per epoch, round-robin SL moves its share of the activations and gradients,
# `(2pq floats + p labels) / K` for `p` samples per epoch and `q` smash floats, plus the
# client part handed on and received (`2 eta N` floats); FedAvg moves the whole model down
# and up, `2N` floats, whatever K. So SL is cheaper per client once K exceeds
# `K* = (2pqf + 4p) / (2fN(1 - eta))` (`compare.crossover`, f = 4 bytes per float).

# %%
sl_first = next(r for r in runs if r["topology"].startswith("SL"))
cross = crossover(sl_first)
print(f"crossover K* = {cross['k_star']:.1f} clients")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
ax = axes[0]
for topo, style in (("SL", dict(marker="o", ms=9)), ("SplitFed", dict(marker="s", ms=6, mfc="none", mew=1.5)),
                    ("FedAvg", dict(marker="^", ms=7))):
    pts = sorted((r["num_clients"], r["bytes_per_epoch"]["per_client_mean"]) for r in runs
                 if r["topology"].startswith(topo))
    ax.plot(*zip(*pts), ls="none", label=f"{topo} (measured)", **style)
ks = np.logspace(0, np.log10(max(10 * max(KS), 3 * cross["k_star"])), 100)
ax.plot(ks, cross["data_bytes"] / ks + cross["sl_weight_bytes"], "-", lw=1, label="SL formula")
ax.axhline(cross["fl_bytes"], ls="--", lw=1, color="gray", label="FedAvg formula 2N")
ax.axvline(cross["k_star"], ls=":", color="red", label=f"K* = {cross['k_star']:.0f}")
ax.set(xscale="log", yscale="log", xlabel="clients K", ylabel="bytes per client per epoch (sent + received)")
ax.legend(fontsize=7)

ax = axes[1]
last = [r for r in runs if r["num_clients"] == kmax]
x = np.arange(len(last))
ax.bar(x - 0.2, [r["client_flops_per_epoch_mean"] / 1e9 for r in last], 0.4, label="each client (mean)")
ax.bar(x + 0.2, [r["server_flops_per_epoch"] / 1e9 for r in last], 0.4, label="server")
ax.set_xticks(x, [r["topology"] for r in last], fontsize=8)
ax.set(yscale="log", ylabel="GFLOP per epoch")
ax.set_title(f"compute per side, K = {kmax}", fontsize=9)
ax.legend(fontsize=7)

topos = list(dict.fromkeys(r["topology"] for r in runs))
ax = axes[2]
for t, style in zip(topos, ("o-", "s-", "^-")):
    rs = [r for r in runs if r["topology"] == t]
    ax.plot([r["num_clients"] for r in rs], [r["test_accuracy"] for r in rs], style, label=t)
ax.set(xscale="log", xlabel="clients K", ylabel=f"test accuracy after {EPOCHS} epoch(s)")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading the plots: SL's per-client bytes fall as 1/K (each client carries only its own
# samples' activations) towards the constant cost of handing the client part on, while
# FedAvg's stay at the whole model twice per round; SplitFed pays the activations like SL
# plus the client part's round trip to the fed server. On compute, SL and SplitFed clients
# run only the layers before the cut and the server carries the rest, whereas a FedAvg
# client trains the whole model (its server only averages). On accuracy after the same
# number of epochs: round-robin SL trains one model sequentially over all the data, while
# the averaging methods take one averaged step per epoch from K local models, each of
# which saw only its client's share, and fall behind as K grows.
#
# The same comparison, with He et al.'s LeNet and a thin ResNet-18, IID and Dirichlet
# partitions, a Markdown table and the plot written to a folder, is one command:
# `split-workbench compare --smoke --out results/compare` (Python: `split_workbench.topology.compare.compare`).
