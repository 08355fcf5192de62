"""``split-workbench attack RUN_DIR --attack SPEC ...``: attack a saved run under each
attack's declared threat model, print a table, write JSON.

Targets are test images of the run's dataset (the first N, or the first of each class as
in He et al. 2019). The attacker's auxiliary data is ``split_aux`` of the training set.
Each attack receives an Observation granting exactly its ``needs``. Label attacks read the
cut gradients the client would receive if the targets formed one training batch at the
trained parameters (``observe`` with labels); their AUC scores ``label == --positive``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from split_workbench.attacks import build_attack, evaluate_attack, observe
from split_workbench.attacks.registry import ATTACKS
from split_workbench.data import load, split_aux
from split_workbench.orchestration.runs import load_run
from split_workbench.registry import SpecError

__all__ = ["add_subcommand", "cmd_attack"]


def add_subcommand(subparsers) -> None:
    a = subparsers.add_parser("attack", help="attack a saved run (model inversion, label inference)",
                              description=__doc__)
    a.add_argument("run_dir", help="run folder written by `split-workbench train --out`")
    a.add_argument("--attack", action="append", required=True, metavar="SPEC",
                   help='attack spec, repeatable, e.g. "rmle(steps=500, tv=0.01)"')
    a.add_argument("--targets", default="10", help="number of test images, or 'per-class' (first of each class)")
    a.add_argument("--aux", type=int, default=1000, help="auxiliary training images given to the attacker")
    a.add_argument("--positive", type=int, default=0, help="class scored as positive by label attacks' AUC")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--data-root", default=None)
    a.add_argument("--out", default=None, help="JSON results file")
    a.set_defaults(func=cmd_attack)


def _target_indices(y_test, spec: str, num_classes: int):

    if spec == "per-class":
        idx = [int(np.flatnonzero(y_test == c)[0]) for c in range(num_classes) if np.any(y_test == c)]
        return np.asarray(idx)
    if not spec.isdigit() or int(spec) < 1:
        raise ValueError(f"--targets must be a positive integer or 'per-class', got {spec!r}")
    n = int(spec)
    if n > len(y_test):
        raise ValueError(f"--targets {n} exceeds the {len(y_test)} test images")
    return np.arange(n)


def cmd_attack(args) -> int:


    try:  # every configuration error surfaces before any attack runs
        for spec in args.attack:
            ATTACKS.validate(spec)
        attacks_ = [build_attack(spec) for spec in args.attack]
        run = load_run(args.run_dir)
        ds = load(run.config.data, root=args.data_root)
        idx = _target_indices(ds.y_test, args.targets, ds.num_classes)
        if args.aux < 1:
            raise ValueError(f"--aux must be >= 1, got {args.aux}")
        _, aux = split_aux(ds, aux_size=args.aux, key=jax.random.key(args.seed))
    except (ValueError, TypeError, FileNotFoundError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x, y = ds.x_test[idx], ds.y_test[idx]
    key = jax.random.key(args.seed)
    rows = []
    for i, attack in enumerate(attacks_):
        k_obs, k_att = jax.random.split(jax.random.fold_in(key, i + 1))
        obs = observe(run.trainer, run.state.params, x, y, grants=attack.needs, aux=(aux.x_train, aux.y_train),
                      key=k_obs)
        truth = x if attack.kind == "inversion" else y
        r = evaluate_attack(attack, obs, truth, key=k_att, positive=args.positive)
        r["spec"] = args.attack[i]
        r["needs"] = sorted(attack.needs)
        rows.append(r)
    print(f"run {args.run_dir}: {run.config.model} cut {run.trainer.model.cut!r} on {run.config.data}, "
          f"{len(idx)} targets, aux {args.aux}")
    print(f"{'attack':44s} {'SSIM':>7s} {'PSNR':>7s} {'MSE':>9s} {'AUC/acc':>8s} {'sec':>7s}")
    for r in rows:
        inv = r["kind"] == "inversion"
        lab = r.get("auc", r.get("accuracy", float("nan")))
        print(f"{r['spec'][:44]:44s} {r['ssim'] if inv else float('nan'):7.4f} {r['psnr'] if inv else float('nan'):7.2f} "
              f"{r['mse'] if inv else float('nan'):9.5f} {float('nan') if inv else lab:8.4f} {r['seconds']:7.2f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"run": str(args.run_dir), "targets": idx.tolist(), "aux": args.aux, "seed": args.seed,
                  "results": rows}
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w") as f:  # written atomically: nothing half-written on a crash
            json.dump(record, f, indent=2, default=float)
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0
