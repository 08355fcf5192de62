"""The comparison report: files written, the crossover agrees with the measured bytes."""

import dataclasses
import json

import pytest

from split_workbench.data import available
from split_workbench.topology.compare import SMOKE, CompareConfig, compare, crossover

needs_fashion = pytest.mark.skipif(not available("fashion-mnist"),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@needs_fashion
def test_compare_writes_tables_plot_and_a_crossover_that_matches_the_measurements(tmp_path):
    cfg = CompareConfig(models=(("he2019-lenet", "relu2", {}),), num_clients=(1, 4), alphas=(None,),
                        n_train=200, n_test=100, epochs=1, batch_size=10)
    out = compare(tmp_path, config=cfg, log=lambda *_: None)
    for f in ("comparison.md", "results.json", "bytes_per_client.png", "bytes_per_client.pdf"):
        assert (tmp_path / f).is_file()
    md = (tmp_path / "comparison.md").read_text()
    for row in ("Model location", "What is shared", "Client compute", "Communication", "Parallelism"):
        assert row in md
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs) == 2 * 3
    c = crossover(next(r for r in runs if r["topology"].startswith("SL")))
    for r in runs:
        k, per_client = r["num_clients"], r["bytes_per_epoch"]["per_client_mean"]
        if r["topology"].startswith("SL") and k > 1:
            assert per_client == pytest.approx(c["data_bytes"] / k + c["sl_weight_bytes"], rel=1e-12)
        if r["topology"] == "FedAvg":
            assert per_client == c["fl_bytes"]
    assert out["crossover"]["he2019-lenet"]["k_star"] == pytest.approx(c["k_star"])


@needs_fashion
@pytest.mark.slow
def test_cli_smoke(tmp_path):
    from split_workbench.orchestration.cli import main

    assert main(["compare", "--smoke", "--quiet", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "comparison.md").is_file()
    assert dataclasses.asdict(SMOKE)["epochs"] == 1
