"""Detecting a hijacking server: FSHA and its adaptive variants against SplitGuard (Erdogan
et al., WPES 2022), SplitOut (Erdogan et al., CANS 2024) and the Gradients Scrutinizer
(Fu et al., NDSS 2023), all as client parties of the same split run.

Each cell of the table is one attacker x one detector, over seeds. An attacker is a server
party (with the client's defenses it meets); a detector is a client party that raises an
alarm and stops training. Per cell:

- ``tpr``: the fraction of seeds whose run raised an alarm (attackers);
  ``fpr``: the same against the honest server;
- ``steps_to_alarm``: the mean global step of the first alarm over the seeds that alarmed;
- ``ssim``/``mse``: the hijacker's reconstruction of 64 private targets from the state in
  which training stopped (at the alarm, or at the end of the run without one); with the
  mean image of the private set as the floor an attack must beat to mean anything;
- ``test_accuracy``: the split model's, and for SplitGuard its cost, the honest server's
  accuracy without a detector minus with it (its fake batches are not applied by the
  client but train the server).

The protocol (``protocol.toml``) names the attackers, detectors, seeds and run lengths.
"""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np

import _common

NAME = "hijack_detection"


def protocol() -> dict:
    return tomllib.loads((_common.PAPERS_DIR / NAME / "protocol.toml").read_text())


def run_cell(base, attacker: dict, detector: str, seed: int, *, data: str) -> dict:
    """One run: the spec with the attacker's server and defenses and the detector's client."""
    import jax
    import jax.numpy as jnp

    from split_workbench.attacks.evaluate import score_inversion
    from split_workbench.orchestration.runner import prepare
    from split_workbench.training import fit

    spec = dataclasses.replace(base, data=data, seed=seed, server=attacker["server"], client=detector,
                               defenses=tuple(attacker.get("defenses", ())))
    p = prepare(spec)
    tr = p.trainer
    key = jax.random.fold_in(jax.random.key(seed), 1)
    res = fit(tr, p.x_train, p.y_train, epochs=spec.epochs, batch_size=spec.batch_size, key=key,
              x_test=p.x_test, y_test=p.y_test)
    st = res.state
    out = {"test_accuracy": res.history[-1]["test_accuracy"], "steps": int(st.step), "alarm": False,
           "alarm_step": None}
    if detector != "honest":
        c = st.parties["client"]
        out["alarm"] = bool(c["alarm"])
        out["alarm_step"] = int(c["alarm_step"]) if bool(c["alarm"]) else None
    if getattr(tr.server, "name", "") == "fsha":
        xt = jnp.asarray(p.x_train[: spec.targets])
        smash = tr.send_smash(st.params["client"], xt, key=jax.random.key(0), wire="train")
        sc = score_inversion(tr.server.decode(tr.model, st.parties["server"], smash), xt)
        out.update(ssim=sc["ssim_mean"], mse=sc["mse_mean"])
    return out


def mean_image_floor(data: str, n: int) -> dict:
    import jax.numpy as jnp

    from split_workbench.attacks.evaluate import score_inversion
    from split_workbench.data import load

    x = load(data).x_train
    sc = score_inversion(jnp.asarray(np.broadcast_to(x.mean(0), x[:n].shape)), jnp.asarray(x[:n]))
    return {"ssim": sc["ssim_mean"], "mse": sc["mse_mean"]}


def summarise(runs: list[dict], attacker: str) -> dict:
    alarms = [r["alarm"] for r in runs]
    steps = [r["alarm_step"] for r in runs if r["alarm"]]
    row = {("fpr" if attacker == "honest" else "tpr"): float(np.mean(alarms)),
           "steps_to_alarm": float(np.mean(steps)) if steps else None,
           "test_accuracy": float(np.mean([r["test_accuracy"] for r in runs])),
           "seeds": len(runs)}
    if "ssim" in runs[0]:
        row.update(ssim=float(np.mean([r["ssim"] for r in runs])), mse=float(np.mean([r["mse"] for r in runs])))
    return row


