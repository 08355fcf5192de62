"""The measured split-vs-federated comparison: SL, SplitFed and FedAvg on the same clients.

``compare(out)`` trains vanilla split learning (peer hand-over), SplitFed V1 and FedAvg on
every model, client count and partition asked for, all from one key (same partitions,
same batches, same initial model, same optimizer, equal epochs), and writes:

* ``results.json``: every run's accounting and accuracy,
* ``comparison.md``: the classic federated-vs-split table with measured numbers, and a
  table of all runs,
* ``bytes_per_client.png`` / ``.pdf``: bytes per client per epoch vs K, measured points and
  the formula through them, with the crossover K where split learning becomes cheaper.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import optax
from matplotlib.figure import Figure

from split_workbench.data import load, subset
from split_workbench.models import MODELS, make_model
from split_workbench.split import split
from split_workbench.topology.accounting import NetworkModel
from split_workbench.topology.clients import Task, make_clients
from split_workbench.topology.fedavg import fedavg
from split_workbench.topology.sequential import same_optimizer_trainer, split_learning
from split_workbench.topology.splitfed import splitfed_v1

__all__ = ["CompareConfig", "compare", "SMOKE", "DEFAULT"]


@dataclass(frozen=True)
class CompareConfig:
    models: tuple = (("he2019-lenet", "relu2", {}), ("resnet18", "layer1.1", {"width": 4}))
    num_clients: tuple[int, ...] = (1, 5, 20, 100)
    alphas: tuple = (None, 0.5)  # None: IID; a number: Dirichlet(alpha)
    data: str = "fashion-mnist"
    n_train: int = 3000
    n_test: int = 1000
    epochs: int = 2
    batch_size: int = 10
    lr: float = 1e-3
    seed: int = 0
    network: NetworkModel = NetworkModel()
    resnet_n_train: int = 1000  # ResNet runs use the first ``resnet_n_train`` of the subset (CPU time)


SMOKE = CompareConfig(models=(("he2019-lenet", "relu2", {}), ("resnet18", "layer1.1", {"width": 2})),
                      num_clients=(1, 20, 100), alphas=(None,), n_train=2000, n_test=500, epochs=1,
                      resnet_n_train=1000)
DEFAULT = CompareConfig()


def _runs(cfg: CompareConfig, log):
    ds = load(cfg.data)
    key = jax.random.key(cfg.seed)
    pick = np.asarray(jax.random.permutation(jax.random.fold_in(key, 10), ds.num_train))[: cfg.n_train]
    ds = subset(ds, np.sort(pick), np.arange(min(cfg.n_test, ds.num_test)))
    opt = optax.adam(cfg.lr)
    records = []
    for name, cut, kwargs in cfg.models:
        n = cfg.resnet_n_train if name.startswith("resnet") else cfg.n_train
        sm = split(make_model(name, key=jax.random.fold_in(key, 1), input_shape=ds.input_shape,
                              num_classes=ds.num_classes, **kwargs), cut or MODELS[name].default_cut)
        tr = same_optimizer_trainer(sm, opt)
        for alpha in cfg.alphas:
            for k in cfg.num_clients:
                clients = make_clients(ds.y_train[:n], k, key=jax.random.fold_in(key, 2), batch_size=cfg.batch_size,
                                       alpha=alpha)
                task = Task.build(ds.x_train[:n], ds.y_train[:n], ds.x_test, ds.y_test, clients)
                for run in (lambda: split_learning(tr, task, epochs=cfg.epochs, key=key, network=cfg.network),
                            lambda: splitfed_v1(tr, task, epochs=cfg.epochs, key=key, network=cfg.network),
                            lambda: fedavg(sm, opt, task, epochs=cfg.epochs, key=key, network=cfg.network)):
                    t0 = time.perf_counter()
                    res = run()
                    s = res.summary()
                    s.update(model=name, cut=sm.cut, smash_size=sm.smash_size, partition=clients.scheme,
                             clients=clients.describe(), wall_seconds=time.perf_counter() - t0,
                             N=sm.param_counts["client"] + sm.param_counts["server"], eta_N=sm.param_counts["client"])
                    records.append(s)
                    log(f"{name:12s} {clients.scheme:14s} K={k:<3d} {s['topology']:20s} "
                        f"acc {s['test_accuracy']:.3f}  {s['bytes_per_epoch']['per_client_mean'] / 1e6:9.3f} MB/client/epoch"
                        f"  ({s['wall_seconds']:.1f} s)")
    return records


def crossover(rec_sl: dict) -> dict:
    """Per-client bytes per epoch of SL and FL as functions of K, from one SL run's p, q, N.

    SL (peer hand-over): every client sends and receives ``(2pq floats + p labels) / K`` on
    average plus ``2 eta N`` (receives the client part, sends it on); FL: ``2N``. So SL is
    cheaper per client once ``K > K* = (2 p q f + 4 p) / (2 f N (1 - eta))``.
    """
    p, q, f = rec_sl["samples_per_epoch"], rec_sl["smash_size"], 4
    n, eta_n = rec_sl["N"], rec_sl["eta_N"]
    data_bytes = 2 * p * q * f + 4 * p
    k_star = data_bytes / (2 * f * (n - eta_n))
    return {"data_bytes": data_bytes, "sl_weight_bytes": 2 * eta_n * f, "fl_bytes": 2 * n * f, "k_star": k_star}


def _mb(x):
    return f"{x / 1e6:.3f} MB"


def _fmt_flops(x):
    return f"{x / 1e9:.3f} GFLOP"


def _classic_table(rs: list[dict], cfg: CompareConfig) -> str:
    sl, sfl, fl = (next(r for r in rs if r["topology"].startswith(t)) for t in ("SL", "SplitFed", "FedAvg"))
    k, net = sl["num_clients"], cfg.network
    q, p = sl["smash_size"], sl["samples_per_epoch"]
    rows = [
        ("Model location",
         f"whole model on every client: {fl['N']:,} params per client; server holds the average",
         f"client part {sl['eta_N']:,} params (eta = {sl['eta_N'] / sl['N']:.3f}); server part {sl['N'] - sl['eta_N']:,}",
         f"as SL; the server part is shared, each client trains its own client part"),
        ("What is shared",
         f"weights: {_mb(fl['bytes_per_epoch']['by_kind']['weights'])} per round in all (2KN floats)",
         f"cut activations + gradients ({q} floats/sample, {_mb(sl['bytes_per_epoch']['by_kind']['activations'] + sl['bytes_per_epoch']['by_kind']['gradients'])}), "
         f"labels ({_mb(sl['bytes_per_epoch']['by_kind']['labels'])}), client weights hand-over ({_mb(sl['bytes_per_epoch']['by_kind']['weights'])})",
         f"activations + gradients + labels as SL; client weights to the fed server ({_mb(sfl['bytes_per_epoch']['by_kind']['weights'])})"),
        ("Client compute (per client per epoch)",
         *(f"{_fmt_flops(r['client_flops_per_epoch_mean'])}, {r['client_compute_seconds_per_epoch_mean']:.2f} s simulated"
           for r in (fl, sl, sfl))),
        ("Communication (bytes per client per epoch; total)",
         *(f"{_mb(r['bytes_per_epoch']['per_client_mean'])}; {_mb(r['bytes_per_epoch']['total_bytes'])}" for r in (fl, sl, sfl))),
        ("Parallelism (simulated wall time per epoch)",
         f"parallel: {fl['sim_seconds_per_epoch']:.1f} s",
         f"sequential (clients take turns): {sl['sim_seconds_per_epoch']:.1f} s",
         f"parallel: {sfl['sim_seconds_per_epoch']:.1f} s"),
        (f"Test accuracy after {sl['epochs']} epoch(s)", *(f"{r['test_accuracy']:.3f}" for r in (fl, sl, sfl))),
    ]
    out = [f"### {sl['model']} (cut {sl['cut']}), K = {k}, {sl['partition']}, p = {p} samples/epoch\n",
           "| | Federated learning (FedAvg) | Split learning (round-robin) | SplitFed V1 |", "| --- | --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out) + "\n"


def _write(out: Path, records: list[dict], cfg: CompareConfig, info: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(r["model"] for r in records))
    kmax = max(cfg.num_clients)
    cross = {}
    md = ["# Split learning vs federated learning, measured\n",
          f"Data: {cfg.data} subset ({cfg.n_train} train, ResNet runs {cfg.resnet_n_train}; {cfg.n_test} test), "
          f"batch {cfg.batch_size}, Adam lr {cfg.lr}, {cfg.epochs} epoch(s), seed {cfg.seed}. Bytes are float32 "
          "as moved by the protocol; p counts full batches only (each client drops n_k mod B per epoch). "
          f"Network model: {cfg.network.as_dict()} (each client has its own link).\n"]
    for m in models:
        iid = [r for r in records if r["model"] == m and r["partition"] == "iid"]
        first = iid or [r for r in records if r["model"] == m]
        md.append(_classic_table([r for r in first if r["num_clients"] == kmax], cfg))
        sl_runs = [r for r in first if r["topology"].startswith("SL")]
        cross[m] = crossover(sl_runs[0]) if sl_runs else None
        if cross[m]:
            md.append(f"Crossover ({m}, {first[0]['partition']}): split learning moves fewer bytes per client than "
                      f"FedAvg once K > {cross[m]['k_star']:.1f} clients (for this p and q).\n")
    md += ["## All runs\n", "| model | partition | K | topology | bytes/client/epoch | total bytes/epoch | "
           "client GFLOP/epoch | server GFLOP/epoch | sim. s/epoch | test acc |", "|" + " --- |" * 10]
    for r in records:
        b = r["bytes_per_epoch"]
        md.append(f"| {r['model']} | {r['partition']} | {r['num_clients']} | {r['topology']} | {_mb(b['per_client_mean'])} | "
                  f"{_mb(b['total_bytes'])} | {r['client_flops_per_epoch_mean'] / 1e9:.4f} | "
                  f"{r['server_flops_per_epoch'] / 1e9:.3f} | {r['sim_seconds_per_epoch']:.1f} | {r['test_accuracy']:.3f} |")
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    _plot(out, records, cross)
    payload = {"config": {**{k: v for k, v in cfg.__dict__.items() if k != "network"},
                          "network": cfg.network.as_dict()}, "machine": info, "crossover": cross, "runs": records}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    return payload


def _plot(out: Path, records: list[dict], cross: dict) -> None:

    models = list(cross)
    fig = Figure(figsize=(5.5 * len(models), 4))
    axes = fig.subplots(1, len(models), squeeze=False)
    for ax, m in zip(axes[0], models):
        rs = [r for r in records if r["model"] == m and r["partition"] == "iid"]
        for topo, style in (("SL", "o"), ("SplitFed", "s"), ("FedAvg", "^")):
            pts = sorted((r["num_clients"], r["bytes_per_epoch"]["per_client_mean"]) for r in rs
                         if r["topology"].startswith(topo))
            if pts:
                ax.plot(*zip(*pts), style, label=f"{topo} (measured)")
        c = cross[m]
        if c:
            ks = np.logspace(0, np.log10(max(1000, 3 * c["k_star"])), 100)
            ax.plot(ks, c["data_bytes"] / ks + c["sl_weight_bytes"], "-", lw=1, label="SL formula")
            ax.axhline(c["fl_bytes"], ls="--", lw=1, color="gray", label="FL formula 2N")
            ax.axvline(c["k_star"], ls=":", color="red", label=f"crossover K* = {c['k_star']:.0f}")
        ax.set(xscale="log", yscale="log", xlabel="clients K", ylabel="bytes per client per epoch", title=m)
        ax.legend(fontsize=7)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out / f"bytes_per_client.{ext}")


def compare(out, *, config: CompareConfig = DEFAULT, log=print) -> dict:
    """Runs the comparison and writes ``results.json``, ``comparison.md`` and the plot to ``out``."""

    info = {"platform": platform.platform(), "jax": jax.__version__, "backend": jax.default_backend()}
    t0 = time.perf_counter()
    records = _runs(config, log)
    info["seconds"] = time.perf_counter() - t0
    return _write(Path(out), records, config, info)
