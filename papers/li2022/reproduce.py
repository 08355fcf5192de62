"""Li et al. 2022: label leakage from the cut gradients of two-party split learning (norm
and cosine attacks) and two gradient-noise defenses (isotropic Gaussian, max-norm), on
Fashion-MNIST "Shirt vs rest" standing in for Criteo.

Threat model: the client (non-label party) reads the per-example cut gradients it receives
during training; the server (label party) holds the binary, imbalanced labels. At each
milestone step the wire is tapped for ``window`` consecutive steps; the leak AUC of a step is
the ROC-AUC of the attack's scores on that batch against its true labels, and a milestone's
leak AUC is the mean over its window. Utility is the test ROC-AUC of the trained model.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np

import _common

NAME = "li2022"
ATTACKS = ("norm", "cosine")


def protocol() -> dict:
    return tomllib.loads((_common.PAPERS_DIR / NAME / "protocol.toml").read_text())


def base_spec(smoke: bool):
    """fmnist_mlp.toml with the mode's overrides (validated)."""
    p = protocol()
    return _common.load(NAME, "fmnist_mlp.toml", p["smoke" if smoke else "full"]["spec"]).validate()


def binary_task(positive: int, train_size: int | None = None):
    """Fashion-MNIST relabelled ``y -> (y == positive)``: (x_train, y_train, x_test, y_test)."""
    from split_workbench.data import load

    ds = load("fashion-mnist")
    x, y = ds.x_train, (ds.y_train == positive).astype(np.int32)
    if train_size is not None:
        x, y = x[:train_size], y[:train_size]
    return x, y, ds.x_test, (ds.y_test == positive).astype(np.int32)


def trainer_for(spec, defenses, *, seed: int):
    """The split trainer of ``spec`` for the binary task, with ``defenses`` on the wire.

    ``spec.data`` names Fashion-MNIST (10 classes); the task relabels it to 2, so the spec is
    built without the binary-only defenses and the built object then gets the task's class
    count and the defenses (built from the same registry)."""
    import dataclasses

    from split_workbench.defenses import build_defense
    from split_workbench.orchestration.runner import build_trainer

    built = dataclasses.replace(spec, seed=seed, defenses=()).build()
    built = dataclasses.replace(built, num_classes=2, defenses=tuple(build_defense(d) for d in defenses))
    return build_trainer(built, (28, 28, 1))


def tap_steps(milestones, window: int) -> tuple[int, ...]:
    return tuple(sorted({m + i for m in milestones for i in range(window)}))


def leak_aucs(tap_list, milestones, window: int) -> tuple[dict, dict]:
    """Per milestone and attack, the mean per-batch leak AUC over the window; and the received
    gradient norms of positives and negatives over all tapped steps (for the histogram)."""
    import jax.numpy as jnp

    from split_workbench.attacks.label_leak import cosine_scores, norm_scores
    from split_workbench.metrics import roc_auc

    steps = np.concatenate([np.asarray(t.steps) for t in tap_list])
    g_TxBxD = np.concatenate([np.asarray(t.cut_grads) for t in tap_list])
    y_TxB = np.concatenate([np.asarray(t.labels) for t in tap_list])
    index = {int(s): i for i, s in enumerate(steps)}
    out = {}
    for m in milestones:
        for attack, score in (("norm", norm_scores), ("cosine", cosine_scores)):
            # the cosine attack's reference direction is that of one step's model: one batch at a time
            per_step = [float(roc_auc(score(jnp.asarray(g_TxBxD[index[m + i]])), y_TxB[index[m + i]]))
                        for i in range(window)]
            out[(attack, m)] = float(np.nanmean(per_step))
    norms = np.linalg.norm(g_TxBxD.reshape(*y_TxB.shape, -1), axis=-1)
    return out, {"pos": norms[y_TxB == 1], "neg": norms[y_TxB == 0]}


def test_utility(trainer, params, x_test, y_test) -> dict:
    import jax
    import jax.numpy as jnp

    from split_workbench.metrics import roc_auc

    logits = jax.jit(trainer.model.apply)(params, jnp.asarray(x_test))
    return {"test_auc": float(roc_auc(jax.nn.softmax(logits)[:, 1], y_test)),
            "test_accuracy": float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y_test)))}


def train_arm(spec, defenses, data, *, milestones, window: int, seeds=(0,)) -> dict:
    """Trains one arm once per seed (one trainer, so the jitted epochs compile once) and
    returns per-seed leak AUCs, utility, gradient norms and seconds."""
    import jax

    from split_workbench.training import fit

    x, y, x_test, y_test = data
    trainer = trainer_for(spec, defenses, seed=seeds[0])
    taps = tap_steps(milestones, window)
    runs = []
    for seed in seeds:
        with _common.Timer() as t:
            params0 = trainer_for(spec, (), seed=seed).model.params  # seed's initialisation
            res = fit(trainer, x, y, epochs=spec.epochs, batch_size=spec.batch_size,
                      key=jax.random.fold_in(jax.random.key(seed), 1), tap_steps=taps, state=trainer.init(params0))
            jax.block_until_ready(res.state.params)
        aucs, norms = leak_aucs(res.taps, milestones, window)
        runs.append({"aucs": aucs, "norms": norms, "seconds": t.seconds,
                     **test_utility(trainer, res.state.params, x_test, y_test)})
    return {"runs": runs}


