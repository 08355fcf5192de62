"""Full split-vs-federated comparison (split_workbench.topology.compare) with machine info.

  python -m bench.compare [--smoke]

Writes bench/results/compare-<backend>.json (plus the Markdown table and plots in
bench/results/compare-<backend>/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.machine import machine_info


def main() -> None:
    import jax

    from split_workbench.topology.compare import DEFAULT, SMOKE, compare

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    root = Path(__file__).parent / "results"
    tag = f"compare{'-smoke' if args.smoke else ''}-{jax.default_backend()}"
    payload = compare(root / tag, config=SMOKE if args.smoke else DEFAULT)
    payload["machine"] = {**payload["machine"], **machine_info()}
    (root / f"{tag}.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {root / tag}.json")


if __name__ == "__main__":
    main()
