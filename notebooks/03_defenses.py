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
# # 3. Defenses and the privacy-utility trade-off
#
# A defense transforms what crosses the wire (noise, clipping, sparsification) or adds a
# term to the client's objective (NoPeek). Each one costs accuracy and buys some privacy;
# this notebook measures both in one sweep:
#
# 1. a base experiment spec and a grid of defenses x strengths x seeds, run with
#    `split_workbench.orchestration.sweep` (the Python side of `split-workbench sweep`);
# 2. the report (`split_workbench.orchestration.report`, the Python side of `split-workbench report`): the
#    attack x defense matrix with 95% intervals over seeds, the privacy-utility figure and
#    the reconstruction grid;
# 3. the formal guarantee of the DP defense: its (epsilon, delta) from
#    `defenses.accounting`, and the noise needed for a target epsilon.
#
# The attacker always observes the smash *after* the defenses. `SMOKE=1` (the default, used
# by the tests) runs in about a minute on a CPU; `SMOKE=0` is the full size.

# %%
import json
import os
from pathlib import Path

import matplotlib

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

# run_sweep and write_report switch matplotlib to Agg to write their figures; we switch back
# before plotting, and load our backend now so that switching back restores Jupyter's display
BACKEND = matplotlib.get_backend()
plt.switch_backend(BACKEND)

try:  # Jupyter renders the report's Markdown and figures; run as a plain script, it prints them
    from IPython.display import Image, Markdown, display
except ImportError:
    Image, Markdown, display = (lambda filename, **_: f"[figure: {filename}]"), str, print

from split_workbench.defenses import DEFENSES, build_defense
from split_workbench.defenses.accounting import Schedule, calibrate_noise, epsilon
from split_workbench.data import load
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.report import load_records, write_report
from split_workbench.orchestration.sweep import expand_grid, parse_grid, run_sweep

SMOKE = os.environ.get("SMOKE", "1") != "0"
OUT = Path("runs") / ("03_defenses_smoke" if SMOKE else "03_defenses")  # relative to the working directory

# %% [markdown]
# ## The defenses
#
# Every registered defense, with the guarantee its docstring states (built at its defaults):

# %%
for name in DEFENSES.names():
    print(f"{name:15s} {build_defense(name).guarantee}")

# %% [markdown]
# ## One base spec, a grid over it
#
# The base spec is that of `scripts/demo.toml`, shrunk for the smoke run: a split MLP on
# digits cut at `relu1`, attacked by white-box rMLE and a black-box inverse network. The grid
# uses the CLI's syntax (`field=v1|v2`); `expand_grid` validates every spec before any work.
# Specs that differ only in their seed and in the strength of a vmappable defense (here: the
# seeds, and the two Laplace scales) train as one vmapped program. Finished runs are skipped,
# so re-running this cell resumes the sweep (delete `OUT` to start afresh).

# %%
base = ExperimentSpec(
    data="digits", model="mlp", cut="relu1", epochs=3 if SMOKE else 10, batch_size=32, lr=1e-3,
    aux_size=300, targets=8 if SMOKE else 16, observe="train",
    attacks=("rmle(steps=100)", "inverse_net(steps=200)") if SMOKE else
            ("rmle(steps=300)", "inverse_net(steps=1000)", "query_free(shadow_steps=600, steps=300)"))
DP = "dp_smash(clip=1.0, noise_multiplier=1.0)"
defenses = (["none", "laplace_noise(scale=0.5)", "laplace_noise(scale=1.5)", DP] if SMOKE else
            ["none", "laplace_noise(scale=0.25)", "laplace_noise(scale=0.5)", "laplace_noise(scale=1.0)",
             "laplace_noise(scale=2.0)", "nopeek(alpha=0.5)", "nopeek(alpha=2.0)", "topk(fraction=0.1)",
             "dp_smash(clip=1.0, noise_multiplier=0.5)", DP, "dp_smash(clip=1.0, noise_multiplier=2.0)"])
seeds = "0|1|2" if SMOKE else "0|1|2|3|4"
grid = parse_grid(["defense=" + "|".join(defenses), f"seed={seeds}"])
specs = expand_grid(base, grid)
print(f"{len(specs)} runs; the same sweep from the shell:")
print(f'  split-workbench sweep {OUT}/base.toml --grid "defense={"|".join(defenses)}" --grid "seed={seeds}" '
      f"--out {OUT}")
