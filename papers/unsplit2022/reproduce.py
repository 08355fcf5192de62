"""Erdogan, Küpçü, Çiçek 2022 (UnSplit): model inversion by an attacker who knows only the
client's architecture, at every cut depth of He et al.'s LeNet, and label inference by
gradient matching when the label party holds only the last layer (mnist10k standing in
for MNIST).

Inversion: ``lenet_inversion.toml`` per cut and seed through the core runner; scores are
MSE (the paper's measure), SSIM and PSNR of the 10 reconstructions, averaged over seeds.
Labels: ``lenet_labels.toml`` is trained by the runner's stages; the attacker (the party
without labels, our client) sees the smash and cut gradients of a 100-example batch and
knows the label party's layer (our server) only as an architecture. A clone started from
random weights names the classes only up to a permutation, so the accuracy is reported
raw and under the best one-to-one matching of predicted to true classes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import _common

NAME = "unsplit2022"
CUTS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1")  # client part, shallow -> deep
FIRST_BLOCK = ("conv1", "relu1", "pool1")  # cuts inside the first conv block; the rest are "deeper"
SEEDS = (0, 1, 2)
LABEL_ATTACK = "unsplit_labels(steps=2000)"
# minutes-long version on a loaded 2-core CPU: one cut per depth level, one seed, 1 epoch on
# 2,000 images, 20 rounds of 20 + 20 steps (lr 1e-2 to move as far in 50x fewer steps).
SMOKE_CUTS = ("conv1", "pool1", "relu2", "fc1")
SMOKE_SEEDS = (0,)
SMOKE = ["epochs=1", "train_size=2000", "attack=unsplit(rounds=20, input_steps=20, model_steps=20, lr=0.01)"]
SMOKE_LABELS = ["train_size=2000"]
SMOKE_LABEL_ATTACK = "unsplit_labels(steps=1000)"


def specs(smoke: bool) -> dict:
    """Run name -> validated ExperimentSpec: ``{cut}/seed{s}`` (inversion), ``labels/seed{s}``."""
    out = {}
    for seed in (SMOKE_SEEDS if smoke else SEEDS):
        for cut in (SMOKE_CUTS if smoke else CUTS):
            over = (SMOKE if smoke else []) + [f"cut={cut!r}", f"seed={seed}"]
            out[f"{cut}/seed{seed}"] = _common.load(NAME, "lenet_inversion.toml", over).validate()
        over = (SMOKE_LABELS if smoke else []) + [f"seed={seed}"]
        out[f"labels/seed{seed}"] = _common.load(NAME, "lenet_labels.toml", over).validate()
    return out


def matched_accuracy(pred, true, num_classes: int) -> float:
    """Accuracy under the best one-to-one renaming of predicted classes (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (np.asarray(pred), np.asarray(true)), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / len(true))


def label_inference(spec, attack_spec: str) -> dict:
    """Trains ``spec`` and runs ``attack_spec`` as the non-label party (our client) against
    the label party's last layer (our server). Returns accuracies, predictions, seconds."""
    import jax

    from split_workbench.attacks import build_attack
    from split_workbench.orchestration.runner import observation, prepare, train_stage

    with _common.Timer() as t_train:
        p = prepare(spec)
        fitted = train_stage(p)
    key = jax.random.fold_in(jax.random.key(spec.seed), 3)  # the runner's attack keys
    obs, _, y_t = observation(p, fitted.state, jax.random.fold_in(key, 0))
    sm = p.trainer.model
    # unsplit_labels' "client" is the party it attacks: the label party's layer, known
    # as an architecture (its initial parameters as a template, re-randomised by the attack).
    label_obs = dataclasses.replace(obs.only({"smash", "cut_grads"}), client_apply=sm.server.apply,
                                    client_init=sm.params["server"])
    attack = build_attack(attack_spec)
    with _common.Timer() as t_attack:
        pred = np.asarray(jax.block_until_ready(attack(label_obs, key=jax.random.fold_in(key, 10)).output))
    y = np.asarray(y_t)
    return {"accuracy_raw": float(np.mean(pred == y)),
            "accuracy_matched": matched_accuracy(pred, y, p.num_classes),
            "test_accuracy": float(p.trainer.evaluate(fitted.state.params, p.x_test, p.y_test)["accuracy"]),
            "train_seconds": t_train.seconds, "attack_seconds": t_attack.seconds,
            "pred": pred.tolist(), "true": y.tolist()}


