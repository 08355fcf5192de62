"""Reports from a folder of result records: the attack x defense matrix with 95% intervals
over seeds, privacy-utility curves, reconstruction grids; Markdown and HTML, figures as
PNG and PDF."""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

__all__ = ["load_records", "summarise", "write_report"]


def load_records(run_dir) -> list[dict]:
    """Every complete record under ``run_dir`` (temporary folders of killed runs are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder of runs (write one with `split-workbench sweep`)")
    records = []
    for f in sorted(run_dir.glob("*/result.json")):
        if f.parent.name.startswith("."):
            continue
        try:
            records.append({**json.loads(f.read_text()), "_dir": str(f.parent)})
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON ({e}); remove that run folder and rerun the sweep") from None
    if not records:
        raise FileNotFoundError(f"no result records (*/result.json) under {run_dir}")
    return records


def _mean_ci(values) -> tuple[float, float, int]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    if v.size == 1:
        return float(v[0]), 0.0, 1

    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half), int(v.size)


def _defense_label(spec: dict) -> str:
    return " + ".join(spec["defenses"]) or "none"


def _setting(spec: dict) -> str:
    return f"{spec['model']}@{spec['cut']} on {spec['data']}"


def summarise(records: list[dict]) -> dict:
    """Groups records by (setting, defenses) over seeds: accuracy, dCor, epsilon, each attack."""
    groups = defaultdict(list)
    for r in records:
        groups[(_setting(r["spec"]), _defense_label(r["spec"]))].append(r)
    rows = []
    for (setting, defense), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1])):
        rs = sorted(rs, key=lambda r: r["spec"]["seed"])
        row = {"setting": setting, "defense": defense, "seeds": sorted(r["spec"]["seed"] for r in rs),
               "accuracy": _mean_ci([r["metrics"]["test_accuracy"] for r in rs]),
               "dcor": _mean_ci([r["metrics"]["dcor_input_smash"] for r in rs]),
               "epsilon": [p.get("epsilon") for p in rs[0]["privacy"] if p.get("epsilon") is not None],
               "attacks": {}, "records": rs}
        for a in rs[0]["attacks"]:
            entries = [r["attacks"].get(a, {}) for r in rs]
            row["attacks"][a] = {m: _mean_ci([e.get(m) for e in entries])
                                 for m in ("ssim_mean", "psnr_mean", "mse_mean", "auc", "label_accuracy")
                                 if any(e.get(m) is not None for e in entries)}
        rows.append(row)
    return {"rows": rows, "attacks": sorted({a for r in records for a in r["attacks"]})}


def _fmt(mc, digits=3) -> str:
    m, h, n = mc
    if n == 0 or np.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {h:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def _family(defense: str) -> tuple[str, float]:
    """``laplace_noise(scale=0.5)`` -> ("laplace_noise", 0.5): the family and its first number."""
    name = defense.split("(")[0]
    nums = re.findall(r"=\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", defense)
    return name, float(nums[0]) if nums else 0.0


def _figures(summary: dict, out: Path) -> list[str]:

    files = []
    inv = [a for a in summary["attacks"] if any("ssim_mean" in r["attacks"].get(a, {}) for r in summary["rows"])]
    settings = sorted({r["setting"] for r in summary["rows"]})
    if inv:
        fig = Figure(figsize=(4.2 * len(inv), 3.6 * len(settings)))
        axes = fig.subplots(len(settings), len(inv), squeeze=False)
        for si, setting in enumerate(settings):
            rows = [r for r in summary["rows"] if r["setting"] == setting]
            for ai, a in enumerate(inv):
                ax = axes[si][ai]
                fams = defaultdict(list)
                for r in rows:
                    if "ssim_mean" in r["attacks"].get(a, {}):
                        fams[_family(r["defense"])[0] if r["defense"] != "none" else "none"].append(r)
                for fam, rs in sorted(fams.items()):
                    rs = sorted(rs, key=lambda r: _family(r["defense"])[1])
                    x = [r["attacks"][a]["ssim_mean"][0] for r in rs]
                    xe = [r["attacks"][a]["ssim_mean"][1] for r in rs]
                    y = [r["accuracy"][0] for r in rs]
                    ye = [r["accuracy"][1] for r in rs]
                    ax.errorbar(x, y, xerr=xe, yerr=ye, marker="*" if fam == "none" else "o",
                                ms=10 if fam == "none" else 5, capsize=2, label=fam,
                                ls="none" if fam == "none" else "-")
                ax.set_xlabel(f"attack SSIM ({a})")
                ax.set_ylabel("test accuracy")
                ax.set_title(setting, fontsize=9)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle("Privacy-utility: lower SSIM is more private, higher accuracy more useful", fontsize=10)
        fig.tight_layout()
        for ext in ("png", "pdf"):
            fig.savefig(out / f"privacy_utility.{ext}", dpi=150)
        files.append("privacy_utility.png")

    # reconstruction grid: per setting, one row of originals then one row per (defense, attack)
    for si, setting in enumerate(settings):
        rows = [r for r in summary["rows"] if r["setting"] == setting]
        panels = []
        for r in rows:
            rec = r["records"][0]
            npz = Path(rec["_dir"]) / "reconstructions.npz"
            if not npz.is_file():
                continue
            with np.load(npz) as z:
                if not panels:
                    panels.append(("original", z["original"][:8]))
                for k in z.files:
                    if k != "original":
                        panels.append((f"{r['defense']} | {k}", z[k][:8]))
        if not panels:
            continue
        cols = panels[0][1].shape[0]
        fig = Figure(figsize=(1.1 * cols + 2.5, 1.15 * len(panels)))
        axes = fig.subplots(len(panels), cols, squeeze=False)
        for i, (label, imgs) in enumerate(panels):
            for j in range(cols):
                ax = axes[i][j]
                img = np.clip(imgs[j], 0, 1)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
            axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        fig.suptitle(f"Reconstructions, {setting} (seed {rows[0]['records'][0]['spec']['seed']})", fontsize=9)
        fig.tight_layout()
        name = f"reconstructions_{si}"
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{name}.{ext}", dpi=120, bbox_inches="tight")  # keep long row labels
        files.append(f"{name}.png")
    return files


def _tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    for setting in sorted({r["setting"] for r in summary["rows"]}):
        rows = [r for r in summary["rows"] if r["setting"] == setting]
        attacks = [a for a in summary["attacks"] if any(a in r["attacks"] for r in rows)]
        head = ["defense", "seeds", "test accuracy", "dCor(x, z)", "epsilon"]
        for a in attacks:
            kinds = {m for r in rows for m in r["attacks"].get(a, {})}
            if "ssim_mean" in kinds:
                head += [f"{a} SSIM", f"{a} PSNR dB"]
            if "auc" in kinds:
                head.append(f"{a} leak AUC")
            if "label_accuracy" in kinds:
                head.append(f"{a} label acc")
        body = []
        for r in rows:
            line = [r["defense"], str(len(r["seeds"])), _fmt(r["accuracy"]), _fmt(r["dcor"]),
                    ", ".join(f"{e:.2f}" for e in r["epsilon"]) or "-"]
            for a in attacks:
                e = r["attacks"].get(a, {})
                kinds = {m for rr in rows for m in rr["attacks"].get(a, {})}
                if "ssim_mean" in kinds:
                    line += [_fmt(e.get("ssim_mean", (np.nan, 0, 0))), _fmt(e.get("psnr_mean", (np.nan, 0, 0)), 2)]
                if "auc" in kinds:
                    line.append(_fmt(e.get("auc", (np.nan, 0, 0))))
                if "label_accuracy" in kinds:
                    line.append(_fmt(e.get("label_accuracy", (np.nan, 0, 0))))
            body.append(line)
        tables.append((setting, head, body))
    return tables


def write_report(run_dir, out_dir=None) -> Path:
    """Writes ``report.md``, ``report.html`` and the figures into ``out_dir`` (default ``run_dir/report``)."""
    records = load_records(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records)
    figures = _figures(summary, out)
    tables = _tables(summary)
    versions = records[0].get("versions", {})
    md = [f"# Privacy-utility report: {Path(run_dir).name}", "",
          f"{len(records)} runs. Cells: mean ± half-width of the 95% t-interval over seeds (no ± with one seed). "
          "SSIM/PSNR score each attack's reconstructions of the private targets (scikit-image conventions, "
          "data range 1). dCor is Szekely's distance correlation between inputs and smash. The attacker sees the "
          "smash after the defenses.", ""]
    for setting, head, body in tables:
        md += [f"## {setting}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(line) + " |" for line in body]
        md.append("")
    for f in figures:
        md += [f"![{f}]({f})", ""]
    md += [f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}", ""]
    (out / "report.md").write_text("\n".join(md))
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>"
         "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}img{max-width:100%}</style></head><body>",
         f"<h1>Privacy-utility report: {html.escape(Path(run_dir).name)}</h1><p>{html.escape(md[2])}</p>"]
    for setting, head, body in tables:
        h.append(f"<h2>{html.escape(setting)}</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in body]
        h.append("</table>")
    h += [f"<p><img src='{f}'></p>" for f in figures]
    h.append(f"<p>{html.escape(md[-2])}</p></body></html>")
    (out / "report.html").write_text("\n".join(h))
    return out / "report.md"