def markdown(table: dict, floor: dict, data: str) -> str:
    lines = [f"**{data}** (mean-image floor: SSIM {floor['ssim']:.3f}, MSE {floor['mse']:.4f})", "",
             "| attacker | detector | TPR / FPR | steps to alarm | SSIM at stop | MSE at stop | test acc. |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (att, det), r in table.items():
        rate = f"FPR {r['fpr']:.2f}" if "fpr" in r else f"TPR {r['tpr']:.2f}"
        s2a = "-" if r["steps_to_alarm"] is None else f"{r['steps_to_alarm']:.0f}"
        ssim = f"{r['ssim']:.3f}" if "ssim" in r else "-"
        mse = f"{r['mse']:.4f}" if "mse" in r else "-"
        lines.append(f"| {att} | {det} | {rate} | {s2a} | {ssim} | {mse} | {r['test_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(tables: dict, out_dir) -> None:
    plt = _common.pyplot()
    datas = list(tables)
    fig, axes = plt.subplots(1, len(datas), figsize=(3.4 * len(datas), 2.8), squeeze=False)
    for ax, data in zip(axes[0], datas):
        table = tables[data]
        atts = sorted({a for a, _ in table}, key=list(dict.fromkeys(a for a, _ in table)).index)
        dets = [d for d in dict.fromkeys(d for _, d in table) if d != "none"]
        width = 0.8 / max(len(dets), 1)
        for j, det in enumerate(dets):
            vals = [table[(a, det)].get("tpr", table[(a, det)].get("fpr", 0.0)) for a in atts]
            ax.bar(np.arange(len(atts)) + j * width, vals, width, label=det)
        ax.set_xticks(np.arange(len(atts)) + width * (len(dets) - 1) / 2)
        ax.set_xticklabels(atts, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("alarm rate (FPR for honest)", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(data, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _common.save_figure(fig, out_dir, "alarm_rates")


def run(out_dir, smoke: bool) -> dict:
    from split_workbench.progress import Progress

    proto = protocol()
    mode = proto["smoke" if smoke else "full"]
    base = _common.load(NAME, "fmnist_mlp.toml", mode["spec"]).validate()
    attackers = {a["name"]: a for a in proto["attacker"] if a["name"] in mode["attackers"]}
    detectors = {d["name"]: d["client"] for d in proto["detector"] if d["name"] in mode["detectors"]}
    results, tables, md = {}, {}, []
    cells = [(data, a, d) for data in mode["data"] for a in attackers for d in detectors]
    bar = Progress(len(cells) * len(mode["seeds"]), "detection runs", enabled=True)
    for data in mode["data"]:
        table = {}
        for a_name, att in attackers.items():
            for d_name, det in detectors.items():
                runs = []
                for seed in mode["seeds"]:
                    runs.append(run_cell(base, att, det, seed, data=data))
                    bar.update(1, f"{data} {a_name} vs {d_name} seed {seed}")
                row = summarise(runs, a_name)
                table[(a_name, d_name)] = row
                for k, v in row.items():
                    if v is not None and k != "seeds":
                        results[f"{data}/{a_name}/{d_name}/{k}"] = v
        floor = mean_image_floor(data, base.targets)
        results[f"{data}/mean_image/ssim"], results[f"{data}/mean_image/mse"] = floor["ssim"], floor["mse"]
        if ("honest", "none") in table and "splitguard" in detectors:
            # the fake batches' cost alone: SplitGuard recording without stopping (a false
            # alarm that stops training would cost more, and is counted in the FPR)
            quiet = [run_cell(base, attackers["honest"], "splitguard(stop=False)", seed, data=data)
                     for seed in mode["seeds"]]
            acc = float(np.mean([r["test_accuracy"] for r in quiet]))
            results[f"{data}/splitguard/accuracy_cost"] = table[("honest", "none")]["test_accuracy"] - acc
            md_cost = (f"SplitGuard's fake batches, recording without stopping against the honest server: test "
                       f"accuracy {acc:.3f} vs {table[('honest', 'none')]['test_accuracy']:.3f} without a detector "
                       f"(cost {results[f'{data}/splitguard/accuracy_cost']:+.3f}).\n")
        else:
            md_cost = ""
        tables[data] = table
        md.append(markdown(table, floor, data) + "\n" + md_cost)
    (out_dir / "table.md").write_text("\n".join(md))
    figure(tables, out_dir)
    return results
