"""Differentially private smash: per-example L2 clipping plus Gaussian noise, accounted.

The Gaussian mechanism on each example's cut activation, with (epsilon, delta) from
``defenses.accounting`` for the number of times each example is released in training.
"""

from __future__ import annotations

import jax

from split_workbench.defenses import _checks
from split_workbench.defenses.accounting import ADJACENCIES, SAMPLINGS, Schedule, privacy_report
from split_workbench.defenses.base import Defense, stateless
from split_workbench.defenses.clipping import clip_per_example
from split_workbench.defenses.noise import add_gaussian
from split_workbench.defenses.registry import register_defense

__all__ = ["dp_smash", "privatize_smash"]


def privatize_smash(z: jax.Array, clip: float, noise_multiplier: float, *, key: jax.Array) -> jax.Array:
    """``clip_C(z_i) + N(0, (sigma C)^2 I)`` for each example ``z_i`` of ``z`` (B, ...)."""
    z = clip_per_example(z, clip)
    if noise_multiplier == 0:
        return z
    return add_gaussian(z, noise_multiplier * clip, key=key)


@register_defense("dp_smash")
def dp_smash(clip: float = 1.0, noise_multiplier: float = 1.0, at: str = "train", sampling: str = "shuffle",
             adjacency: str = "add_remove") -> Defense:
    """Per-example clipping of the smash to L2 norm C, then Gaussian noise of std sigma C.

    ``z~_i = z_i min(1, C / ||z_i||_2) + sigma C e_i``, ``e_i ~ N(0, I)``.

    Guarantee: each release of one example's smash is the Gaussian mechanism with L2
    sensitivity C under add/remove-one adjacency (2C under replace-one: two clipped vectors
    differ by at most 2C) and noise multiplier sigma. Over training, ``accountant(steps=,
    batch_size=, dataset_size=, delta=)`` composes these releases:

    * ``sampling="shuffle"`` (default, what the workbench's loop does): fixed-partition
      shuffled epochs release each example at most once per epoch; no amplification is
      claimed, so epsilon composes over ``epochs = ceil(steps / (N // B))`` releases.
    * ``sampling="poisson"``: the Poisson-subsampled Gaussian with q = B/N over ``steps``;
      only valid if the batches really are Poisson samples.

    Scope: the guarantee covers what crosses the wire forward, given the client's
    parameters. The client's parameters are trained on its raw data, so later smashes of
    other examples also depend on an example through those parameters; an end-to-end
    guarantee needs ``dp_sgd`` on the client's updates as well (epsilons then add up under
    basic composition). With ``at`` = "inference"/"both", each post-training query is a
    further release that the training accountant does not count.

    Edge cases: zero-norm examples stay zero before the noise; examples with NaN/inf are
    replaced by zeros before clipping (the bound holds for every input); ``noise_multiplier
    = 0`` clips only (epsilon = inf); with a ``clip`` above every norm and zero noise the
    transform is the identity (exactly).

    Args:
      clip: the norm bound C > 0 (in the smash's units: pick it from typical smash norms).
      noise_multiplier: sigma >= 0, noise std over C.
      at: ``"train"``, ``"inference"`` or ``"both"``.
      sampling: ``"shuffle"`` or ``"poisson"`` (the accountant's assumption, see above).
      adjacency: ``"add_remove"`` or ``"replace_one"``.

    Returns:
      a ``Defense`` with the transform and ``accountant(**schedule) -> dict``
      (``epsilon`` by the library's RDP conversion, plus ``epsilon_rdp_classic`` and
      ``epsilon_pld``).

    References:
      Dwork & Roth 2014 (Gaussian mechanism); Mironov 2017 (RDP); Titcombe et al. 2021
      (noise on the cut).
    """
    clip = _checks.positive("dp_smash", "clip", clip)
    sigma = _checks.nonnegative("dp_smash", "noise_multiplier", noise_multiplier)
    _checks.choice("dp_smash", "sampling", sampling, SAMPLINGS)
    _checks.choice("dp_smash", "adjacency", adjacency, ADJACENCIES)
    train, infer = _checks.where("dp_smash", at)
    t = stateless(lambda z, *, key: privatize_smash(z, clip, sigma, key=key))

    def accountant(*, steps: int, batch_size: int, dataset_size: int, delta: float) -> dict:
        return privacy_report(sigma, delta, Schedule(int(steps), int(batch_size), int(dataset_size),
                                                     sampling, adjacency))

    sens = "2C (replace-one)" if adjacency == "replace_one" else "C (add/remove-one)"
    return Defense(
        name=f"dp_smash(adjacency={adjacency!r}, at={at!r}, clip={clip!r}, noise_multiplier={sigma!r}, "
             f"sampling={sampling!r})",
        forward=t if train else None, inference=t if infer else None,
        guarantee=(f"(epsilon, delta)-DP per example for the smash released in training: Gaussian mechanism, "
                   f"L2 sensitivity {sens}, noise {sigma} C, composed over "
                   f"{'shuffled epochs (one release per epoch, no amplification)' if sampling == 'shuffle' else 'Poisson-subsampled steps'}; "
                   "given the client's parameters (add dp_sgd for an end-to-end guarantee)"),
        accountant=accountant)