def summarise(name: str, arm: dict, milestones, paper_steps) -> dict:
    """Flat results of one arm: means over seeds (and their std when there are several)."""
    runs, r = arm["runs"], {}

    def put(key, values):
        r[f"{name}/{key}"] = float(np.mean(values))
        if len(values) > 1:
            r[f"{name}/{key}_std"] = float(np.std(values))

    for attack in ATTACKS:
        for m in milestones:
            put(f"{attack}/step{m}", [u["aucs"][(attack, m)] for u in runs])
        per_run = [[u["aucs"][(attack, m)] for m in milestones] for u in runs]
        put(f"{attack}/mean", [np.mean(v) for v in per_run])
        # the attacker may not know which side of 0.5 a defense pushed the scores to:
        # the two-sided figure max(AUC, 1 - AUC) counts a flipped ranking as leakage
        put(f"{attack}/mean_two_sided", [np.mean(np.maximum(v, 1 - np.asarray(v))) for v in per_run])
        early = [m for m in milestones if m in paper_steps]
        if early:
            put(f"{attack}/paper_steps_mean", [np.mean([u["aucs"][(attack, m)] for m in early]) for u in runs])
    put("test_auc", [u["test_auc"] for u in runs])
    put("test_accuracy", [u["test_accuracy"] for u in runs])
    put("grad_norm_pos_median", [np.median(u["norms"]["pos"]) for u in runs])
    put("grad_norm_neg_median", [np.median(u["norms"]["neg"]) for u in runs])
    r[f"{name}/train_seconds"] = float(np.sum([u["seconds"] for u in runs]))
    return r


def run(out_dir: Path, smoke: bool) -> dict:
    p = protocol()
    mode = p["smoke" if smoke else "full"]
    spec = base_spec(smoke)
    data = binary_task(p["positive_class"], spec.train_size)
    results = {"positives_fraction": float(np.mean(data[1])), "steps_per_epoch": data[0].shape[0] // spec.batch_size,
               "epochs": spec.epochs, "seeds": len(mode["seeds"])}
    arms = {}
    for a in p["arm"]:
        arms[a["name"]] = train_arm(spec, a["defenses"], data, milestones=mode["milestones"], window=p["window"],
                                    seeds=tuple(mode["seeds"]))
        results.update(summarise(a["name"], arms[a["name"]], mode["milestones"], p["paper_steps"]))
    _figures(results, arms, mode["milestones"], out_dir)
    return results


def _figures(results, arms, milestones, out_dir):
    plt = _common.pyplot()
    paper = _common.expected(NAME)["paper"]
    names = list(arms)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, attack in zip(axes, ATTACKS):
        for i, n in enumerate(names):
            ys = [results[f"{n}/{attack}/step{m}"] for m in milestones]
            ax.plot(milestones, ys, "o-", color=f"C{i}", label=n, ms=4)
        if attack == "norm":
            ks = sorted(paper, key=lambda k: int(k.rsplit("step", 1)[1]))
            ax.plot([int(k.rsplit("step", 1)[1]) for k in ks], [paper[k] for k in ks], "k*", ms=10,
                    label="paper (Criteo, none)")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{attack} attack")
    axes[0].set_ylabel("leak AUC (mean over 8 batches)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Li et al. 2022 on Fashion-MNIST shirt-vs-rest: leak AUC over training, by defense", fontsize=9)
    _common.save_figure(fig, out_dir, "leak_auc_over_training")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, n in enumerate(names):
        u = results[f"{n}/test_auc"]
        ax.plot(u, results[f"{n}/norm/mean_two_sided"], "o", color=f"C{i}", label=f"{n} (norm)")
        ax.plot(u, results[f"{n}/cosine/mean_two_sided"], "^", color=f"C{i}", label=f"{n} (cosine)")
    ax.set_xlabel("test AUC (utility)")
    ax.set_ylabel("leak AUC, two-sided, mean over milestones")
    ax.set_title("privacy-utility trade-off (circle: norm, triangle: cosine)", fontsize=9)
    ax.legend(fontsize=6)
    _common.save_figure(fig, out_dir, "privacy_utility")

    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.6))
    for ax, n in zip(axes, names):
        norms = arms[n]["runs"][0]["norms"]
        lo = max(min(norms["pos"].min(), norms["neg"].min()), 1e-12)
        bins = np.logspace(np.log10(lo), np.log10(max(norms["pos"].max(), norms["neg"].max())), 40)
        ax.hist(norms["neg"], bins, alpha=0.6, density=True, label="negative")
        ax.hist(norms["pos"], bins, alpha=0.6, density=True, label="positive")
        ax.set_xscale("log")
        ax.set_title(n, fontsize=8)
        ax.set_yticks([])
    axes[0].legend(fontsize=6)
    fig.suptitle("received cut-gradient norms at the tapped steps (seed 0)", fontsize=9)
    _common.save_figure(fig, out_dir, "grad_norms")
