"""``split-workbench paper NAME [--smoke] [--out DIR]``: regenerate one folder of papers/.

Each ``papers/<name>/reproduce.py`` defines ``run(out_dir, smoke) -> dict``; this command
loads it by path (the core library never imports papers/), runs it, writes
``results.json`` (our numbers, the paper's, tolerances and direction claims) and the
figures into ``--out`` (default ``papers/<name>/results/full`` or ``.../smoke``).

Examples:
  split-workbench paper --list
  split-workbench paper dp_yardstick
  split-workbench paper he2019 --smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

__all__ = ["papers_dir", "list_papers", "load_paper", "run_paper", "add_subcommand"]


def papers_dir() -> Path:
    """papers/ of the repository (next to workbench/), or $SPLIT_WORKBENCH_PAPERS."""
    env = os.environ.get("SPLIT_WORKBENCH_PAPERS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "papers"


def list_papers() -> list[str]:
    d = papers_dir()
    return sorted(p.parent.name for p in d.glob("*/reproduce.py"))


def load_paper(name: str):
    """The ``reproduce`` module of papers/<name>/ (papers/ goes on sys.path for _common)."""
    path = papers_dir() / name / "reproduce.py"
    if not path.is_file():
        raise ValueError(f"unknown paper {name!r}; known: {list_papers()} (in {papers_dir()})")
    if str(papers_dir()) not in sys.path:
        sys.path.insert(0, str(papers_dir()))
    spec = importlib.util.spec_from_file_location(f"papers_{name}_reproduce", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_paper(name: str, *, smoke: bool = False, out: str | Path | None = None) -> dict:
    """Regenerates papers/<name>: returns the summary written to <out>/results.json."""
    module = load_paper(name)
    _common = importlib.import_module("_common")  # papers/_common.py, on sys.path once load_paper ran

    out = Path(out) if out else papers_dir() / name / "results" / ("smoke" if smoke else "full")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = module.run(out, smoke)
    return _common.write_summary(out, name, results, smoke=smoke, seconds=time.perf_counter() - t0)


def format_summary(s: dict) -> str:
    lines = [f"paper {s['paper']} ({'smoke' if s['smoke'] else 'full'}), {s['seconds']:.0f} s"]
    for t in s["targets"]:
        ours = "-" if t["ours"] is None else f"{t['ours']:.4g}"
        verdict = "" if "within" not in t else ("  within tolerance" if t["within"] else "  OUTSIDE tolerance")
        tol = "" if t["tol"] is None else f" +-{t['tol']}"
        lines.append(f"  {t['key']:40s} paper {t['paper']:<8} ours {ours:<8}{tol}{verdict}")
    for c in s["claims"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['claim']} ({c['lhs']:.4g} {c['op']} {c['rhs']:.4g})")
    return "\n".join(lines)


def cmd_paper(args) -> int:
    if args.list or not args.name:
        for n in list_papers():
            print(n)
        return 0
    try:
        s = run_paper(args.name, smoke=args.smoke, out=args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(s))
    return 0 if all(c["ok"] for c in s["claims"]) else 1


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("paper", help="regenerate a paper reproduction in papers/ (numbers, claims, figures)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="folder under papers/ (see --list)")
    p.add_argument("--list", action="store_true", help="list the papers")
    p.add_argument("--smoke", action="store_true", help="minutes-long version (smaller data, fewer steps)")
    p.add_argument("--out", default=None, help="output folder (default papers/NAME/results/{full,smoke})")
    p.set_defaults(func=cmd_paper)
