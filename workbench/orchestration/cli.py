"""The ``split-workbench`` command.

Examples:
  split-workbench list
  split-workbench train --data digits --model mlp --cut relu1 --epochs 5 --out runs
  split-workbench train --data fashion-mnist --model he2019-lenet --cut relu2 --epochs 3 \\
      --defense "laplace_noise(scale=0.5)"
  split-workbench attack runs/<hash> --attack "rmle(steps=500)"
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import jax

from split_workbench import attacks, defenses
from split_workbench.data import list_datasets
from split_workbench.data.loaders import ENV_VAR
from split_workbench.models import list_models, make_model
from split_workbench.orchestration import attack_cli, compare_cli, experiment_cli, paper_cli
from split_workbench.orchestration.experiment import ExperimentSpec, SpecError
from split_workbench.orchestration.runner import CHECKPOINT, prepare, run_experiment

__all__ = ["main", "build_parser", "train_spec"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def train_spec(args) -> ExperimentSpec:
    """The spec ``train`` runs: its flags on the default spec, with no attack."""
    cut = args.cut
    if cut is not None and cut.isdigit():
        cut = int(cut)
    return ExperimentSpec(data=args.data, model=args.model, cut=cut, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, optimizer=args.optimizer, seed=args.seed, defenses=tuple(args.defense or ()),
                          attacks=())


def cmd_train(args) -> int:
    """``run`` with no attack: trains, evaluates and writes the run folder ``<out>/<hash>/``."""
    if args.data_root:  # searched before the other dataset folders
        os.environ[ENV_VAR] = os.pathsep.join(filter(None, [args.data_root, os.environ.get(ENV_VAR)]))
    try:  # every configuration error (spec, data, model shape) surfaces before any training
        built = train_spec(args).build()
        folder = Path(args.out) / built.spec.hash()
        if (folder / "result.json").is_file() and not (folder / CHECKPOINT).is_dir() and not args.overwrite:
            raise FileExistsError(f"{folder} holds a run of this spec without a checkpoint (written before runs "
                                  "saved their state); pass --overwrite to train it again")
        p = prepare(built)
    except (SpecError, ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.overwrite and folder.exists():
        shutil.rmtree(folder)
    reused = (folder / "result.json").is_file()
    record = run_experiment(p, args.out, progress=not args.quiet)
    sm, spec = p.trainer.model, p.spec
    m, final, flops = record["metrics"], record["history"][-1], record["split"]["flops_per_example"]
    print(f"model {spec.model} cut at {sm.cut!r} (block {sm.cut_index} of {len(sm.cut_points) + 1}); "
          f"smash {tuple(sm.smash_shape)} per example")
    print(f"parameters: client {sm.param_counts['client']:,}  server {sm.param_counts['server']:,}")
    print(f"FLOPs per example (forward): client {flops['client_forward']:,.0f}  server {flops['server_forward']:,.0f}; "
          f"(train step): client {flops['client_train']:,.0f}  server {flops['server_train']:,.0f}")
    print(f"per epoch on the wire: smash {_fmt_bytes(final['forward_bytes'])} client->server, "
          f"cut gradients {_fmt_bytes(final['backward_bytes'])} server->client, labels {_fmt_bytes(final['label_bytes'])}")
    print(f"after {spec.epochs} epochs: train accuracy {m['train_accuracy']:.4f}, "
          f"test accuracy {m['test_accuracy']:.4f}, test loss {m['test_loss']:.4f}")
    print(f"{'reused the finished run' if reused else 'saved run'} {folder} "
          f"(attack it: split-workbench attack {folder} --attack SPEC)")
    return 0


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

    t = sub.add_parser("train", help="train a split model and save the run (`run` with no attack)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="A preset of `run`: the flags set the spec's fields, with attacks = []. The run "
                                   "folder <out>/<hash>/ holds the record (result.json, with the spec) and the "
                                   "trained state (checkpoint/); `split-workbench attack` reads it.",
                       epilog="example:\n  split-workbench train --data digits --model mlp --cut relu1 --epochs 5")
    t.add_argument("--data", default="digits", help="dataset name (see `split-workbench list`)")
    t.add_argument("--data-root", default=None, help="folder holding user-supplied dataset files")
    t.add_argument("--model", default="mlp", help="zoo model name")
    t.add_argument("--cut", default=None, help="cut-point name or index (default: the model's default cut)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate of both sides")
    t.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--defense", action="append", metavar="SPEC",
                   help='defense spec, repeatable, e.g. "laplace_noise(scale=0.5)"')
    t.add_argument("--out", default="runs", help="folder of run folders; the run is <out>/<hash>/ (default runs)")
    t.add_argument("--overwrite", action="store_true", help="train again and replace this spec's run folder")
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
