"""notebooks/: every tutorial's percent-format .py runs with SMOKE=1, and each .ipynb is
its jupytext pair with outputs stripped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SCRIPTS = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
SLOW = set()  # names of notebooks too slow for the default run


def _id(p):
    return p.stem


def test_there_are_notebooks():
    assert SCRIPTS, f"no notebooks in {NB_DIR}"
    # the tests run the .py: an .ipynb without one would never be executed
    orphans = sorted(p.name for p in NB_DIR.glob("*.ipynb") if not p.with_suffix(".py").is_file())
    assert not orphans, f"notebooks without their percent-format .py pair: {orphans}"


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s.stem in SLOW else s
                                    for s in SCRIPTS], ids=_id)
def test_notebook_runs_in_smoke_mode(script, tmp_path):
    env = {**os.environ, "SMOKE": "1", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("script", SCRIPTS, ids=_id)
def test_ipynb_in_sync_and_stripped(script):
    jupytext = pytest.importorskip("jupytext")
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.is_file(), f"missing {ipynb.name}: run jupytext --to ipynb {script}"
    nb = jupytext.read(ipynb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{ipynb.name}: outputs not stripped"
    from_py = jupytext.read(script)
    src = lambda n: [(c.cell_type, c.source.strip()) for c in n.cells]
    assert src(nb) == src(from_py), f"{ipynb.name} is out of sync with {script.name}: run jupytext --sync {script}"
