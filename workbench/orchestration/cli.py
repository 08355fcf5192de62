"""The ``split-workbench`` command.

Examples:
  split-workbench list
  split-workbench train --data digits --model mlp --cut relu1 --epochs 5 --out runs/digits-mlp
  split-workbench train --data fashion-mnist --model he2019-lenet --cut relu2 --epochs 3 \\
      --defense "laplace_noise(scale=0.5)"
  split-workbench attack runs/digits-mlp --attack "rmle(steps=500)"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import jax

from split_workbench import attacks, defenses
from split_workbench.data import available, list_datasets, load
from split_workbench.defenses import DEFENSES
from split_workbench.models import MODELS, list_models, make_model
from split_workbench.orchestration import attack_cli, compare_cli, experiment_cli, paper_cli
from split_workbench.orchestration.runs import TrainConfig, prepare, save_run, train
from split_workbench.split import _resolve_cut

__all__ = ["main", "build_parser"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _run_name(config) -> str:
    digest = hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.data}-{config.model}-{config.cut}-{digest}"


def cmd_train(args) -> int:

    if args.model not in MODELS:
        print(f"error: unknown model {args.model!r}; known: {sorted(MODELS)}", file=sys.stderr)
        return 2
    cut = args.cut
    if cut is not None and cut.isdigit():
        cut = int(cut)
    try:
        config = TrainConfig(data=args.data, model=args.model, cut=cut if cut is not None else MODELS[args.model].default_cut,
                             epochs=args.epochs, batch_size=args.batch_size, client_lr=args.lr,
                             server_lr=args.lr, optimizer=args.optimizer, seed=args.seed,
                             defenses=tuple(args.defense or ()))
        _validate_early(config, args.data_root)
        prepared = prepare(config, root=args.data_root)
        out = Path(args.out) if args.out else Path("runs") / _run_name(prepared[0])
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"run folder {out} already exists; choose another --out, remove it, "
                                  "or pass --overwrite")
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = train(config, progress=not args.quiet, prepared=prepared)
    save_run(run, out, overwrite=args.overwrite)
    m, sm = run.metrics, run.trainer.model
    final, flops = m["final"], m["split"]["flops_per_example"]
    print(f"model {config.model} cut at {sm.cut!r} (block {sm.cut_index} of {len(sm.cut_points) + 1}); "
          f"smash {tuple(sm.smash_shape)} per example")
    print(f"parameters: client {sm.param_counts['client']:,}  server {sm.param_counts['server']:,}")
    print(f"FLOPs per example (forward): client {flops['client_forward']:,.0f}  server {flops['server_forward']:,.0f}; "
          f"(train step): client {flops['client_train']:,.0f}  server {flops['server_train']:,.0f}")
    print(f"per epoch on the wire: smash {_fmt_bytes(final['forward_bytes'])} client->server, "
          f"cut gradients {_fmt_bytes(final['backward_bytes'])} server->client, labels {_fmt_bytes(final['label_bytes'])}")
    print(f"after {config.epochs} epochs: train accuracy {final['train_accuracy']:.4f}, "
          f"test accuracy {final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}")
    print(f"saved run to {out}")
    return 0


def _validate_early(config, data_root) -> None:
    """Fails on a bad dataset, cut or defense before any data is loaded or trained on."""

    names = [d["name"] for d in list_datasets(root=data_root)]
    if config.data not in names:
        raise ValueError(f"unknown dataset {config.data!r}; known: {names}")
    for spec in config.defenses:
        DEFENSES.validate(spec)
    _resolve_cut(_model_names(config.model), config.cut)
    if not available(config.data, root=data_root):
        load(config.data, root=data_root)  # raises DatasetNotFoundError naming the install command


def _model_names(model: str) -> tuple[str, ...]:
    """Block names of a zoo model (they do not depend on the input shape)."""

    return make_model(model, key=jax.random.key(0)).names


def cmd_list(args) -> int:

    print("models (cut points; * = the paper's cuts):")
    for info in list_models():
        names = _model_names(info.name)[:-1]
        cuts = ", ".join(f"{c}*" if c in info.paper_cuts else c for c in names)
        print(f"  {info.name:20s} input {info.input_shape}, default cut {info.default_cut}: {cuts}")
        print(f"  {'':20s} {info.description}")
    print("\ndatasets:")
    for d in list_datasets(root=args.data_root):
        status = "available" if d["available"] else f"missing: {d['how']}"
        print(f"  {d['name']:14s} {str(d['shape']):14s} {d['classes']:3d} classes  {status}")
    print(f"\ndefenses: {', '.join(defenses.DEFENSES.names()) or '(none registered)'}")
    print(f"attacks: {', '.join(attacks.ATTACKS.names()) or '(none registered)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="split-workbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a split model and save the run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  split-workbench train --data digits --model mlp --cut relu1 --epochs 5")
    t.add_argument("--data", default="digits", help="dataset name (see `split-workbench list`)")
    t.add_argument("--data-root", default=None, help="folder holding user-supplied dataset files")
    t.add_argument("--model", default="he2019-lenet", help="zoo model name")
    t.add_argument("--cut", default=None, help="cut-point name or index (default: the model's default cut)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate of both sides")
    t.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--defense", action="append", metavar="SPEC",
                   help='defense spec, repeatable, e.g. "laplace_noise(scale=0.5)"')
    t.add_argument("--out", default=None, help="run folder (default runs/<data>-<model>-<cut>-<hash>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    ls = sub.add_parser("list", help="models and their cut points, datasets and availability, attacks, defenses")
    ls.add_argument("--data-root", default=None)
    ls.set_defaults(func=cmd_list)

    for module in (attack_cli, experiment_cli, compare_cli, paper_cli):
        module.add_subcommand(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
