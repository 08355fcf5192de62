"""Inverse network with and without smash standardisation, at a shallow and a deep cut.

    python -m bench.inverse_net_scale [--steps 3000] [--epochs 5] [--train 6000]

He 2019 LeNet on mnist10k, cut at conv1 and relu2, trained as in papers/he2019; the
attacker queries the client with 2,000 auxiliary images and decodes 64 private targets.
Writes bench/results/inverse_net_scale-<device>.json: SSIM/PSNR per (cut, standardize), the
smash's scale, and the decoder's final training MSE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.attacks import build_attack, observe
from bench.machine import machine_info
from split_workbench import metrics
from split_workbench.data import load
from split_workbench.models import make_model
from split_workbench.protocol import SplitTrainer
from split_workbench.split import split
from split_workbench.training import fit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--targets", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    ds = load("mnist10k")
    x_aux, x_priv, y_priv = ds.x_train[:2000], ds.x_train[2000:2000 + a.train], ds.y_train[2000:2000 + a.train]
    rows = []
    for cut in ("conv1", "relu2"):
        model = make_model("he2019-lenet", key=jax.random.key(0), input_shape=(28, 28, 1), num_classes=10)
        trainer = SplitTrainer(split(model, cut), optax.adam(1e-3), optax.adam(1e-3))
        state = fit(trainer, x_priv, y_priv, epochs=a.epochs, batch_size=32, key=jax.random.key(1)).state
        acc = float(jnp.mean(jnp.argmax(trainer.model.apply(state.params, jnp.asarray(ds.x_test)), -1)
                             == jnp.asarray(ds.y_test)))
        xt = jnp.asarray(x_priv[: a.targets])
        for standardize in (False, True):
            attack = build_attack(f"inverse_net(steps={a.steps}, standardize={standardize})")
            obs = observe(trainer, state.params, xt, None, grants=attack.needs, aux=(x_aux, None),
                          key=jax.random.key(2), wire="inference")
            r = attack(obs, key=jax.random.key(3))
            curve = np.asarray(r.stats["loss_curve"])
            rows.append({"cut": cut, "standardize": standardize, "test_accuracy": acc,
                         "smash_abs_mean": float(jnp.mean(jnp.abs(obs.smash))),
                         "smash_max": float(jnp.max(obs.smash)),
                         "ssim": float(jnp.mean(metrics.ssim(r.output, xt))),
                         "psnr": float(jnp.mean(metrics.psnr(r.output, xt))),
                         "decoder_mse_first": float(curve[0]), "decoder_mse_last": float(np.mean(curve[-50:])),
                         "seconds": float(r.stats["seconds"])})
            print(json.dumps(rows[-1]), flush=True)
    info = machine_info()
    out = a.out or Path(__file__).parent / "results" / f"inverse_net_scale-{'gpu' if info['backend'] == 'gpu' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": vars(a) | {"out": str(out)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
