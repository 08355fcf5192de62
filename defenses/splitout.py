"""SplitOut (Erdogan, Tekşen, Çeliktenyıldız, Küpçü, Çiçek, CANS 2024): outlier detection on the
client's first-layer gradients.

Before split learning, the client trains the whole model (its own half and a head of the
server's architecture that it initialises itself) on its own data for about 1% of an epoch
and keeps the first-layer gradient of each step: the *honest* gradients. It fits a Local
Outlier Factor (scikit-learn's ``LocalOutlierFactor(n_neighbors=n - 1, novelty=True)``) on
them. During split learning each first-layer gradient that the server's cut gradient
induces is scored by the LOF; a window of the last ``window`` gradients is flagged when its
outliers outnumber its inliers.

LOF's novelty score of a query q with k = n - 1 neighbours N_k(q) among the n training
points (reach-dist(q, o) = max(d(q, o), k-distance(o)), lrd = 1 / mean reach-dist):

    decision(q) = -mean_{o in N_k(q)} lrd(o) / lrd(q) - offset,   offset = -1.5 (contamination="auto")

and q is an outlier when decision(q) < 0. ``init`` fits scikit-learn's LOF and stores what
this needs (the training points, their k-distances and lrds, the offset); ``lof_decision``
evaluates it in JAX inside the jitted step (tests/test_detectors.py checks it against
``LocalOutlierFactor.decision_function``).

Followed (``ege-erdogan/splitout``, ``sg_ad.ipynb``):

* LOF with ``n_neighbors = n - 1`` and ``novelty=True``, default metric (Euclidean) and
  contamination ("auto");
* the honest gradients: the first-layer weight gradient (``parameters()[0].grad``) of each
  of the first 1% of an epoch's steps of local, whole-model training with Adam (lr 1e-3,
  ``amsgrad=True``, as the repository's ``get_optims('adam')``) at batch size 64;
* the windows: the window of the ``w`` latest gradients, from the ``w``-th gradient on,
  flagged when ``outliers > inliers`` (``w`` = 1 or 10 in the repository).

Departed:

* the repository fits a new LOF each epoch on that epoch's first 1% of gradients from a
  separate honest run, to measure TPR/FPR per epoch; here the client fits once, before
  training, from its own initial client parameters (what a deployed client can do), and
  scores every later step against it;
* "about 1% of an epoch" is at least ``min_steps`` steps (default 10): on a small training
  set 1% of an epoch is less than one batch (the repository's MNIST/CIFAR-10 settings give
  9 and 7 gradients);
* the server head the client trains is the server half's architecture with its kernels
  redrawn from the client's own key with the zoo's initialiser (LeCun normal, flax's
  default for ``Linear``/``Conv``), biases and normalisation parameters at their initial
  values: the client knows the architecture, not the server's draw;
* the training points' k-distances and lrds come from scikit-learn's public
  ``kneighbors()`` and its lrd formula (``1 / (mean reach-dist + 1e-10)``), not its private
  attributes.

Edge cases: fewer than 3 calibration gradients (LOF needs k >= 2 to mean anything) are
refused; duplicate honest gradients give k-distance 0 and a huge lrd (as in scikit-learn);
a window longer than the run is refused by ``check_run``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.neighbors import LocalOutlierFactor

from split_workbench.defenses._detect import first_layer_vector, initial_verdict, positive_int, probability, verdict
from split_workbench.parties import CLIENTS
from split_workbench.protocol import cross_entropy

__all__ = ["SplitOut", "splitout", "fit_lof", "lof_decision", "fresh_head", "honest_gradients"]

_LRD_EPS = 1e-10  # scikit-learn's guard in 1 / mean reach-dist


def fit_lof(points: np.ndarray) -> dict[str, np.ndarray]:
    """Fits ``LocalOutlierFactor(n_neighbors=n - 1, novelty=True)`` on ``points`` (n, d) and
    returns what ``lof_decision`` needs: ``points``, ``kdist`` (n,), ``lrd`` (n,), ``offset`` ()."""
    points = np.asarray(points, np.float64)
    n = points.shape[0]
    if n < 3:
        raise ValueError(f"LOF with n_neighbors = n - 1 needs at least 3 honest gradients, got {n}")
    lof = LocalOutlierFactor(n_neighbors=n - 1, novelty=True).fit(points)
    dist, ind = lof.kneighbors()  # each training point's k neighbours, itself excluded
    kdist = dist[:, -1]
    lrd = 1.0 / (np.maximum(dist, kdist[ind]).mean(axis=1) + _LRD_EPS)
    return {"points": points.astype(np.float32), "kdist": kdist.astype(np.float32),
            "lrd": lrd.astype(np.float32), "offset": np.float32(lof.offset_)}


def lof_decision(lof: dict, q: jax.Array) -> jax.Array:
    """LOF's ``decision_function`` of one query ``q`` (d,) against a fit from ``fit_lof``
    (negative: an outlier). Pure and jittable; k = n - 1 is static (the points' count)."""
    points = lof["points"]
    k = points.shape[0] - 1
    d = jnp.sqrt(jnp.sum(jnp.square(points - q[None, :]), axis=-1))
    neg, idx = jax.lax.top_k(-d, k)
    reach = jnp.maximum(-neg, lof["kdist"][idx])
    lrd_q = 1.0 / (jnp.mean(reach) + _LRD_EPS)
    return -jnp.mean(lof["lrd"][idx] / lrd_q) - lof["offset"]


def fresh_head(params, *, key: jax.Array):
    """``params`` (a half's parameters at initialisation) with every kernel (rank >= 2) redrawn
    from LeCun normal, the zoo's initialiser; rank-1 leaves (biases, norm scales) kept."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    init = jax.nn.initializers.lecun_normal()
    return jax.tree.unflatten(tree, [init(k, a.shape, a.dtype) if a.ndim >= 2 else a for k, a in zip(keys, leaves)])


def honest_gradients(model, params: dict, x: jax.Array, y: jax.Array, *, steps: int, batch_size: int, lr: float,
                     key: jax.Array) -> jax.Array:
    """The first-layer gradients (steps, d) of ``steps`` steps of whole-model training with
    AMSGrad on shuffled batches of ``(x, y)``: one jitted ``lax.scan``."""
    opt = optax.amsgrad(lr)
    n = x.shape[0]
    ids = jax.random.permutation(key, n)[jnp.arange(steps * batch_size) % n].reshape(steps, batch_size)

    def body(carry, b):
        p, o = carry
        g = jax.grad(lambda p_: cross_entropy(model.apply(p_, x[b]), y[b]))(p)
        upd, o = opt.update(g, o, p)
        return (optax.apply_updates(p, upd), o), first_layer_vector(g["client"])

    _, grads = jax.lax.scan(body, (params, opt.init(params)), ids)
    return grads


_honest_gradients_jit = jax.jit(honest_gradients, static_argnames=("model", "steps", "batch_size", "lr"))


@dataclass(frozen=True)
class SplitOut:
    """The SplitOut client (see the module docstring).

    Attributes:
      window: how many of the latest gradients a verdict looks at (1 or 10 in the paper).
      fraction: the share of an epoch of local training that calibrates the LOF.
      min_steps: the fewest calibration steps.
      batch_size: the calibration batch size.
      lr: the calibration optimizer's (AMSGrad) learning rate.
      stop: stop training at the alarm (False: only record it).
      x, y: the client's own training set, once bound (``bind``).
    """

    window: int = 1
    fraction: float = 0.01
    min_steps: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    stop: bool = True
    x: Any = field(default=None, repr=False, compare=False)
    y: Any = field(default=None, repr=False, compare=False)
    name: str = "splitout"
    active: bool = True
    can_stop: bool = True
    alters_batches: bool = False
    data = "private"  # the runner binds the client's own training set (not a dataclass field)

    @property
    def calibration_steps(self) -> int:
        """``max(min_steps, ceil(fraction x steps per epoch))`` of the bound data."""
        if self.x is None:
            raise ValueError("splitout holds the client's own data: bind(x, y) first")
        per_epoch = self.x.shape[0] // self.batch_size
        return max(self.min_steps, math.ceil(self.fraction * per_epoch))

    def bind(self, x, y) -> SplitOut:
        """A copy holding the client's training set ``(x, y)``, checked."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"splitout: {x.shape[0]} inputs but {y.shape[0]} labels")
        if x.shape[0] < self.batch_size:
            raise ValueError(f"splitout calibrates on batches of {self.batch_size} but holds only "
                             f"{x.shape[0]} examples")
        return dataclasses.replace(self, x=jnp.asarray(x), y=jnp.asarray(y))

    def check_run(self, steps: int) -> None:
        """Refuses a window longer than the run (it would never give a verdict)."""
        if self.window > steps:
            raise ValueError(f"splitout's window of {self.window} gradients is longer than the run's {steps} steps")

    def init(self, model, *, key: jax.Array) -> dict:
        """Calibrates: local training from the client's initial parameters and a fresh head,
        then the LOF fit (outside jit)."""
        if self.x is None:
            raise ValueError("splitout holds the client's own data: bind(x, y) before init (the runner does)")
        k_head, k_data = jax.random.split(key)
        params = {"client": model.params["client"], "server": fresh_head(model.params["server"], key=k_head)}
        grads = _honest_gradients_jit(model, params, self.x, self.y, steps=self.calibration_steps,
                                      batch_size=self.batch_size, lr=self.lr, key=k_data)
        lof = {k: jnp.asarray(v) for k, v in fit_lof(np.asarray(grads)).items()}
        return {**initial_verdict(), "lof": lof, "outliers": jnp.zeros((self.window,), bool),
                "seen": jnp.zeros((), jnp.int32)}

    def send(self, state, x, y, *, key, step):
        del key, step
        return state, x, y, jnp.ones((), bool)

    def inspect(self, state, smash, cut_grads, labels, *, step, grads):
        del smash, cut_grads, labels
        score = lof_decision(state["lof"], first_layer_vector(grads))
        outliers = jnp.roll(state["outliers"], 1).at[0].set(score < 0)
        seen = state["seen"] + 1
        flagged = (seen >= self.window) & (2 * jnp.sum(outliers) > self.window)
        state = verdict({**state, "outliers": outliers, "seen": seen}, flagged, score, step)
        return state, state["alarm"] & self.stop


@CLIENTS.register("splitout")
def splitout(window: int = 1, fraction: float = 0.01, min_steps: int = 10, batch_size: int = 64, lr: float = 1e-3,
             stop: bool = True) -> SplitOut:
    """SplitOut with the repository's LOF (n - 1 neighbours), 1% of an epoch, batch 64, Adam 1e-3."""
    positive_int("splitout window", window)
    fraction = probability("splitout fraction", fraction)
    positive_int("splitout min_steps", min_steps, at_least=3)
    positive_int("splitout batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"splitout lr must be a positive number, got {lr!r}")
    if not isinstance(stop, bool):
        raise ValueError(f"splitout stop must be True or False, got {stop!r}")
    return SplitOut(window, fraction, min_steps, batch_size, float(lr), stop)
