"""He, Zhang, Lee 2019: rMLE, inverse network and query-free attacks on the LeNet at
conv1 and relu2, the paper's cuts, and (full run) at every other cut point of the LeNet
with the relu2 spec's settings (mnist10k standing in for MNIST). The full run also attacks
their CIFAR-10 CNN at its three paper cuts on Fashion-MNIST padded to 32x32 (the nearest
real data here; a reduced protocol, keys ``cifarnet/...``); cifar_*.toml keep the paper's
CIFAR-10 settings for a user with the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import _common

NAME = "he2019"
CUTS = ("conv1", "relu2")
# every cut point of he2019-lenet, in depth order (full run)
ALL_CUTS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2", "relu4")
ATTACKS = ("rmle", "inverse_net", "query_free")
# the CIFAR-10 CNN's paper cuts, run on fashion-mnist-32 (full run only: about 0.7 GFLOP per
# training image, too heavy for CI's smoke runs)
CIFAR_CUTS = ("conv11", "relu22", "relu32")
# minutes-long version: less data, one epoch, fewer attack steps
SMOKE = ["epochs=2", "train_size=3000", "aux_size=500"]
SMOKE_ATTACKS = ["rmle(steps=200, lr=0.01, tv=0.01)", "inverse_net(steps=150, width=8)",
                 "query_free(shadow_steps=200, steps=200)"]


def specs(smoke: bool) -> dict:
    import dataclasses

    out = {}
    for cut in (CUTS if smoke else ALL_CUTS):
        if cut in CUTS:
            spec = _common.load(NAME, f"lenet_{cut}.toml", SMOKE if smoke else [])
        else:
            spec = _common.load(NAME, "lenet_relu2.toml", [f"cut={cut}"])
        if smoke:
            spec = dataclasses.replace(spec, attacks=tuple(SMOKE_ATTACKS))
        out[cut] = spec.validate()
    return out


def cifar_specs() -> dict:
    """The CIFAR-10 CNN at its paper cuts on fashion-mnist-32 (full run)."""
    return {cut: _common.load(NAME, "fmnist32_cifarnet.toml", [f"cut={cut}"]).validate() for cut in CIFAR_CUTS}


def _record(results, recons, prefix, cut, spec, out_dir):
    rec = _common.run_spec(spec, out_dir)
    results[f"{prefix}{cut}/test_accuracy"] = rec["metrics"]["test_accuracy"]
    results[f"{prefix}{cut}/train_seconds"] = rec["timings"]["train"]
    for a_spec, r in rec["attacks"].items():
        a = a_spec.split("(")[0]
        results[f"{prefix}{cut}/{a}/ssim"] = r["ssim_mean"]
        results[f"{prefix}{cut}/{a}/psnr"] = r["psnr_mean"]
        results[f"{prefix}{cut}/{a}/seconds"] = r["seconds"]
    npz = np.load(Path(out_dir) / "runs" / rec["hash"] / "reconstructions.npz")
    recons[cut] = {k: npz[k] for k in npz.files}


def run(out_dir: Path, smoke: bool) -> dict:
    results, recons = {}, {}
    for cut, spec in specs(smoke).items():
        _record(results, recons, "", cut, spec, out_dir)
    _figures(results, recons, out_dir)
    if len(recons) > len(CUTS):
        _depth_figure(results, [c for c in ALL_CUTS if c in recons], out_dir)
    if not smoke:
        cifar = {}
        for cut, spec in cifar_specs().items():
            _record(results, cifar, "cifarnet/", cut, spec, out_dir)
        _cifar_figures(results, cifar, out_dir)
    return results


def _quality_by_cut(results, prefix, cuts, paper_value, title, stem, out_dir):
    """SSIM and PSNR of each attack against the cut, ours as lines and the paper's as stars;
    ``paper_value(cut, attack, metric)`` is the paper's number or None."""
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(cuts))
    for ax, metric in zip(axes, ("ssim", "psnr")):
        for i, a in enumerate(ATTACKS):
            ax.plot(x, [results[f"{prefix}{c}/{a}/{metric}"] for c in cuts], "o-", color=f"C{i}", label=a, ms=4)
            pts = [(j, v) for j, c in enumerate(cuts) if (v := paper_value(c, a, metric)) is not None]
            if pts:
                ax.plot(*zip(*pts), "*", color=f"C{i}", ms=11, mec="k", label=f"paper {a}")
        ax.set_xticks(x, cuts, rotation=45, fontsize=7)
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    _common.save_figure(fig, out_dir, stem)


def _reconstruction_strips(rows, out_dir, stem, height=0.75):
    """One strip of the first 10 images per ``(cut, row name, images)``."""
    plt = _common.pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, height * len(rows)))
    for ax, (cut, row, imgs) in zip(axes, rows):
        _common.image_strip(ax, imgs, f"{cut}\n{row.split('(')[0]}")
    _common.save_figure(fig, out_dir, stem)


def _cifar_figures(results, recons, out_dir):
    paper = _common.expected(NAME)["paper_cifar"]
    _quality_by_cut(results, "cifarnet/", CIFAR_CUTS,
                    lambda c, a, metric: paper[a][c][("psnr", "ssim").index(metric)],
                    "He et al. 2019 CIFAR-10 CNN on Fashion-MNIST padded to 32x32 (reduced protocol; "
                    "stars: the paper on CIFAR-10)", "cifarnet_attack_quality", out_dir)
    _reconstruction_strips([(cut, row, imgs) for cut in CIFAR_CUTS for row, imgs in recons[cut].items()],
                           out_dir, "cifarnet_reconstructions")


def _depth_figure(results, cuts, out_dir):
    paper = _common.expected(NAME)["paper"]
    _quality_by_cut(results, "", cuts, lambda c, a, metric: paper.get(f"{c}/{a}/{metric}"),
                    "He et al. 2019 LeNet on mnist10k: attack quality at every cut point (stars: the paper)",
                    "attack_quality_every_cut", out_dir)


def _figures(results, recons, out_dir):
    plt = _common.pyplot()
    paper = _common.expected(NAME)["paper"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    x = np.arange(len(ATTACKS))
    for ax, metric in zip(axes, ("ssim", "psnr")):
        for i, cut in enumerate(CUTS):
            ours = [results[f"{cut}/{a}/{metric}"] for a in ATTACKS]
            theirs = [paper[f"{cut}/{a}/{metric}"] for a in ATTACKS]
            ax.bar(x + (i - 0.5) * 0.38, ours, 0.36, label=f"ours {cut}", color=f"C{i}")
            ax.plot(x + (i - 0.5) * 0.38, theirs, "k_", ms=16, mew=2, label="paper" if i == 0 else None)
        ax.set_xticks(x, ATTACKS)
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
    axes[0].legend(fontsize=7)
    fig.suptitle("He et al. 2019, LeNet on mnist10k: deeper cut -> worse reconstruction (bars ours, dashes paper)",
                 fontsize=9)
    _common.save_figure(fig, out_dir, "attack_quality_by_cut")

    # the paper's two cuts
    _reconstruction_strips([(cut, row, imgs) for cut in CUTS for row, imgs in recons[cut].items()],
                           out_dir, "reconstructions", height=6.5 / (len(CUTS) * (1 + len(ATTACKS))))
