"""Titcombe et al. 2021: Laplace noise on the smash and NoPeek against an inverse-network
attacker, on their MNIST net cut at the 500-d tanh layer (mnist10k standing in for MNIST).

Per configuration: test accuracy, dCor(input, cut) (Szekely's, and the squared-distance
variant their code computes), and the attack's quality: SSIM/PSNR of the decoder's
reconstructions of private targets and dCor(x, x_hat) (the repository's attack measure).
The attacker sees the smash as it crossed the wire (``observe = "train"``: noise included).
The full run adds the paper's own threat model as a labelled comparison: the attacker of a
noise-trained model sees clean activations (``observe = "inference"``, keys ``*_clean``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import _common

NAME = "titcombe2021"
SPEC = "mnist_tanh1.toml"
# configuration -> the defense override of SPEC (their code's NoPeek is the squared variant)
CONFIGS = {
    "none": "none",
    "noise0.5": "laplace_noise(scale=0.5)",
    "noise1.0": "laplace_noise(scale=1.0)",
    "nopeek0.1": "nopeek(alpha=0.1, variant='squared')",
    "nopeek0.5": "nopeek(alpha=0.5, variant='squared')",
    "nopeek1.0": "nopeek(alpha=1.0, variant='squared')",
    "nopeek5": "nopeek(alpha=5.0, variant='squared')",
}
CLEAN = ("noise0.5", "noise1.0")  # full run: attacker on clean activations (the paper's setting)
# minutes-long version on a loaded 2-core CPU: the extremes only, 20 steps of batch 16, a
# short decoder fit. XLA:CPU runs convolutions inside the epoch's lax.scan slowly (jax#12868).
SMOKE_CONFIGS = ("none", "noise1.0", "nopeek1.0")
SMOKE = ["epochs=1", "train_size=320", "batch_size=16", "lr=1e-3", "aux_size=500", "targets=32",
         "attack=inverse_net(steps=300, batch_size=64)"]


def specs(smoke: bool) -> dict:
    """Configuration name -> validated ExperimentSpec for this mode."""
    out = {}
    for name in (SMOKE_CONFIGS if smoke else CONFIGS):
        over = (SMOKE if smoke else []) + [f"defense={CONFIGS[name]}"]
        out[name] = _common.load(NAME, SPEC, over).validate()
        if not smoke and name in CLEAN:
            out[f"{name}_clean"] = dataclasses.replace(out[name], observe="inference").validate()
    return out


def attack_dcor(images: dict) -> float:
    """dCor(x, x_hat) over the targets, squared-distance variant (their attack measure)."""
    import jax.numpy as jnp

    from split_workbench.metrics import distance_correlation_squared_distances

    (recon,) = [v for k, v in images.items() if k != "original"]
    return float(distance_correlation_squared_distances(jnp.asarray(images["original"]), jnp.asarray(recon)))


def run(out_dir: Path, smoke: bool) -> dict:
    results, recons = {}, {}
    for name, spec in specs(smoke).items():
        rec = _common.run_spec(spec, out_dir)
        m = rec["metrics"]
        results[f"{name}/test_accuracy"] = m["test_accuracy"]
        results[f"{name}/dcor"] = m["dcor_input_smash"]
        results[f"{name}/dcor_sq"] = m["dcor_input_smash_squared"]
        results[f"{name}/train_seconds"] = rec["timings"]["train"]
        (r,) = rec["attacks"].values()
        results[f"{name}/ssim"] = r["ssim_mean"]
        results[f"{name}/psnr"] = r["psnr_mean"]
        results[f"{name}/mse"] = r["mse_mean"]
        results[f"{name}/attack_seconds"] = r["seconds"]
        npz = np.load(Path(out_dir) / "runs" / rec["hash"] / "reconstructions.npz")
        recons[name] = {k: npz[k] for k in npz.files}
        results[f"{name}/attack_dcor_sq"] = attack_dcor(recons[name])
    for name in list(recons):
        if not name.endswith("_clean"):
            results[f"{name}/accuracy_drop"] = results["none/test_accuracy"] - results[f"{name}/test_accuracy"]
    _figures(results, recons, out_dir)
    return results


def _figures(results, recons, out_dir):
    plt = _common.pyplot()
    paper = _common.expected(NAME)["paper"]
    names = [n for n in CONFIGS if f"{n}/ssim" in results]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.3))
    panels = (("test_accuracy", "test accuracy"), ("dcor_sq", "dCor(x, z), squared-distance"),
              ("ssim", "attack SSIM (wire)"), ("attack_dcor_sq", "attack dCor(x, x_hat)"))
    for ax, (key, label) in zip(axes, panels):
        ax.bar(x, [results[f"{n}/{key}"] for n in names], 0.6, color="C0", label="ours")
        if key == "dcor_sq":
            ax.bar(x, [results[f"{n}/dcor"] for n in names], 0.25, color="C1", label="ours, Szekely dCor")
        clean = [(i, results[f"{n}_clean/{key}"]) for i, n in enumerate(names) if f"{n}_clean/{key}" in results]
        if clean and key in ("ssim", "attack_dcor_sq"):
            ax.plot(*zip(*clean), "o", color="C3", label="ours, attacker on clean activations")
        theirs = [(i, paper[f"{n}/{key}"]) for i, n in enumerate(names) if f"{n}/{key}" in paper]
        if theirs:
            ax.plot(*zip(*theirs), "k_", ms=16, mew=2, label="paper")
        ax.set_xticks(x, names, rotation=45, fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("Titcombe et al. 2021 on mnist10k: noise and NoPeek vs an inverse-network attacker "
                 "(bars ours, dashes paper)", fontsize=9)
    _common.save_figure(fig, out_dir, "defenses_tradeoff")

    rows = ["original"] + list(recons)
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 0.8 * len(rows)))
    for ax, row in zip(np.atleast_1d(axes), rows):
        imgs = recons[names[0]]["original"] if row == "original" else \
            [v for k, v in recons[row].items() if k != "original"][0]
        _common.image_strip(ax, imgs, row)
    _common.save_figure(fig, out_dir, "reconstructions")
