"""Pasquini, Ateniese, Bernaschi 2021 (CCS): the feature-space hijacking attack (FSHA).

A malicious server trains a pilot network and its decoder on its public set and a WGAN-GP
critic between pilot outputs and the client's smash, and sends the client the critic's
gradient instead of the task gradient; the client's smash drifts into the pilot's feature
space, where the decoder inverts it. The attack's own score over training is the MSE,
on the paper's [-1, 1] pixel scale, between private targets and the decoding of their
smash, every ``every`` iterations (the paper averages it over windows of 500 iterations;
we score the state at the end of each window).

Arms (protocol.toml): the plain attack; the "mangled" public set without class 0; the
client with NoPeek (alpha1 = 1e4) against an attacker scaling its gradient by 50; Gaussian
noise and DP on the smash; property inference (a classifier on the pilot space reading the
private labels). The ``paper`` mode is the paper's setting, sized for a GPU; ``full`` is
what this 2-core CPU affords, and ``smoke`` runs in CI.
"""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np

import _common

NAME = "pasquini2021"


def protocol() -> dict:
    return tomllib.loads((_common.PAPERS_DIR / NAME / "protocol.toml").read_text())


def arm_spec(base, mode: dict, arm: dict):
    extra = ", ".join(a for a in (mode["server_args"], arm.get("extra", "")) if a)
    return dataclasses.replace(base, server=f"fsha({extra})", defenses=tuple(arm.get("defenses", ())),
                               attacks=tuple(arm.get("attacks", ("fsha",))),
                               model_kwargs={**base.model_kwargs, "width": int(mode["width"])})


