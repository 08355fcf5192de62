"""(epsilon, delta) accounting for Gaussian mechanisms on the wire and on client updates.

Built on Google's ``dp-accounting`` library. A training ``Schedule`` says how often each
example is released and under which sampling assumption; ``epsilon`` turns a noise
multiplier and a schedule into epsilon at a given delta, ``calibrate_noise`` inverts it.

Three conversions are offered (``method``):

* ``"rdp"`` (the workbench's default): Renyi DP composed by ``dp_accounting.rdp.RdpAccountant``
  and converted with the library's tighter bound (Canonne-Kamath-Steinke 2020, Prop. 12;
  Asoodeh et al. 2020): ``eps = min_a rdp(a) + log1p(-1/a) - log(delta a) / (a - 1)``.
* ``"rdp_classic"``: the same RDP curve with the classic conversion of Mironov 2017
  (Prop. 3), ``eps = min_a rdp(a) - log(delta) / (a - 1)``: what TF Privacy's tutorials
  report (the MNIST yardstick 2.92 / 9.74 / 1.20).
* ``"pld"``: privacy-loss-distribution accounting (``dp_accounting.pld.PLDAccountant``),
  the tightest of the three; its discretisation is pessimistic, so it is still an upper bound.

Both RDP methods use TF Privacy's order grid (1.1..10.9 step 0.1, then 12..63), so they
differ only in the conversion.

Sampling assumptions (be honest about which one your training loop satisfies):

* ``"poisson"``: each step includes each example independently with probability
  ``q = batch_size / dataset_size``; privacy amplification by subsampling applies and
  epsilon composes over ``steps`` subsampled releases. The workbench's loop draws
  fixed-size batches from a shuffled permutation, NOT Poisson samples; reporting the
  Poisson number for it is the common practice of TF Privacy and Opacus, but it is not a
  proof for shuffling.
* ``"shuffle"``: fixed-partition shuffling with no amplification claimed. Each example is
  released at most once per epoch (the remainder of the permutation is dropped), so
  epsilon composes over ``epochs = ceil(steps / (dataset_size // batch_size))`` full
  (unsampled) Gaussian releases. This is what the workbench's loop really does.

Adjacency: ``"add_remove"`` (add or remove one example; a clipped contribution of norm
<= C has L2 sensitivity C) or ``"replace_one"`` (sensitivity 2C for unsampled releases;
the Poisson case is accounted by PLD only, which models replace-one exactly).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import dp_accounting as dpa
import numpy as np
from dp_accounting import pld, rdp

__all__ = ["Schedule", "TF_PRIVACY_ORDERS", "METHODS", "DEFAULT_METHOD", "dp_event", "epsilon",
           "privacy_report", "calibrate_noise"]

TF_PRIVACY_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
METHODS = ("rdp", "rdp_classic", "pld")
DEFAULT_METHOD = "rdp"
SAMPLINGS = ("poisson", "shuffle")
ADJACENCIES = ("add_remove", "replace_one")
# PLD grid: 1e-3 in the privacy-loss value keeps one call well under a second on CPU and
# only ever overestimates epsilon (pessimistic discretisation).
_PLD_INTERVAL = 1e-3


class Schedule(NamedTuple):
    """How often each example is released during training.

    Attributes:
      steps: training steps (one release of the mechanism per step).
      batch_size: examples per step.
      dataset_size: examples in the private training set.
      sampling: ``"poisson"`` (amplified, q = batch_size / dataset_size) or ``"shuffle"``
        (fixed-partition shuffling, one unamplified release per example per epoch).
      adjacency: ``"add_remove"`` or ``"replace_one"``.
    """

    steps: int
    batch_size: int
    dataset_size: int
    sampling: str = "poisson"
    adjacency: str = "add_remove"

    @classmethod
    def from_epochs(cls, epochs: float, batch_size: int, dataset_size: int, **kwargs) -> "Schedule":
        """Steps for ``epochs``: ``ceil(epochs N / B)`` under Poisson sampling (TF Privacy's
        convention), ``epochs * (N // B)`` under shuffling (the workbench's loop)."""
        sampling = kwargs.get("sampling", "poisson")
        if sampling == "shuffle":
            steps = int(epochs) * (int(dataset_size) // int(batch_size))
        else:
            steps = int(math.ceil(epochs * dataset_size / batch_size))
        return cls(steps, int(batch_size), int(dataset_size), **kwargs)

    @property
    def releases(self) -> int:
        """Releases of each example: ``steps`` sampled ones (Poisson) or one per epoch (shuffle)."""
        if self.sampling == "shuffle":
            return int(math.ceil(self.steps / (self.dataset_size // self.batch_size)))
        return int(self.steps)

    def check(self) -> "Schedule":
        if not (isinstance(self.steps, (int, np.integer)) and self.steps >= 0):
            raise ValueError(f"Schedule.steps must be an integer >= 0, got {self.steps!r}")
        if not (1 <= self.batch_size <= self.dataset_size):
            raise ValueError(f"Schedule needs 1 <= batch_size <= dataset_size, got {self.batch_size} "
                             f"and {self.dataset_size}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"Schedule.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.adjacency not in ADJACENCIES:
            raise ValueError(f"Schedule.adjacency must be one of {ADJACENCIES}, got {self.adjacency!r}")
        return self


def dp_event(noise_multiplier: float, schedule: Schedule) -> dpa.DpEvent:
    """The ``dp_accounting`` event of a schedule of Gaussian releases with noise
    ``noise_multiplier * C`` on contributions of norm <= C.

    Under shuffling, replace-one doubles the sensitivity, i.e. halves the effective noise
    multiplier; the event is then accounted as add/remove of a sensitivity-1 release.
    """
    schedule.check()
    if schedule.sampling == "shuffle":
        sens = 2.0 if schedule.adjacency == "replace_one" else 1.0
        return dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(noise_multiplier / sens), schedule.releases)
    q = schedule.batch_size / schedule.dataset_size
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(noise_multiplier)),
                                   schedule.steps)


def _relation(schedule: Schedule):
    # Shuffled releases are normalised to add/remove in dp_event; only the Poisson case
    # needs the library to model replace-one itself.
    if schedule.sampling == "poisson" and schedule.adjacency == "replace_one":
        return dpa.NeighboringRelation.REPLACE_ONE
    return dpa.NeighboringRelation.ADD_OR_REMOVE_ONE


def epsilon(noise_multiplier: float, delta: float, schedule: Schedule, *, method: str = DEFAULT_METHOD,
            orders: tuple[float, ...] = TF_PRIVACY_ORDERS) -> float:
    """Epsilon at ``delta`` of ``schedule`` with Gaussian noise multiplier ``noise_multiplier``.

    Args:
      noise_multiplier: noise standard deviation over the L2 sensitivity bound C; 0 means
        no noise and gives ``inf`` (no guarantee).
      delta: target delta in (0, 1).
      schedule: the releases (see ``Schedule``).
      method: ``"rdp"`` (default, the library's conversion), ``"rdp_classic"`` or ``"pld"``.
      orders: Renyi orders for the RDP methods.

    Returns:
      epsilon as a Python float (0 for zero steps, ``inf`` for zero noise).
    """
    if method not in METHODS:
        raise ValueError(f"unknown accounting method {method!r}; use one of {METHODS}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    if noise_multiplier < 0 or math.isnan(noise_multiplier):
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    schedule.check()
    if schedule.steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    event = dp_event(noise_multiplier, schedule)
    if method == "pld":
        acc = pld.PLDAccountant(_relation(schedule), value_discretization_interval=_PLD_INTERVAL)
        acc.compose(event)
        return float(acc.get_epsilon(delta))
    if _relation(schedule) != dpa.NeighboringRelation.ADD_OR_REMOVE_ONE:
        raise ValueError("RDP accounting of Poisson sampling under replace-one adjacency is not supported "
                         "by dp_accounting; use method='pld' or adjacency='add_remove'")
    acc = rdp.RdpAccountant(list(orders))
    acc.compose(event)
    if method == "rdp":
        return float(acc.get_epsilon(delta))
    a, r = np.asarray(acc.orders, np.float64), np.asarray(acc.rdp, np.float64)
    return float(max(0.0, np.min(r - math.log(delta) / (a - 1.0))))


def privacy_report(noise_multiplier: float, delta: float, schedule: Schedule) -> dict:
    """Epsilon under every method, plus the default's: what a run records."""
    out = {"delta": float(delta), "noise_multiplier": float(noise_multiplier), "method": DEFAULT_METHOD,
           "steps": int(schedule.steps), "releases_per_example": schedule.releases,
           "sampling": schedule.sampling, "adjacency": schedule.adjacency}
    for m in METHODS:
        try:
            out[f"epsilon_{m}"] = epsilon(noise_multiplier, delta, schedule, method=m)
        except ValueError:
            out[f"epsilon_{m}"] = None  # the combination is not supported by that accountant
    out["epsilon"] = out[f"epsilon_{DEFAULT_METHOD}"]
    if out["epsilon"] is None:
        out["epsilon"], out["method"] = out["epsilon_pld"], "pld"
    return out


def calibrate_noise(target_epsilon: float, delta: float, schedule: Schedule, *, method: str = DEFAULT_METHOD,
                    rtol: float = 1e-3) -> float:
    """The smallest noise multiplier (to relative tolerance ``rtol``) whose epsilon is at
    most ``target_epsilon``: bisection in log space over the monotone ``epsilon``.

    Returns the upper end of the final bracket, so ``epsilon(result) <= target_epsilon``
    always holds (the guarantee is never overstated).
    """
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    def eps(s):
        return epsilon(s, delta, schedule, method=method)
    # Bracket by doubling/halving from 1: PLD at tiny noise multipliers needs huge
    # discretised distributions, so the search never probes far below the answer.
    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target_epsilon} at delta {delta}")
    lo = hi / 2.0
    while eps(lo) <= target_epsilon:
        lo, hi = lo / 2.0, lo
        if hi < 1e-2:
            raise ValueError(f"epsilon {target_epsilon} is reached with noise multiplier < 0.01 at delta "
                             f"{delta}; the schedule is too short for calibration to be meaningful")
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi
