"""Shared helpers of the paper reproductions (papers/<name>/reproduce.py).

The core (workbench/, attacks/, defenses/) never imports this folder; each paper's
``reproduce.py`` imports the core through its public names and defines

    run(out_dir: Path, smoke: bool) -> dict     # flat {"key": number}, figures in out_dir

``expected.json`` of each paper holds the paper's numbers (``paper``), the tolerance we
argue for, and the direction claims checked by ``check_claims``.
"""

from __future__ import annotations

import json
import operator
import time
from pathlib import Path

import numpy as np

PAPERS_DIR = Path(__file__).resolve().parent
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def expected(name: str) -> dict:
    return json.loads((PAPERS_DIR / name / "expected.json").read_text())


def spec_files(name: str, pattern: str = "*.toml") -> list[Path]:
    return sorted((PAPERS_DIR / name).glob(pattern))


def load(name: str, file: str, overrides: list[str] = ()):
    from split_workbench.orchestration.experiment import load_spec

    spec = load_spec(PAPERS_DIR / name / file)
    return spec.with_overrides(list(overrides)) if overrides else spec


def run_spec(spec, out_dir: Path) -> dict:
    """One experiment through the core runner; records are cached under out_dir/runs."""
    from split_workbench.orchestration.runner import run_experiment

    return run_experiment(spec, Path(out_dir) / "runs")


def _value(results: dict, ref):
    """A claim operand: a results key, or a literal number."""
    if isinstance(ref, (int, float)):
        return float(ref)
    if ref not in results:
        raise KeyError(f"claim refers to {ref!r}, not among the results: {sorted(results)}")
    return float(results[ref])


def check_claims(results: dict, exp: dict, *, smoke: bool) -> list[dict]:
    """Evaluates every direction claim of expected.json on ``results``.

    A claim: {"claim": text, "lhs": key, "op": "<", "rhs": key or number, "margin": m,
    "smoke": true/false}. ``lhs op rhs`` must hold with ``margin`` to spare (lhs + m < rhs for
    "<"). Claims with "smoke": false are only checked on full runs (too noisy in smoke mode).
    """
    out = []
    for c in exp.get("claims", []):
        if smoke and not c.get("smoke", True):
            continue
        lhs, rhs, m = _value(results, c["lhs"]), _value(results, c["rhs"]), float(c.get("margin", 0.0))
        op = c["op"]
        ok = OPS[op](lhs + m, rhs) if op in ("<", "<=") else OPS[op](lhs - m, rhs)
        out.append({"claim": c["claim"], "lhs": lhs, "op": op, "rhs": rhs, "margin": m, "ok": bool(ok)})
    return out


def check_targets(results: dict, exp: dict) -> list[dict]:
    """Our numbers next to the paper's: |ours - paper| <= tol for each target with a tolerance."""
    out = []
    for t in exp.get("targets", []):
        ours = results.get(t["key"])
        row = {"key": t["key"], "paper": t["paper"], "ours": ours, "tol": t.get("tol")}
        if ours is not None and t.get("tol") is not None:
            row["within"] = bool(abs(float(ours) - float(t["paper"])) <= float(t["tol"]))
        out.append(row)
    return out


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = [Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def image_strip(ax, images, label: str, n: int = 10) -> None:
    """Draws the first ``n`` single-channel images in [0, 1] side by side on ``ax``, with a
    white 1-pixel frame each and ``label`` as the row's name."""
    strip = np.concatenate([np.pad(np.clip(im[..., 0], 0, 1), 1, constant_values=1) for im in images[:n]], 1)
    ax.imshow(strip, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_summary(out_dir: Path, name: str, results: dict, *, smoke: bool, seconds: float) -> dict:
    exp = expected(name)
    summary = {"paper": name, "smoke": smoke, "seconds": round(seconds, 1),
               "results": {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in results.items()},
               "targets": check_targets(results, exp), "claims": check_claims(results, exp, smoke=smoke)}
    (Path(out_dir) / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.seconds = time.perf_counter() - self.t0


def markdown_table(name: str, mode: str = "full") -> str:
    """The 'paper vs ours' table of ``results/<mode>/results.json`` as Markdown (for the
    README): one row per target and one per direction claim."""
    s = json.loads((PAPERS_DIR / name / "results" / mode / "results.json").read_text())
    rows = ["| target | paper | ours | tolerance | within |", "| --- | --- | --- | --- | --- |"]
    for t in s["targets"]:
        ours = "-" if t["ours"] is None else f"{t['ours']:.4g}"
        within = {True: "yes", False: "**no**"}.get(t.get("within"), "-")
        rows.append(f"| `{t['key']}` | {t['paper']:.4g} | {ours} | ±{t['tol']} | {within} |")
    rows += ["", "| direction claim | lhs | rhs | holds |", "| --- | --- | --- | --- |"]
    for c in s["claims"]:
        rows.append(f"| {c['claim']} | {c['lhs']:.4g} | {c['op']} {c['rhs']:.4g} (margin {c['margin']:g}) | "
                    f"{'yes' if c['ok'] else '**no**'} |")
    return "\n".join(rows) + f"\n\n({mode} run: {s['seconds']:.0f} s)\n"
