"""papers/: every reproduction regenerates in smoke mode and its direction claims hold;
the DP yardstick matches its exact numbers."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from split_workbench.orchestration import paper_cli


def _common():
    paper_cli.load_paper("dp_yardstick")  # puts papers/ on sys.path
    import _common

    return _common


def test_list_and_unknown_paper():
    names = paper_cli.list_papers()
    assert {"dp_yardstick", "he2019"} <= set(names)
    with pytest.raises(ValueError, match="unknown paper"):
        paper_cli.load_paper("no-such-paper")


def test_every_paper_has_specs_expected_and_readme():
    c = _common()
    for name in paper_cli.list_papers():
        folder = c.PAPERS_DIR / name
        assert (folder / "README.md").is_file(), name
        exp = json.loads((folder / "expected.json").read_text())
        assert exp.get("claims"), f"{name}: expected.json states no direction claims"
        assert list(folder.glob("*.toml")), f"{name}: no spec files"


def test_he2019_specs_validate_including_cifar_configs():
    from split_workbench.orchestration.experiment import load_spec

    c = _common()
    for f in c.spec_files("he2019"):
        spec = load_spec(f).validate()
        assert spec.targets == 10


def test_dp_yardstick_exact(tmp_path):
    s = paper_cli.run_paper("dp_yardstick", smoke=True, out=tmp_path)
    exp = _common().expected("dp_yardstick")
    tol = exp["exact"]["exact_tol"]
    for key, value in exp["exact"].items():
        if key != "exact_tol":
            assert s["results"][key] == pytest.approx(value, abs=tol), key
    assert all(t["within"] for t in s["targets"]), s["targets"]
    assert s["claims"] and all(c["ok"] for c in s["claims"]), s["claims"]
    assert (tmp_path / "epsilon_vs_epochs.png").is_file() and (tmp_path / "epsilon_vs_epochs.pdf").is_file()
    assert paper_cli.format_summary(s).count("within tolerance") == len(s["targets"])


def test_he2019_rmle_directions_smoke(tmp_path):
    """The white-box half of He et al. in under a minute: rMLE at conv1 vs relu2."""
    mod = paper_cli.load_paper("he2019")
    c = _common()
    results = {}
    for cut, spec in mod.specs(smoke=True).items():
        spec = dataclasses.replace(spec, attacks=(mod.SMOKE_ATTACKS[0],))
        rec = c.run_spec(spec, tmp_path)
        results[f"{cut}/rmle/ssim"] = rec["attacks"][spec.attacks[0]]["ssim_mean"]
    claims = [cl for cl in c.expected("he2019")["claims"] if "rmle" in cl["lhs"] and "query_free" not in cl["lhs"]]
    checked = c.check_claims(results, {"claims": claims}, smoke=True)
    assert len(checked) == 2 and all(cl["ok"] for cl in checked), checked


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in paper_cli.list_papers() if n != "dp_yardstick"])
def test_paper_smoke_claims(name, tmp_path):
    from split_workbench.data import DatasetNotFoundError

    try:
        s = paper_cli.run_paper(name, smoke=True, out=tmp_path)
    except DatasetNotFoundError as e:  # the papers' datasets are optional on other machines
        pytest.skip(f"{name}: {e}")
    assert s["claims"] and all(c["ok"] for c in s["claims"]), paper_cli.format_summary(s)
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.pdf"))


def test_cli_subcommand_parses(capsys):
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    paper_cli.add_subcommand(sub)
    args = p.parse_args(["paper", "--list"])
    assert args.func(args) == 0
    assert "dp_yardstick" in capsys.readouterr().out
    args = p.parse_args(["paper", "nope"])
    assert args.func(args) == 2