def _baselines(x) -> dict:
    """MSE/SSIM of the attack's start (constant 0.5) and of an all-black image."""
    import jax.numpy as jnp

    from split_workbench import metrics

    x = jnp.asarray(x, jnp.float32)
    out = {}
    for name, value in (("grey", 0.5), ("black", 0.0)):
        guess = jnp.full_like(x, value)
        out[f"{name}/mse"] = float(metrics.mse(guess, x).mean())
        out[f"{name}/ssim"] = float(metrics.ssim(guess, x).mean())
    return out


def run(out_dir: Path, smoke: bool) -> dict:
    from scipy.stats import spearmanr

    cuts, seeds = (SMOKE_CUTS, SMOKE_SEEDS) if smoke else (CUTS, SEEDS)
    results, recons, per_seed, labels = {}, {}, {}, {}
    all_specs = specs(smoke)
    for name, spec in all_specs.items():
        what, seed = name.split("/")
        if what == "labels":
            labels[seed] = label_inference(spec, SMOKE_LABEL_ATTACK if smoke else LABEL_ATTACK)
            continue
        rec = _common.run_spec(spec, out_dir)
        (r,) = rec["attacks"].values()
        row = {"mse": r["mse_mean"], "ssim": r["ssim_mean"], "psnr": r["psnr_mean"],
               "attack_seconds": r["seconds"], "test_accuracy": rec["metrics"]["test_accuracy"],
               "train_seconds": rec["timings"]["train"]}
        per_seed[(what, seed)] = row
        for k in ("mse", "ssim", "psnr"):
            results[f"{what}/{seed}/{k}"] = row[k]
        npz = np.load(Path(out_dir) / "runs" / rec["hash"] / "reconstructions.npz")
        recons[(what, seed)] = {k: npz[k] for k in npz.files}
    for cut in cuts:
        rows = [per_seed[(cut, f"seed{s}")] for s in seeds]
        for k in ("mse", "ssim", "psnr", "test_accuracy"):
            results[f"{cut}/{k}"] = float(np.mean([r[k] for r in rows]))
        results[f"{cut}/mse_std"] = float(np.std([r["mse"] for r in rows]))
        results[f"{cut}/attack_seconds"] = float(np.sum([r["attack_seconds"] for r in rows]))
        results[f"{cut}/train_seconds"] = float(np.sum([r["train_seconds"] for r in rows]))
    first = [c for c in cuts if c in FIRST_BLOCK]
    deeper = [c for c in cuts if c not in FIRST_BLOCK]
    results["first_block/mse_max"] = max(results[f"{c}/mse"] for c in first)
    results["first_block/ssim_min"] = min(results[f"{c}/ssim"] for c in first)
    results["deeper/mse_min"] = min(results[f"{c}/mse"] for c in deeper)
    results["deeper/ssim_max"] = max(results[f"{c}/ssim"] for c in deeper)
    depth = np.arange(len(cuts))
    results["depth_spearman/mse"] = float(spearmanr(depth, [results[f"{c}/mse"] for c in cuts])[0])
    results["depth_spearman/ssim"] = float(spearmanr(depth, [results[f"{c}/ssim"] for c in cuts])[0])
    base = [_baselines(recons[(cuts[0], f"seed{s}")]["original"]) for s in seeds]
    for k in base[0]:
        results[k] = float(np.mean([b[k] for b in base]))

    for seed, lab in labels.items():
        for k in ("accuracy_raw", "accuracy_matched", "test_accuracy"):
            results[f"labels/{seed}/{k}"] = lab[k]
    for k in ("accuracy_raw", "accuracy_matched", "test_accuracy", "train_seconds", "attack_seconds"):
        results[f"labels/{k}"] = float(np.mean([lab[k] for lab in labels.values()]))
    results["labels/accuracy_matched_min"] = float(min(lab["accuracy_matched"] for lab in labels.values()))
    (Path(out_dir) / "labels.json").write_text(json.dumps(
        {"attack": SMOKE_LABEL_ATTACK if smoke else LABEL_ATTACK, "runs": labels}, indent=1, sort_keys=True))
    _figures(results, recons, cuts, seeds, out_dir)
    return results


