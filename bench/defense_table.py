"""Test accuracy vs rMLE SSIM for every defense at two strengths (one model and cut).

He 2019 LeNet cut at relu2, Fashion-MNIST subset (first 3000 training images, 1 epoch,
batch 32, Adam 1e-3), test accuracy on the first 2000 test images; the attacker is rMLE
(white-box, 300 Adam steps, TV 0.01) on the 10 first smashes of the last training step as
they crossed the wire, scored by SSIM against the private inputs. Writes
bench/results/defense_table-cpu.json with machine info.

    python bench/defense_table.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from split_workbench.attacks import build_attack
from split_workbench.attacks.base import Observation
from split_workbench.defenses import build_defense
from split_workbench.defenses.accounting import Schedule, calibrate_noise
from split_workbench.data import load
from split_workbench.metrics import ssim
from split_workbench.training import fit
from split_workbench.orchestration.experiment import ExperimentSpec
from split_workbench.orchestration.runner import build_trainer

N, B, DELTA, EPOCHS = 3000, 32, 1e-5, 1


def specs() -> list[tuple[str, str]]:
    shuffle = Schedule.from_epochs(EPOCHS, B, N, sampling="shuffle")
    s8, s1 = (calibrate_noise(e, DELTA, shuffle) for e in (8.0, 1.0))
    return [("none", "")] + [(name, spec) for name, spec in [
        ("gaussian_noise", "gaussian_noise(sigma=0.5)"), ("gaussian_noise", "gaussian_noise(sigma=2.0)"),
        ("laplace_noise", "laplace_noise(scale=0.5)"), ("laplace_noise", "laplace_noise(scale=1.0)"),
        ("dp_smash", f"dp_smash(clip=5.0, noise_multiplier={s8:.4f})"),
        ("dp_smash", f"dp_smash(clip=5.0, noise_multiplier={s1:.4f})"),
        ("dp_sgd", "dp_sgd(clip=1.0, noise_multiplier=1.0)"), ("dp_sgd", "dp_sgd(clip=1.0, noise_multiplier=4.0)"),
        ("nopeek", "nopeek(alpha=0.5)"), ("nopeek", "nopeek(alpha=2.0)"),
        ("cut_dropout", "cut_dropout(rate=0.3)"), ("cut_dropout", "cut_dropout(rate=0.7)"),
        ("topk", "topk(fraction=0.25)"), ("topk", "topk(fraction=0.05)"),
        ("quantize", "quantize(bits=4)"), ("quantize", "quantize(bits=1)"),
        ("grad_noise", "grad_noise(sigma=0.01)"), ("grad_noise", "grad_noise(sigma=0.1)"),
        ("max_norm", "max_norm"),
    ]]


def one(spec: str, ds) -> dict:
    x, y = ds.x_train[:N], ds.y_train[:N]
    defenses = (spec,) if spec else ()
    cfg = ExperimentSpec(data="fashion-mnist", model="he2019-lenet", cut="relu2", epochs=EPOCHS, batch_size=B,
                         defenses=defenses, attacks=())
    trainer = build_trainer(cfg.build(), (28, 28, 1))
    steps = N // B
    t0 = time.perf_counter()
    res = fit(trainer, x, y, epochs=EPOCHS, batch_size=B, key=jax.random.key(1), x_test=ds.x_test[:2000],
              y_test=ds.y_test[:2000], tap_steps=(EPOCHS * steps - 1,))
    train_s = time.perf_counter() - t0
    tap = res.taps[0]
    ids = tap.example_ids[0][:10]
    obs = Observation(smash=tap.smash[0][:10], client_apply=trainer.model.client.apply,
                      client_params=res.state.params["client"], input_shape=(28, 28, 1))
    out = build_attack("rmle(steps=300)")(obs, key=jax.random.key(2)).output
    row = {"spec": spec or "none", "test_accuracy": res.history[-1]["test_accuracy"],
           "rmle_ssim": float(np.mean(ssim(out, x[ids]))), "forward_bytes_per_step": trainer.traffic(B).forward,
           "train_seconds": train_s}
    if spec:
        d = build_defense(spec)
        row["guarantee"] = d.guarantee
        if d.accountant is not None:
            rep = d.accountant(steps=EPOCHS * steps, batch_size=B, dataset_size=N, delta=DELTA)
            row.update({k: rep[k] for k in ("epsilon", "epsilon_rdp_classic", "epsilon_pld", "sampling")})
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "defense_table-cpu.json"))
    args = ap.parse_args()
    ds = load("fashion-mnist")
    rows = []
    for family, spec in specs():
        row = one(spec, ds)
        row["family"] = family
        rows.append(row)
        print(f"{row['spec']:<55} acc {row['test_accuracy']:.3f}  ssim {row['rmle_ssim']:.3f}  "
              f"eps {row.get('epsilon', '-')}", flush=True)
    result = {
        "setup": {"model": "he2019-lenet", "cut": "relu2", "data": f"fashion-mnist train[:{N}], test[:2000]",
                  "epochs": EPOCHS, "batch_size": B, "optimizer": "adam 1e-3", "delta": DELTA,
                  "attack": "rmle(steps=300) on 10 smashes of the last step, white-box"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "jax": jax.__version__,
                    "device": str(jax.devices()[0]), "load_average": os.getloadavg()},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)  # atomic: no half-written result
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
