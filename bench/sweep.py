"""Sweep speed: noise strengths x seeds on Fashion-MNIST, He 2019 LeNet, rMLE + inverse network.

Runs the same grid twice into fresh folders: seeds trained as one vmapped program, and
one run at a time; reports both wall times and their ratio (training and whole sweep).

    python bench/sweep.py [--strengths 8] [--seeds 3] [--train-size 10000] [--epochs 2]

Writes bench/results/sweep-<backend>.json with machine info.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine_info  # noqa: E402
from workbench.experiment import ExperimentSpec  # noqa: E402
from workbench.sweep import expand_grid, parse_grid, run_sweep  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strengths", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    base = ExperimentSpec(data="fashion-mnist", model="he2019-lenet", cut="conv1", epochs=args.epochs,
                          batch_size=32, train_size=args.train_size, aux_size=1000, targets=16,
                          attacks=("rmle(steps=500)", "inverse_net(steps=1000)"))
    scales = np.round(np.linspace(0.0, 1.4, args.strengths), 3)
    grid = parse_grid([f"defense={'|'.join(f'laplace_noise(scale={s})' for s in scales)}",
                       f"seed={'|'.join(str(i) for i in range(args.seeds))}"])
    specs = expand_grid(base, grid)
    result = {"machine": machine_info(), "runs": len(specs), "grid": grid, "base": base.to_dict()}
    for mode in ("vmapped", "one-by-one"):
        out = Path(tempfile.mkdtemp(prefix=f"sweep-{mode}-"))
        t0 = time.perf_counter()
        records = run_sweep(specs, out, vmap_seeds=mode == "vmapped")
        wall = time.perf_counter() - t0
        train = sum(r["timings"]["train"] for r in records)
        result[mode] = {"wall_s": wall, "train_s": train,
                        "mean_accuracy": float(np.mean([r["metrics"]["test_accuracy"] for r in records])),
                        "mean_rmle_ssim": float(np.mean([r["attacks"]["rmle(steps=500)"]["ssim_mean"] for r in records]))}
        print(mode, json.dumps(result[mode]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    result["speedup_wall"] = result["one-by-one"]["wall_s"] / result["vmapped"]["wall_s"]
    result["speedup_train"] = result["one-by-one"]["train_s"] / result["vmapped"]["train_s"]
    path = Path(args.out or Path(__file__).parent / "results" / f"sweep-{jax.default_backend()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("speedup_wall", "speedup_train")}), f"wrote {path}")


if __name__ == "__main__":
    main()
