"""DP accounting yardstick: TF Privacy's MNIST DP-SGD epsilons from defenses.accounting."""

from __future__ import annotations

import tomllib
from pathlib import Path

import _common

NAME = "dp_yardstick"
METHODS = ("rdp_classic", "rdp", "pld")


def cases() -> dict:
    return tomllib.loads((_common.PAPERS_DIR / NAME / "yardstick.toml").read_text())


def run(out_dir: Path, smoke: bool) -> dict:
    from split_workbench.defenses.accounting import Schedule, calibrate_noise, epsilon

    cfg = cases()
    n, b, delta = cfg["dataset_size"], cfg["batch_size"], cfg["delta"]
    results = {}
    for c in cfg["case"]:
        sched = Schedule.from_epochs(c["epochs"], b, n, sampling=cfg["sampling"])
        results[f"{c['name']}/steps"] = sched.steps
        for m in METHODS:
            results[f"{c['name']}/eps_{m}"] = epsilon(c["noise_multiplier"], delta, sched, method=m)
        # round trip: the noise calibrated for the classic epsilon is the tutorial's multiplier
        results[f"{c['name']}/calibrated_noise"] = calibrate_noise(
            results[f"{c['name']}/eps_rdp_classic"], delta, sched, method="rdp_classic", rtol=1e-4)

    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [1, 2, 5, 10, 20, 30, 45, 60] if not smoke else [1, 10, 30, 60]
    for c, color in zip(cfg["case"], ("C0", "C1", "C2")):
        for m, style in (("rdp_classic", "-"), ("rdp", "--"), ("pld", ":")):
            if smoke and m == "pld":
                continue
            ys = [epsilon(c["noise_multiplier"], delta, Schedule.from_epochs(e, b, n), method=m) for e in epochs]
            ax.plot(epochs, ys, style, color=color, label=f"sigma={c['noise_multiplier']} {m}")
        ax.plot([c["epochs"]], [_common.expected(NAME)["paper"][c["name"]]], "k*", ms=10)
    ax.set_xlabel("epochs (N=60,000, batch 256, Poisson q=256/60000)")
    ax.set_ylabel("epsilon at delta=1e-5")
    ax.set_yscale("log")
    ax.set_title("DP-SGD yardstick: TF Privacy tutorial (stars) vs defenses.accounting")
    ax.legend(fontsize=6, ncol=3)
    _common.save_figure(fig, out_dir, "epsilon_vs_epochs")
    return results