OUT.mkdir(parents=True, exist_ok=True)
_ = (OUT / "base.toml").write_text(base.to_toml())

# %%
records = run_sweep(specs, OUT)
print(f"{'defense':45s} {'seed':>4s} {'accuracy':>8s} " + " ".join(f"{a.split('(')[0] + ' SSIM':>16s}"
                                                                  for a in base.attacks))
for r in records:
    ssims = " ".join(f"{r['attacks'][a]['ssim_mean']:16.3f}" for a in base.attacks)
    print(f"{' + '.join(r['spec']['defenses']) or 'none':45s} {r['spec']['seed']:4d} "
          f"{r['metrics']['test_accuracy']:8.3f} {ssims}")

# %% [markdown]
# ## The report
#
# `write_report` reads every `result.json` under the sweep folder and writes `report.md`,
# `report.html` and the figures (PNG and PDF). The matrix: mean ± half-width of the 95%
# t-interval over seeds.

# %%
report_md = write_report(OUT)
text = report_md.read_text()
display(Markdown(text.split("![")[0]))  # the tables; the figures follow

# %%
display(Image(filename=str(report_md.parent / "privacy_utility.png"), width=900))

# %%
display(Image(filename=str(report_md.parent / "reconstructions_0.png"), width=900))

# %% [markdown]
# Reading the figure: each panel is one attack; further left is more private (the attack's
# SSIM drops), higher is more useful. The star is the undefended model. Noise moves along a
# curve as its scale grows: the black-box decoder, trained on noisy queries, degrades more
# slowly than white-box rMLE. The full run (`SMOKE=0`) adds NoPeek, whose
# distance-correlation penalty lowers dCor(x, z) on training batches but does not stop a
# white-box attacker inverting this over-complete layer (compare its dCor and rMLE SSIM
# columns), and Top-k sparsification, which also shrinks the bytes on the wire.
#
# ## The DP defense's guarantee
#
# `dp_smash(clip=C, noise_multiplier=sigma)` clips each example's smash to L2 norm C and adds
# Gaussian noise of std sigma C: each release is the Gaussian mechanism with sensitivity C.
# The run records its epsilon at the spec's delta, composed over the releases of each
# example in training. By default the accountant assumes what the training loop does
# (shuffled epochs, one release per example per epoch, no amplification claimed):

# %%
dp_record = next(r for r in records if r["spec"]["defenses"] == [DP])
privacy = dp_record["privacy"][0]
print(json.dumps({k: privacy[k] for k in ("defense", "epsilon", "delta", "noise_multiplier", "steps",
                                          "releases_per_example", "sampling", "epsilon_pld")}, indent=1))
print("guarantee:", privacy["guarantee"])

# %% [markdown]
# The same number straight from `defenses.accounting`, and how it moves with the noise
# multiplier. Poisson subsampling (each step includes each example with probability B/N)
# would give a much smaller epsilon, but the workbench's loop draws shuffled fixed-size
# batches, for which that amplification is not a proof; both curves are shown.

# %%
delta = privacy["delta"]
dataset_size = load(base.data).num_train - base.aux_size  # the private training set the accountant saw
shuffle = Schedule.from_epochs(base.epochs, base.batch_size, dataset_size, sampling="shuffle")
poisson = Schedule.from_epochs(base.epochs, base.batch_size, dataset_size, sampling="poisson")
print(f"epsilon at sigma=1.0: shuffle {epsilon(1.0, delta, shuffle):.2f} (recorded {privacy['epsilon']:.2f}), "
      f"poisson {epsilon(1.0, delta, poisson):.2f}")

sigmas = [0.75, 1.0, 1.5, 2.0, 3.0, 5.0]
plt.switch_backend(BACKEND)  # see the first cell
fig, ax = plt.subplots(figsize=(4.5, 3.2))
for sched, label in ((shuffle, "shuffled epochs (what the loop does)"), (poisson, "Poisson sampling (amplified)")):
    ax.plot(sigmas, [epsilon(s, delta, sched) for s in sigmas], "o-", label=label)
ax.set(xlabel="noise multiplier sigma", ylabel=f"epsilon at delta={delta:g}", yscale="log",
       title=f"dp_smash over {base.epochs} epochs, B={base.batch_size}, N={dataset_size}")
ax.legend(fontsize=7)
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

for target in (8.0, 3.0):
    print(f"noise multiplier for epsilon <= {target}: {calibrate_noise(target, delta, shuffle):.2f} (shuffled)")
