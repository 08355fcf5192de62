"""``split-workbench attack RUN --attack SPEC ...``: attack a finished run again.

RUN is a run folder (``<out>/<hash>/``, written by ``run``, ``sweep`` or ``train``) or its
``result.json``. A sweep's output folder holds many runs: pass one of them. The run's spec
is rebuilt, its trained state restored from ``checkpoint/``, and each attack receives an
Observation granting exactly its ``needs``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from split_workbench.attacks.registry import ATTACKS
from split_workbench.orchestration.checkpoint import CheckpointMismatch
from split_workbench.orchestration.run_folder import attack_hash, attack_run, load_run, write_attack_record
from split_workbench.orchestration.runner import SCORING
from split_workbench.registry import SpecError

__all__ = ["add_subcommand", "cmd_attack"]


def add_subcommand(subparsers) -> None:
    a = subparsers.add_parser("attack", help="attack a finished run or a sweep's record (inversion, label inference)",
                              description=__doc__ + "\n" + SCORING,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example:\n  split-workbench attack results/sw/3f2a9c1b7d20 --attack 'rmle(steps=500)'")
    a.add_argument("run_dir", help="run folder (<out>/<hash>/) or its result.json")
    a.add_argument("--attack", action="append", required=True, metavar="SPEC",
                   help='attack spec, repeatable, e.g. "rmle(steps=500, tv=0.01)"')
    a.add_argument("--out", default=None,
                   help="attack record (JSON); default RUN/attack-<hash of the attack specs>.json")
    a.set_defaults(func=cmd_attack)


def cmd_attack(args) -> int:
    try:  # every configuration error surfaces before any work
        attacks = []
        for spec in args.attack:
            try:
                attacks.append(ATTACKS.build(spec))
            except (ValueError, TypeError) as e:
                raise SpecError(f"--attack {spec!r}: {e}") from None
        run = load_run(args.run_dir)  # a missing record or checkpoint fails before any data is loaded
    except (ValueError, TypeError, FileNotFoundError, SpecError, CheckpointMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record, _ = attack_run(run, args.attack, attacks)
    out = Path(args.out) if args.out else run.path / f"attack-{attack_hash(args.attack)}.json"
    write_attack_record(record, out)
    spec = run.prepared.spec
    cut = run.record.get("split", {}).get("cut", spec.cut)  # every topology's record names its cut
    print(f"run {run.record['hash']}: {spec.model} cut {cut!r} ({spec.topology}) on {spec.data}, "
          f"{spec.targets} private training targets")
    print(f"{'attack':44s} {'SSIM':>7s} {'PSNR':>7s} {'MSE':>9s} {'AUC/acc':>8s} {'sec':>7s}")
    nan = float("nan")
    for name, r in record["attacks"].items():
        inv = r["kind"] == "inversion"
        lab = r.get("auc", r.get("label_accuracy"))
        print(f"{name[:44]:44s} {r['ssim_mean'] if inv else nan:7.4f} {r['psnr_mean'] if inv else nan:7.2f} "
              f"{r['mse_mean'] if inv else nan:9.5f} {nan if inv or lab is None else lab:8.4f} {r['seconds']:7.2f}")
    print(f"wrote {out}")
    return 0
