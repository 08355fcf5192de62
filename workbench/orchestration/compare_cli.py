"""``split-workbench compare``: split learning vs SplitFed vs FedAvg, measured.

  split-workbench compare --out results/compare          # LeNet + thin ResNet-18, K in 1,5,20,100
  split-workbench compare --smoke --out /tmp/compare     # under two minutes on a 2-core CPU
"""

from __future__ import annotations

import dataclasses
import sys

from split_workbench.topology.compare import DEFAULT, SMOKE, compare

__all__ = ["add_subcommand", "cmd_compare"]


def cmd_compare(args) -> int:

    cfg = SMOKE if args.smoke else DEFAULT
    changes = {}
    if args.clients:
        changes["num_clients"] = tuple(int(k) for k in args.clients.split(","))
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.seed is not None:
        changes["seed"] = args.seed
    try:
        cfg = dataclasses.replace(cfg, **changes)
        if any(k < 1 for k in cfg.num_clients) or cfg.epochs < 1:
            raise ValueError("--clients must be positive integers and --epochs >= 1")
        result = compare(args.out, config=cfg, log=(lambda *_: None) if args.quiet else print)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for model, c in result["crossover"].items():
        if c:
            print(f"{model}: split learning is cheaper per client than FedAvg for K > {c['k_star']:.1f}")
    print(f"wrote {args.out}/comparison.md, results.json, bytes_per_client.png/.pdf")
    return 0


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("compare", help="measured comparison of split learning, SplitFed and FedAvg")
    p.add_argument("--out", default="results/compare", help="output folder")
    p.add_argument("--smoke", action="store_true", help="a small, fast configuration (< 2 minutes on CPU)")
    p.add_argument("--clients", default=None, help="comma-separated client counts, e.g. 1,5,20,100")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)
