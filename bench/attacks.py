"""Attack throughput: images/s of each attack's batched jitted program, and the speed-up
over a per-image Python loop of the same attack (same code, batch of one, compiled once).

    python -m bench.attacks [--n 64] [--quick]

Writes bench/results/attacks-<device>.json with machine info. Times are warm (the first
call, which compiles, is excluded and reported separately).
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

from split_workbench.attacks import build_attack, observe
from bench.machine import machine_info
from split_workbench.data import load
from split_workbench.models import make_model
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split
from split_workbench.training import fit

SPECS = {
    "rmle": "rmle(steps=500)",
    "inverse_net": "inverse_net(steps=300)",
    "query_free": "query_free(shadow_steps=300, steps=500)",
    "unsplit": "unsplit(rounds=20, input_steps=20, model_steps=20)",
    "norm_leak": "norm_leak",
    "cosine_leak": "cosine_leak",
}


def _time(fn, repeats=1):
    jax.block_until_ready(fn())  # compile and warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64, help="targets per batch")
    p.add_argument("--loop", type=int, default=8, help="images attacked one at a time for the loop baseline")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)

    ds = load("fashion-mnist")
    model = make_model("he2019-lenet", key=jax.random.key(0), input_shape=(28, 28, 1), num_classes=10)
    trainer = SplitTrainer(split(model, "conv1"), optax.adam(1e-3), optax.adam(1e-3))
    state = fit(trainer, ds.x_train[:5000], ds.y_train[:5000], epochs=1, batch_size=32, key=jax.random.key(1)).state
    x, y = jnp.asarray(ds.x_test[:args.n]), jnp.asarray(ds.y_test[:args.n])
    aux = (ds.x_train[50000:52000], ds.y_train[50000:52000])
    results = {}
    for name, spec in SPECS.items():
        if args.only and name not in args.only:
            continue
        attack = build_attack(spec)
        obs = observe(trainer, state.params, x, y, grants=attack.needs, aux=aux, key=jax.random.key(2))
        t_first = time.perf_counter()
        jax.block_until_ready(attack(obs, key=jax.random.key(3)).output)
        first = time.perf_counter() - t_first
        batched = _time(lambda: attack(obs, key=jax.random.key(3)).output)
        rec = {"spec": spec, "n": args.n, "cut": "conv1", "first_call_seconds": first,
               "batched_seconds": batched, "images_per_second": args.n / batched}
        if attack.kind == "inversion":
            m = args.loop
            singles = [observe(trainer, state.params, x[i:i + 1], y[i:i + 1], grants=attack.needs, aux=aux,
                               key=jax.random.key(2)) for i in range(m)]
            jax.block_until_ready(attack(singles[0], key=jax.random.key(3)).output)  # compile for N=1

            def loop():
                return [attack(o, key=jax.random.key(3)).output for o in singles]

            per_image = _time(loop) / m
            rec.update(loop_seconds_per_image=per_image, loop_images_per_second=1.0 / per_image,
                       speedup=per_image * args.n / batched)
        results[name] = rec
        print(json.dumps({name: rec}))
    info = machine_info()
    device = "gpu" if info["backend"] == "gpu" else "cpu"
    out = Path(__file__).parent / "results" / f"attacks-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