def curve(spec, *, iterations: int, every: int, progress=None) -> dict:
    """One FSHA run scored every ``every`` iterations: the MSE on [-1, 1] (decoder) or the
    label accuracy (property classifier) on the spec's private targets, and the wall time."""
    import time

    import jax
    import jax.numpy as jnp

    from split_workbench.attacks.evaluate import score_inversion
    from split_workbench.orchestration.runner import prepare
    from split_workbench.training import party_key

    # each window is one "epoch" of `every` steps over a fresh slice of the private set
    p = prepare(dataclasses.replace(spec, epochs=1).validate())
    tr = p.trainer
    xt, yt = jnp.asarray(p.x_train[: spec.targets]), np.asarray(p.y_train[: spec.targets])
    n = every * spec.batch_size
    if n > p.x_train.shape[0]:
        reps = -(-n // p.x_train.shape[0])
        pool_x, pool_y = np.concatenate([p.x_train] * reps), np.concatenate([p.y_train] * reps)
    else:
        pool_x, pool_y = p.x_train, p.y_train
    key = jax.random.fold_in(jax.random.key(spec.seed), 1)
    state = tr.init(key=party_key(key))
    head = tr.server.head

    def score(st):
        smash = tr.send_smash(st.params["client"], xt, key=jax.random.key(0), wire="train")
        if head == "decoder":
            rec = tr.server.decode(tr.model, st.parties["server"], smash)
            sc = score_inversion(rec, xt)
            return {"mse_paper": 4.0 * sc["mse_mean"], "ssim": sc["ssim_mean"]}
        pred = np.asarray(jnp.argmax(tr.server.classify(tr.model, st.parties["server"], smash), -1))
        return {"label_accuracy": float(np.mean(pred == yt))}

    points = [{"iteration": 0, **score(state)}]
    t0 = time.perf_counter()
    compile_s = None
    for w in range(iterations // every):
        start = (w * n) % pool_x.shape[0]
        idx = (np.arange(n) + start) % pool_x.shape[0]
        t = time.perf_counter()
        state, metrics, _ = tr.epoch(state, jnp.asarray(pool_x[idx]), jnp.asarray(pool_y[idx]),
                                     key=jax.random.fold_in(key, w), batch_size=spec.batch_size)
        jax.block_until_ready(state.params)
        if compile_s is None:
            compile_s = time.perf_counter() - t
        loss = float(metrics.loss.mean())
        if not np.isfinite(loss) or not np.isfinite(float(state.parties["server"]["d_loss"])):
            raise FloatingPointError(f"FSHA diverged at iteration {(w + 1) * every} ({spec.server}); "
                                     "lower lr_disc or lr")
        points.append({"iteration": (w + 1) * every, **score(state),
                       "critic_loss": float(state.parties["server"]["d_loss"]),
                       "public_loss": float(state.parties["server"]["ae_loss"])})
        if progress is not None:
            last = points[-1]
            progress(f"{spec.data} {spec.server[:40]} it {last['iteration']}: "
                     + (f"mse {last['mse_paper']:.4f}" if "mse_paper" in last else f"acc {last['label_accuracy']:.3f}"))
    seconds = time.perf_counter() - t0
    steady = (seconds - compile_s) / max(iterations - every, 1) if iterations > every else None
    return {"points": points, "seconds": seconds,
            "iterations_per_second": (1.0 / steady) if steady else None,
            "test_accuracy": tr.evaluate(state.params, p.x_test, p.y_test)["accuracy"]}


def mean_image_mse(spec) -> float:
    """The floor: the MSE on [-1, 1] of the private set's mean image against the targets."""
    import jax.numpy as jnp

    from split_workbench.attacks.evaluate import score_inversion
    from split_workbench.orchestration.runner import prepare

    p = prepare(dataclasses.replace(spec, server="honest", attacks=(), defenses=()))
    xt = p.x_train[: spec.targets]
    mean = np.broadcast_to(p.x_train.mean(0), xt.shape)
    return 4.0 * score_inversion(jnp.asarray(mean), jnp.asarray(xt))["mse_mean"]


PAPER_MNIST = {1000: 0.1102, 2500: 0.058, 5000: 0.032, 7500: 0.022, 9500: 0.0193}


def figure(curves: dict, out_dir, floors: dict | None = None) -> None:
    """MSE on [-1, 1] against the iteration, one panel per dataset: every decoder arm, the
    mean-image floor (dashed) and, on MNIST-like data, the paper's FSHA points (stars)."""
    plt = _common.pyplot()
    datas = list(dict.fromkeys(d for d, _ in curves))
    fig, axes = plt.subplots(1, len(datas), figsize=(3.4 * len(datas), 2.8), squeeze=False)
    for ax, data in zip(axes[0], datas):
        for (d, arm), c in curves.items():
            if d != data or "mse_paper" not in c["points"][0]:
                continue
            it = [pt["iteration"] for pt in c["points"]]
            ax.plot(it, [pt["mse_paper"] for pt in c["points"]], marker="o", ms=2.5, lw=1.2, label=arm)
        if floors and data in floors:
            ax.axhline(floors[data], color="0.4", ls="--", lw=1, label="mean image")
        if data.startswith("mnist"):
            ax.plot(list(PAPER_MNIST), list(PAPER_MNIST.values()), "k*", ms=5, label="paper (MNIST)")
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("reconstruction MSE ([-1, 1])", fontsize=8)
        ax.set_title(data, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6.5, loc="upper right", frameon=False)
    fig.tight_layout()
    _common.save_figure(fig, out_dir, "fsha_mse_vs_iteration")


def replot(out_dir) -> None:
    """Redraws the figure from ``curves.json`` and ``results.json`` in ``out_dir``."""
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    raw = json.loads((out_dir / "curves.json").read_text())
    res = json.loads((out_dir / "results.json").read_text())["results"]
    curves = {tuple(k.split("/", 1)): v for k, v in raw.items()}
    floors = {k.split("/")[0]: v for k, v in res.items() if k.endswith("/mean_image/mse_paper")}
    figure(curves, out_dir, floors)


def run(out_dir, smoke: bool, mode_name: str | None = None) -> dict:
    import json

    from split_workbench.progress import Progress

    proto = protocol()
    mode = proto[mode_name or ("smoke" if smoke else "full")]
    arms = {a["name"]: a for a in proto["arm"]}
    runs = [tuple(r) for r in mode["runs"]]
    unknown = sorted({a for _, a in runs} - set(arms))
    if unknown:
        raise ValueError(f"protocol.toml: runs name unknown arms {unknown}; known: {sorted(arms)}")
    bar = Progress(len(runs) * (mode["iterations"] // mode["every"]), "FSHA windows", enabled=True)
    results, curves = {}, {}
    for f, a_name in runs:
        base = _common.load(NAME, f, mode["spec"]).validate()
        spec = arm_spec(base, mode, arms[a_name])
        c = curve(spec, iterations=mode["iterations"], every=mode["every"], progress=lambda msg: bar.update(1, msg))
        curves[(base.data, a_name)] = c
        for pt in c["points"]:
            for k in ("mse_paper", "label_accuracy"):
                if k in pt:
                    results[f"{base.data}/{a_name}/{k}@{pt['iteration']}"] = pt[k]
        last = c["points"][-1]
        for k in ("mse_paper", "label_accuracy"):
            if k in last:
                results[f"{base.data}/{a_name}/{k}@last"] = last[k]
        results[f"{base.data}/{a_name}/test_accuracy"] = c["test_accuracy"]
        if f"{base.data}/mean_image/mse_paper" not in results:
            results[f"{base.data}/mean_image/mse_paper"] = mean_image_mse(base)
        if c["iterations_per_second"]:
            results[f"{base.data}/{a_name}/iterations_per_second"] = c["iterations_per_second"]
    (out_dir / "curves.json").write_text(json.dumps({f"{d}/{a}": c for (d, a), c in curves.items()}, indent=1))
    figure(curves, out_dir, {k.split("/")[0]: v for k, v in results.items() if k.endswith("/mean_image/mse_paper")})
    return results


if __name__ == "__main__":
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description="FSHA curves; --mode paper is the paper's setting (GPU-sized)")
    parser.add_argument("--mode", choices=("smoke", "full", "paper"), default="paper")
    parser.add_argument("--out", default=None, help="folder for results.json and figures (default results/<mode>)")
    a = parser.parse_args()
    out = Path(a.out) if a.out else _common.PAPERS_DIR / NAME / "results" / a.mode
    out.mkdir(parents=True, exist_ok=True)
    with _common.Timer() as t:
        res = run(out, a.mode == "smoke", a.mode)
    summary = _common.write_summary(out, NAME, res, smoke=a.mode == "smoke", seconds=t.seconds)
    sys.stdout.write(f"wrote {out / 'results.json'} ({len(summary['targets'])} targets, "
                     f"{sum(c['ok'] for c in summary['claims'])}/{len(summary['claims'])} claims hold)\n")
