"""FSHA training speed: iterations per second of the whole hijacked step (client forward and
backward, pilot, decoder, critic with its gradient penalty, the server's own half), one
jitted ``lax.scan`` over the iterations.

    python -m bench.fsha [--iterations N] [--configs tiny,cpu,paper]

Configurations: ``paper`` is Pasquini et al.'s (32x32x3 inputs, ResNet client of width 64
cut at level 4, critic 256 wide with six ResBlocks, batch 64); ``cpu`` is the setting
papers/pasquini2021 runs on a CPU (32x32x1, width 16, critic 64 x 2); ``tiny`` is the
tests' (digits, MLP). Writes bench/results/fsha-<backend>.json with the machine, the
compile time and the steady iterations/s (timed over a second scan of the same length),
and the projected wall time of the paper's 10,000 iterations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.machine import machine_info
from split_workbench.attacks.fsha import FSHA
from split_workbench.models import make_model
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split

CONFIGS = {
    "paper": dict(model="fsha-resnet", cut="level4", shape=(32, 32, 3), width=64,
                  server=dict(width=64, d_width=256, d_blocks=6)),
    "cpu": dict(model="fsha-resnet", cut="level4", shape=(32, 32, 1), width=16,
                server=dict(width=16, d_width=64, d_blocks=2)),
    "tiny": dict(model="mlp", cut="fc2", shape=(8, 8, 1), width=None,
                 server=dict(width=8, d_width=64, d_blocks=2)),
}
# iterations per timed scan (a second scan of the same length is the steady figure)
ITERATIONS = {"paper": 20, "cpu": 100, "tiny": 400}


def measure(name: str, iterations: int, batch_size: int = 64) -> dict:
    cfg = CONFIGS[name]
    kw = {"width": cfg["width"]} if cfg["width"] else {}
    model = split(make_model(cfg["model"], key=jax.random.key(0), input_shape=cfg["shape"], num_classes=10, **kw),
                  cfg["cut"])
    rng = np.random.default_rng(0)
    n = iterations * batch_size
    x = rng.uniform(size=(n, *cfg["shape"])).astype(np.float32)
    y = (np.arange(n) % 10).astype(np.int32)
    public = rng.uniform(size=(2000, *cfg["shape"])).astype(np.float32), np.arange(2000) % 10
    server = FSHA(**cfg["server"]).bind(*public)
    tr = SplitTrainer(model, optax.adam(1e-5), optax.adam(1e-5), server=server)
    state = tr.init(key=jax.random.key(1))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    t0 = time.perf_counter()
    state, _, _ = tr.epoch(state, xj, yj, key=jax.random.key(0), batch_size=batch_size)
    jax.block_until_ready(state.params)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, _, _ = tr.epoch(state, xj, yj, key=jax.random.key(1), batch_size=batch_size)
    jax.block_until_ready(state.params)
    steady = time.perf_counter() - t0
    ips = iterations / steady
    return {"config": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k != "server"},
            "server": cfg["server"], "batch_size": batch_size, "iterations": iterations,
            "compile_and_first_scan_seconds": round(first, 2), "steady_seconds": round(steady, 2),
            "iterations_per_second": round(ips, 2), "paper_10k_iterations_minutes": round(10_000 / ips / 60, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=None, help=f"per timed scan (default {ITERATIONS})")
    ap.add_argument("--configs", default="tiny,cpu,paper")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    names = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {sorted(CONFIGS)}")
    rows = []
    for name in names:
        rows.append(measure(name, a.iterations or ITERATIONS[name]))
        print(json.dumps(rows[-1]), flush=True)
    out = a.out or Path(__file__).parent / "results" / f"fsha-{jax.default_backend()}.json"
    out.write_text(json.dumps({"machine": machine_info(), "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