def _figures(results, recons, cuts, seeds, out_dir):
    plt = _common.pyplot()
    paper = _common.expected(NAME)["paper"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    x = np.arange(len(cuts))
    for ax, metric, label in ((axes[0], "mse", "MSE on [0, 1] (lower = more leakage)"),
                              (axes[1], "ssim", "SSIM (higher = more leakage)")):
        for s in seeds:
            ax.plot(x, [results[f"{c}/seed{s}/{metric}"] for c in cuts], "o", color="C0", alpha=0.45, ms=4,
                    label="ours, per seed" if s == seeds[0] else None)
        ax.plot(x, [results[f"{c}/{metric}"] for c in cuts], "-", color="C0", lw=2, label="ours, mean")
        for name, style in (("grey", ":"), ("black", "--")):
            ax.axhline(results[f"{name}/{metric}"], color="gray", ls=style, lw=1,
                       label={"grey": "constant 0.5 (attack start)", "black": "all-black image"}[name])
        theirs = [(i, paper[f"{c}/{metric}"]) for i, c in enumerate(cuts) if f"{c}/{metric}" in paper]
        if theirs:
            ax.plot(*zip(*theirs), "k_", ms=16, mew=2, label="paper")
        ax.set_xticks(x, cuts, fontsize=8)
        ax.set_xlabel("cut (last client block), shallow -> deep", fontsize=8)
        ax.set_title(label, fontsize=8)
    axes[0].text(0.02, 0.90, "paper: no per-cut MNIST MSE recorded (PAPERS.md)", transform=axes[0].transAxes,
                 fontsize=6, va="top")
    axes[0].legend(fontsize=6, loc="lower right")
    ax = axes[2]
    vals = [results["labels/accuracy_raw"], results["labels/accuracy_matched"]]
    ax.bar([0, 1], vals, 0.6, color=["C7", "C0"])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=7)
    ax.plot([1], [paper["labels/accuracy"]], "k_", ms=22, mew=2, label="paper")
    ax.axhline(0.1, color="gray", ls=":", lw=1, label="chance")
    ax.set_xticks([0, 1], ["raw", "up to\npermutation"], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("label inference, 100 samples", fontsize=8)
    ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Erdogan et al. 2022 (UnSplit), He LeNet on mnist10k: inversion by cut depth "
                 "(architecture-only attacker) and label inference", fontsize=9)
    _common.save_figure(fig, out_dir, "quality_by_cut")

    seed = f"seed{seeds[0]}"
    rows = ["original", *cuts]
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 0.75 * len(rows)))
    for ax, row in zip(np.atleast_1d(axes), rows):
        images = recons[(cuts[0], seed)]["original"] if row == "original" else \
            next(v for k, v in recons[(row, seed)].items() if k != "original")
        text = row if row == "original" else \
            f"{row}\nMSE {results[f'{row}/{seed}/mse']:.3f}\nSSIM {results[f'{row}/{seed}/ssim']:.2f}"
        _common.image_strip(ax, images, text)
    fig.suptitle(f"UnSplit reconstructions by cut depth ({seed})", fontsize=8)
    _common.save_figure(fig, out_dir, "reconstructions")
