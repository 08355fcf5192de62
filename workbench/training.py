"""Training a split model: ``fit`` loops over epochs in Python (orchestration, progress,
evaluation); each epoch is one jitted ``lax.scan`` over its steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from split_workbench.progress import Progress
from split_workbench.protocol import SplitState, SplitTrainer
from split_workbench.wire import Tap

__all__ = ["OPTIMIZERS", "FitResult", "fit", "party_key"]

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}



def party_key(key: jax.Array) -> jax.Array:
    """The key that seeds the parties' own state in ``fit`` (its epochs use ``fold_in(key, e)``)."""
    return jax.random.fold_in(jax.random.split(key)[1], 0)


@dataclass
class FitResult:
    state: SplitState
    history: list[dict]
    taps: list[Tap]


def fit(trainer: SplitTrainer, x_train, y_train, *, epochs: int, batch_size: int, key: jax.Array,
        x_test=None, y_test=None, tap_steps: tuple[int, ...] = (), state: SplitState | None = None,
        progress: bool = False) -> FitResult:
    """Trains for ``epochs``; the per-epoch key is ``fold_in(key, epoch)``.

    ``tap_steps`` are global step indices at which what crossed the wire is recorded. When
    the client party stops training (a detector), the epoch in which it stopped is the last
    one (its record says ``"stopped": True``); no update is applied from the stopping step on.
    """
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    n = x_train.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    steps = n // batch_size
    taps_sorted = tuple(sorted({int(s) for s in tap_steps}))
    if taps_sorted and (taps_sorted[0] < 0 or taps_sorted[-1] >= epochs * steps):
        raise ValueError(f"tap_steps must lie in 0..{epochs * steps - 1} ({epochs} epochs x {steps} steps)")
    state = trainer.init(key=party_key(key)) if state is None else state
    traffic = trainer.traffic(batch_size).scale(steps)
    history, taps = [], []
    bar = Progress(epochs, "train", enabled=progress)
    for e in range(epochs):
        start = int(state.step)
        local = tuple(s - start for s in taps_sorted if start <= s < start + steps)
        t0 = time.perf_counter()
        state, metrics, tap = trainer.epoch(state, x_train, y_train, key=jax.random.fold_in(key, e),
                                            batch_size=batch_size, tap_local=local)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        if tap is not None:
            taps.append(tap._replace(steps=tap.steps + start))
        rec = {"epoch": e + 1, "steps": steps, "train_loss": float(metrics.loss.mean()),
               "train_accuracy": float(metrics.accuracy.mean()), "client_reg": float(metrics.client_reg.mean()),
               "seconds": seconds, "images_per_second": steps * batch_size / seconds, **traffic.as_dict()}
        if x_test is not None:
            ev = trainer.evaluate(state.params, x_test, y_test)
            rec.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
        stopped = state.stopped is not None and bool(state.stopped)
        if stopped:
            rec["stopped"] = True
        history.append(rec)
        bar.update(1, f"loss {rec['train_loss']:.3f}" + (f" test acc {rec['test_accuracy']:.3f}" if x_test is not None else ""))
        if stopped:
            break
    return FitResult(state, history, taps)
