"""``split-workbench run | sweep | report``: experiments from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from split_workbench.orchestration.experiment import ExperimentSpec, SpecError, load_spec
from split_workbench.orchestration.report import write_report
from split_workbench.orchestration.runner import run_experiment
from split_workbench.orchestration.sweep import expand_grid, parse_grid, run_sweep

EPILOG = """examples:
  split-workbench run scripts/demo.toml --set epochs=5 --set "defense=nopeek(alpha=1.0)"
  split-workbench sweep scripts/demo.toml --grid "seed=0|1|2" --grid "defense=none|laplace_noise(scale=0.5)" --out results/sw
  split-workbench report results/sw
"""


def _spec(args):
    """The spec file (or, for a run's ``result.json``, the spec it records) with ``--set`` overrides."""
    if args.spec and Path(args.spec).name == "result.json" and Path(args.spec).is_file():
        spec = ExperimentSpec.from_dict(json.loads(Path(args.spec).read_text()).get("spec"), source=args.spec)
    else:
        spec = load_spec(args.spec) if args.spec else ExperimentSpec()
    return spec.with_overrides(args.set or [])


def cmd_run(args) -> int:

    try:
        built = _spec(args).build()  # validated once; the run receives the built objects
    except (SpecError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    record = run_experiment(built, args.out, progress=not args.quiet)
    m = record["metrics"]
    print(f"run {record['hash']}: test accuracy {m['test_accuracy']:.4f}, dCor(x, z) {m['dcor_input_smash']:.3f}"
          f" ({time.perf_counter() - t0:.1f}s)")
    for p in record["privacy"]:
        if "epsilon" in p:
            print(f"  {p['defense']}: epsilon {p['epsilon']:.3f} at delta {p.get('delta')}")
    for a, r in record["attacks"].items():
        if "ssim_mean" in r:
            print(f"  {a}: SSIM {r['ssim_mean']:.4f}  PSNR {r['psnr_mean']:.2f} dB  MSE {r['mse_mean']:.5f}")
        else:
            print(f"  {a}: {json.dumps({k: v for k, v in r.items() if k in ('auc', 'label_accuracy', 'note')})}")
    print(f"record: {Path(args.out) / record['hash'] / 'result.json'}")
    return 0


def cmd_sweep(args) -> int:

    try:
        specs = expand_grid(_spec(args), parse_grid(args.grid or []))
    except (SpecError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    run_sweep(specs, args.out, vmap_seeds=not args.no_vmap, vmap_strengths=not args.no_vmap, progress=not args.quiet)
    print(f"{len(specs)} runs in {args.out} ({time.perf_counter() - t0:.1f}s)")
    if not args.no_report:
        print(f"report: {write_report(args.out)}")
    return 0


def cmd_report(args) -> int:

    try:
        path = write_report(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path} (and report.html, figures as PNG and PDF, beside it)")
    return 0


def add_subcommand(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser("run", help="run one experiment spec (train, attack, score, record)", epilog=EPILOG,
                       formatter_class=fmt)
    r.add_argument("spec", nargs="?", default=None, help="spec file (.toml or .json) or a run's result.json; default: the default spec")
    r.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field (repeatable)")
    r.add_argument("--out", default="results/runs", help="folder of run records")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("sweep", help="run a grid of specs resumably, then write the report", epilog=EPILOG,
                       formatter_class=fmt)
    s.add_argument("spec", nargs="?", default=None)
    s.add_argument("--set", action="append", metavar="FIELD=VALUE")
    s.add_argument("--grid", action="append", metavar="FIELD=V1|V2", help="grid axis (repeatable)")
    s.add_argument("--out", default="results/sweep")
    s.add_argument("--no-vmap", action="store_true", help="train every spec one by one instead of vmapping seeds and defense strengths")
    s.add_argument("--no-report", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="Markdown/HTML report and figures from a folder of runs", epilog=EPILOG,
                       formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="report folder (default RUN_DIR/report)")
    p.set_defaults(func=cmd_report)
