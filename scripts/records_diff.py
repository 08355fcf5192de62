"""Runs the demo sweep and every paper's smoke run, and diffs their records against another tree's.

A refactor keeps results: this script produces the records of a source tree and compares
two sets of records field by field, ignoring what legitimately changes between two runs
(timings, package versions, the git commit) and fields that exist on one side only (new
fields). Numbers must be identical (``--atol 0``, the default).

    # records of an earlier commit (checked out with `git worktree add /tmp/before <commit>`)
    python scripts/records_diff.py produce --tree /tmp/before --out /tmp/records-before
    # records of this checkout (the installed package)
    python scripts/records_diff.py produce --out /tmp/records-after
    python scripts/records_diff.py compare /tmp/records-before /tmp/records-after

Records are matched by their spec with new fields at their defaults removed (a record's
folder name is its spec hash), so a run store written before a change still matches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_DEFENSES = "none|laplace_noise(scale=0.5)|nopeek(alpha=1.0)|dp_smash(clip=1.0, noise_multiplier=1.0)"
PAPERS = ("he2019", "li2022", "titcombe2021", "unsplit2022", "dp_yardstick")
# keys whose values legitimately differ between two runs of the same spec
VOLATILE = {"timings", "seconds", "versions", "git_commit", "images_per_second", "train_path", "commit",
            "created", "generated", "wall_seconds"}


def _cli(tree: Path | None) -> list[str]:
    """The command line of ``split-workbench`` for ``tree`` (None: the installed package)."""
    if tree is None:
        return [sys.executable, "-c", "import sys; from split_workbench.orchestration.cli import main; sys.exit(main())"]
    if (tree / "workbench" / "orchestration" / "cli.py").is_file():
        mod = "split_workbench.orchestration.cli"
    else:
        mod = "workbench.cli"  # the layout before the split_workbench namespace
    return [sys.executable, "-c", f"import sys; from {mod} import main; sys.exit(main())"]


def _import_root(tree: Path) -> Path:
    """A folder that, put first on ``sys.path``, makes ``tree``'s packages the imported ones.

    Before the namespace the packages were the tree's own folders; after it, the installed
    ``split_workbench`` maps onto three folders, so a folder of links rebuilds that mapping
    (it shadows the editable install, whose finder runs after ``sys.path``)."""
    if not (tree / "workbench" / "orchestration").is_dir():
        return tree
    shim = Path(tempfile.mkdtemp(prefix="records-diff-"))
    pkg = shim / "split_workbench"
    pkg.mkdir()
    for entry in (tree / "workbench").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for sub in ("attacks", "defenses"):
        (pkg / sub).symlink_to(tree / sub)
    return shim


def produce(tree: Path | None, out: Path) -> None:
    env = dict(os.environ)
    cwd = REPO
    if tree is not None:
        env["PYTHONPATH"] = str(_import_root(tree))
        env["SPLIT_WORKBENCH_PAPERS"] = str(tree / "papers")
        cwd = tree
    cli = _cli(tree)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("demo", [*cli, "sweep", "scripts/demo.toml", "--grid", f"defense={DEMO_DEFENSES}",
                      "--grid", "seed=0|1|2", "--out", str(out / "demo")])]
    jobs += [(p, [*cli, "paper", p, "--smoke", "--out", str(out / "papers" / p)]) for p in PAPERS]
    for name, cmd in jobs:
        print(f"[records_diff] {name}: {' '.join(cmd[3:])}", flush=True)
        r = subprocess.run(cmd, cwd=cwd, env=env)
        if r.returncode not in (0, 1):  # 1: a paper's direction claim failed; its record still counts
            raise SystemExit(f"{name} failed with exit code {r.returncode}")


def _records(root: Path) -> dict[str, Path]:
    """Every record under ``root`` by a stable name: paper summaries by path, run records
    by their folder's parent and their spec (so hash changes from new fields do not matter)."""
    out = {}
    for f in sorted(root.rglob("result*.json")):
        rel = f.relative_to(root)
        if f.name == "result.json":
            d = json.loads(f.read_text())
            spec = {k: v for k, v in d.get("spec", {}).items() if not _is_new_default(k, v)}
            out[f"{rel.parent.parent}/{json.dumps(spec, sort_keys=True)}"] = f
        else:
            out[str(rel)] = f
    return out


# spec fields added by the layered protocol, at the values that mean "as before"
NEW_DEFAULTS = {"topology": {"kind": "split", "clients": 1, "partition": "iid", "alpha": 1.0}, "server": "honest",
                "client": "honest", "topology_kind": "split"}


def _is_new_default(k, v) -> bool:
    return k in NEW_DEFAULTS and NEW_DEFAULTS[k] == v


def _volatile(key: str) -> bool:
    """Wall-clock and provenance fields: ``VOLATILE`` keys and any ``*_seconds`` or ``*/seconds``."""
    return key in VOLATILE or key.endswith(("_seconds", "/seconds"))


def _diff(a, b, path: str, out: list[str], atol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) & set(b)):
            if _volatile(k):
                continue
            _diff(a[k], b[k], f"{path}.{k}", out, atol)
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out, atol)
        return
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return
        if abs(a - b) > atol:
            out.append(f"{path}: {a!r} != {b!r}")
        return
    if a != b:
        out.append(f"{path}: {a!r} != {b!r}")


def compare(before: Path, after: Path, atol: float) -> int:
    ra, rb = _records(before), _records(after)
    only_a, only_b = sorted(set(ra) - set(rb)), sorted(set(rb) - set(ra))
    problems = 0
    for k in only_a:
        print(f"only before: {k}")
        problems += 1
    for k in only_b:
        print(f"only after: {k}")
        problems += 1
    for k in sorted(set(ra) & set(rb)):
        diffs: list[str] = []
        _diff(json.loads(ra[k].read_text()), json.loads(rb[k].read_text()), "", diffs, atol)
        if diffs:
            problems += 1
            print(f"DIFFERENT {ra[k].relative_to(before)}: {len(diffs)} value(s)")
            for d in diffs[:10]:
                print(f"    {d}")
    print(f"{len(set(ra) & set(rb))} records compared, {problems} with differences "
          f"(ignoring {sorted(VOLATILE)}, *_seconds and fields present on one side only)")
    return 1 if problems else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce", help="run the demo sweep and the paper smoke runs")
    p.add_argument("--tree", type=Path, default=None, help="source tree to run (default: the installed package)")
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="diff two record folders")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--atol", type=float, default=0.0)
    args = ap.parse_args(argv)
    if args.cmd == "produce":
        produce(args.tree.resolve() if args.tree else None, args.out.resolve())
        return 0
    return compare(args.before, args.after, args.atol)


if __name__ == "__main__":
    raise SystemExit(main())
