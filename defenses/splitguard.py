"""SplitGuard (Erdogan, Küpçü, Çiçek, WPES 2022): the client probes the server with fake batches.

After ``N`` batches, with probability ``P_F`` the client sends a *fake batch* whose labels are
``(y + r) mod C`` (one ``r`` in ``1..C-2`` per batch) and does not apply the update it gets
back. An honest server answers a fake batch with a gradient unlike the regular ones (it
pushes towards wrong labels, and is larger); a hijacking server, whose gradients do not
depend on the labels, answers fakes and regular batches alike. With ``F`` the first-layer
gradients of the fake batches and ``R1``, ``R2`` those of the regular batches split at random,

    x = theta(mean F, mean R) d1 / (d1 + d2) - theta(mean R1, mean R2) d2 / (d1 + d2)
    d1 = | mean ||F|| - mean ||R|| |,   d2 = | mean ||R1|| - mean ||R2|| |
    SG = sigmoid(alpha x) ** beta

with angles in radians. SG is near 1 for an honest server (fakes point elsewhere and differ
in size, the two regular halves agree) and near ``sigmoid(0) ** beta = 0.25`` or below when
fakes and regular batches look alike. The client raises the alarm when SG falls *below*
``threshold``.

Followed (``ege-erdogan/splitguard``, ``label-changing/splitguard.ipynb``):

* the schedule: a batch is fake when its index exceeds ``N`` (``index > N``, so the first
  candidate is batch ``N + 1``) and a uniform draw is ``<= P_F``; regular batches after
  ``N`` go to R1 or R2 with probability 1/2 each; batches up to ``N`` are not collected;
* the fake labels ``(y + r) mod C``, ``r`` uniform in ``1..C-2`` (the notebook's
  ``random.randint(1, 8)`` for C = 10), on the whole batch (its ``b_fake = 64`` = batch size);
* the client does not step on a fake batch; the server trains on it (it cannot tell);
* the first-layer gradient is the first layer's weight gradient (``parameters()[0]``);
* the score is computed at each fake batch once R1 and R2 are non-empty, from all fakes so
  far, and ``mean(R1 u R2)`` is, as in ``sg_score``, the average of the two halves' means
  ``(mean R1 + mean R2) / 2`` (likewise the magnitudes), not the pooled mean;
* ``alpha = 5`` (``mult``), ``beta = 2`` (``exp``), no shift.

Departed:

* running sums of the gradients and of their norms replace the notebook's lists (the means
  are the same; the state has a fixed shape inside ``lax.scan``);
* the decision rule: the repository prints the scores and has none. The alarm here is
  ``SG < threshold`` on the latest score (default 0.5, the midpoint between an honest ~1 and
  the ~0.25 of indistinguishable fakes); it is a parameter, and a score is read only at a
  fake batch, and only once ``min_fakes`` (default 5) fake batches have been answered: on
  the first one or two fakes the score is noise (the detection table's honest runs raised
  false alarms at steps 30-37 without this rule);
* ``theta``'s cosine is clipped to [-1, 1] (NumPy's ``arccos`` returns NaN past it); when
  ``d1 + d2 = 0`` (all mean magnitudes equal) both weights are 1/2; a zero-norm mean
  vector gives angle pi/2 (no direction).

Edge cases: C < 3 has no ``r`` in ``1..C-2`` and is refused at ``init``; a run too short to
expect one fake batch after ``N`` is refused by ``check_run``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from split_workbench.defenses._detect import first_layer_kernel, first_layer_vector, initial_verdict, positive_int, \
    probability, verdict
from split_workbench.parties import CLIENTS

__all__ = ["SplitGuard", "splitguard", "sg_score"]


def _angle(u: jax.Array, v: jax.Array) -> jax.Array:
    nu, nv = jnp.linalg.norm(u), jnp.linalg.norm(v)
    ok = (nu > 0) & (nv > 0)
    cos = jnp.where(ok, jnp.dot(u, v) / jnp.where(ok, nu * nv, 1.0), 0.0)
    return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


def sg_score(f_mean, f_mag, r1_mean, r1_mag, r2_mean, r2_mag, *, alpha: float = 5.0, beta: float = 2.0):
    """The SplitGuard score from the mean fake gradient, the two regular halves' means, and
    their mean norms; returns ``(SG, x)``."""
    r_mean, r_mag = (r1_mean + r2_mean) / 2, (r1_mag + r2_mag) / 2
    d1, d2 = jnp.abs(f_mag - r_mag), jnp.abs(r1_mag - r2_mag)
    total = d1 + d2
    w1 = jnp.where(total > 0, d1 / jnp.where(total > 0, total, 1.0), 0.5)
    x = _angle(f_mean, r_mean) * w1 - _angle(r1_mean, r2_mean) * (1 - w1)
    return jax.nn.sigmoid(alpha * x) ** beta, x


@dataclass(frozen=True)
class SplitGuard:
    """The SplitGuard client (see the module docstring).

    Attributes:
      start: N, the batches before the first fake may be sent.
      p_fake: P_F, the probability that a batch after ``start`` is fake.
      alpha, beta: the squashing function's slope and exponent.
      threshold: the alarm is raised when SG falls below it.
      stop: stop training at the alarm (False: only record it).
      min_fakes: the fake batches needed before a score can raise the alarm.
    """

    start: int = 20
    p_fake: float = 0.1
    alpha: float = 5.0
    beta: float = 2.0
    threshold: float = 0.5
    stop: bool = True
    min_fakes: int = 5
    name: str = "splitguard"
    active: bool = True
    can_stop: bool = True
    alters_batches: bool = True

    def check_run(self, steps: int) -> None:
        """Refuses a run in which not even one fake batch is expected after ``start``."""
        after = steps - (self.start + 1)
        if after * self.p_fake < self.min_fakes:
            raise ValueError(f"splitguard needs a run in which at least min_fakes={self.min_fakes} fake batches are "
                             f"expected: {steps} steps leave {max(after, 0)} after start={self.start}, x "
                             f"p_fake={self.p_fake} = {max(after, 0) * self.p_fake:g}")

    def init(self, model, *, key: jax.Array) -> dict:
        del key
        classes = int(model.output_shape[-1])
        if classes < 3:
            raise ValueError(f"splitguard's fake labels (y + r) mod C with r in 1..C-2 need C >= 3 classes, "
                             f"got {classes}")
        d = int(first_layer_kernel(model.params["client"]).size)
        zeros = jnp.zeros((3, d), jnp.float32)  # rows: F, R1, R2
        return {**initial_verdict(), "classes": jnp.asarray(classes, jnp.int32), "fake": jnp.zeros((), bool),
                "half": jnp.zeros((), jnp.int32), "sums": zeros, "mags": jnp.zeros((3,), jnp.float32),
                "counts": jnp.zeros((3,), jnp.int32), "x": jnp.zeros((), jnp.float32)}

    def send(self, state, x, y, *, key, step):
        k_fake, k_r, k_half = jax.random.split(key, 3)
        fake = (step > self.start) & (jax.random.uniform(k_fake) <= self.p_fake)
        r = jax.random.randint(k_r, (), 1, state["classes"] - 1)  # 1..C-2
        y_sent = jnp.where(fake, (y + r.astype(y.dtype)) % state["classes"].astype(y.dtype), y)
        half = 1 + jax.random.bernoulli(k_half).astype(jnp.int32)  # R1 or R2 for a regular batch
        return {**state, "fake": fake, "half": half}, x, y_sent, ~fake

    def inspect(self, state, smash, cut_grads, labels, *, step, grads):
        del smash, cut_grads, labels
        g = first_layer_vector(grads)
        fake = state["fake"]
        collect = fake | (step > self.start)
        row = jnp.where(fake, 0, state["half"])
        hit = (jnp.arange(3) == row) & collect
        sums = state["sums"] + hit[:, None] * g[None, :]
        mags = state["mags"] + hit * jnp.linalg.norm(g)
        counts = state["counts"] + hit.astype(jnp.int32)
        n = jnp.maximum(counts, 1).astype(jnp.float32)
        means, mean_mags = sums / n[:, None], mags / n
        sg, xv = sg_score(means[0], mean_mags[0], means[1], mean_mags[1], means[2], mean_mags[2],
                          alpha=self.alpha, beta=self.beta)
        scored = fake & (counts[1] > 0) & (counts[2] > 0)
        state = {**state, "sums": sums, "mags": mags, "counts": counts,
                 "x": jnp.where(scored, xv, state["x"])}
        decides = scored & (counts[0] >= self.min_fakes)
        state = verdict(state, decides & (sg < self.threshold), jnp.where(scored, sg, state["score"]), step)
        return state, state["alarm"] & self.stop


@CLIENTS.register("splitguard")
def splitguard(start: int = 20, p_fake: float = 0.1, alpha: float = 5.0, beta: float = 2.0, threshold: float = 0.5,
               stop: bool = True, min_fakes: int = 5) -> SplitGuard:
    """SplitGuard with the repository's N = 20, P_F = 0.1, alpha = 5, beta = 2."""
    positive_int("splitguard start", start, at_least=0)
    p_fake = probability("splitguard p_fake", p_fake)
    threshold = probability("splitguard threshold", threshold)
    for nm, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"splitguard {nm} must be a positive number, got {v!r}")
    if not isinstance(stop, bool):
        raise ValueError(f"splitguard stop must be True or False, got {stop!r}")
    positive_int("splitguard min_fakes", min_fakes)
    return SplitGuard(start, p_fake, float(alpha), float(beta), threshold, stop, min_fakes)
