"""Sweep speed: noise strengths x seeds on Fashion-MNIST, He 2019 LeNet, rMLE + inverse network.

Runs the same grid into fresh folders once per mode:
  vmapped     seeds and noise strengths train as one vmapped program (the default sweep),
  seeds       only seeds are vmapped (one program per strength),
  one-by-one  one run at a time;
and reports wall times, the time each stage took summed over runs (training, attacks,
evaluation) and the speed-up of each mode over one-by-one. Attacks run per spec in every
mode, so they dilute the whole-sweep speed-up; the training speed-up is reported apart.

    python bench/sweep.py [--strengths 8] [--seeds 3] [--train-size 10000] [--epochs 2]
                          [--rmle-steps 300] [--inverse-steps 300] [--modes vmapped one-by-one]

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
from split_workbench.orchestration.experiment import ExperimentSpec  # noqa: E402
from split_workbench.orchestration.sweep import expand_grid, parse_grid, run_sweep  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strengths", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rmle-steps", type=int, default=300)
    ap.add_argument("--inverse-steps", type=int, default=300)
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--modes", nargs="+", default=["vmapped", "one-by-one"],
                    choices=["vmapped", "seeds", "one-by-one"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    base = ExperimentSpec(data="fashion-mnist", model="he2019-lenet", cut="conv1", epochs=args.epochs,
                          batch_size=32, train_size=args.train_size, aux_size=1000, targets=args.targets,
                          attacks=(f"rmle(steps={args.rmle_steps})", f"inverse_net(steps={args.inverse_steps})"))
    rmle = base.attacks[0]
    scales = np.round(np.linspace(0.0, 1.4, args.strengths), 3)
    grid = parse_grid([f"defense={'|'.join(f'laplace_noise(scale={s})' for s in scales)}",
                       f"seed={'|'.join(str(i) for i in range(args.seeds))}"])
    specs = expand_grid(base, grid)
    result = {"machine": machine_info(), "runs": len(specs), "grid": grid, "base": base.to_dict()}
    for mode in args.modes:
        out = Path(tempfile.mkdtemp(prefix=f"sweep-{mode}-"))
        t0 = time.perf_counter()
        records = run_sweep(specs, out, vmap_seeds=mode != "one-by-one", vmap_strengths=mode == "vmapped")
        wall = time.perf_counter() - t0
        stage = lambda f: sum(v for r in records for k, v in r["timings"].items() if f(k))  # noqa: E731
        by_scale = {}
        for r in records:
            by_scale.setdefault(r["spec"]["defenses"][0] if r["spec"]["defenses"] else "none", []).append(r)
        result[mode] = {"wall_s": wall, "train_s": stage(lambda k: k == "train"),
                        "attacks_s": stage(lambda k: k.startswith("attack:")),
                        "evaluate_s": stage(lambda k: k == "evaluate"),
                        "train_paths": sorted({r["timings"]["train_path"] for r in records}),
                        "per_strength": {d: {"accuracy": float(np.mean([r["metrics"]["test_accuracy"] for r in rs])),
                                             "rmle_ssim": float(np.mean([r["attacks"][rmle]["ssim_mean"] for r in rs])),
                                             "inverse_net_ssim": float(np.mean([r["attacks"][base.attacks[1]]["ssim_mean"]
                                                                                for r in rs]))}
                                         for d, rs in by_scale.items()}}
        print(mode, json.dumps({k: v for k, v in result[mode].items() if k != "per_strength"}), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if "one-by-one" in result:
        ref = result["one-by-one"]
        for mode in args.modes:
            if mode != "one-by-one":
                result[f"speedup_wall_{mode}"] = ref["wall_s"] / result[mode]["wall_s"]
                result[f"speedup_train_{mode}"] = ref["train_s"] / result[mode]["train_s"]
    path = Path(args.out or Path(__file__).parent / "results" / f"sweep-{jax.default_backend()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k.startswith("speedup")}), f"wrote {path}")


if __name__ == "__main__":
    main()
