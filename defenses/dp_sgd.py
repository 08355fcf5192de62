"""DP-SGD on the client's parameter updates (Abadi et al. 2016), accounted.

The protocol computes per-example client gradients (each of that example's own loss)
and applies this defense's ``privatizer`` to them: clip, sum, add noise, average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from split_workbench.defenses import _checks
from split_workbench.defenses.accounting import ADJACENCIES, SAMPLINGS, Schedule, privacy_report
from split_workbench.defenses.base import Defense
from split_workbench.defenses.clipping import clip_tree_per_example
from split_workbench.defenses.registry import register_defense

__all__ = ["dp_sgd", "dp_sgd_privatizer"]


def dp_sgd_privatizer(clip: float, noise_multiplier: float):
    """``privatize(per_example_grads, *, key) -> grads`` for DP-SGD.

    ``g = (sum_i clip_C(g_i) + N(0, (sigma C)^2 I)) / B``, each ``clip_C`` on the global
    L2 norm of example i's whole gradient pytree; one independent normal draw per leaf
    (``fold_in(key, leaf index)``). B is the leading axis of the per-example leaves.
    """
    def privatize(per_example, *, key):
        leaves, treedef = jax.tree.flatten(clip_tree_per_example(per_example, clip))
        b = leaves[0].shape[0]
        out = []
        for i, g in enumerate(leaves):
            s = jnp.sum(g, axis=0)
            if noise_multiplier > 0:
                s = s + (noise_multiplier * clip * jax.random.normal(jax.random.fold_in(key, i), s.shape,
                                                                    jnp.float32)).astype(s.dtype)
            out.append(s / b)
        return jax.tree.unflatten(treedef, out)
    return privatize


@register_defense("dp_sgd")
def dp_sgd(clip: float = 1.0, noise_multiplier: float = 1.1, sampling: str = "poisson",
           adjacency: str = "add_remove") -> Defense:
    """DP-SGD on the client's parameter updates: clip each example's gradient, sum, noise, average.

    ``g = (sum_i g_i min(1, C / ||g_i||) + sigma C e) / B``, ``e ~ N(0, I)``.

    Guarantee: (epsilon, delta)-DP of the client's parameter trajectory with respect to one
    example, under add/remove-one adjacency (sensitivity C of the clipped sum), from
    ``accountant(steps=, batch_size=, dataset_size=, delta=)``: by default the
    Poisson-subsampled Gaussian with q = B/N over ``steps`` (TF Privacy/Opacus practice);
    the workbench's loop shuffles fixed-size batches, for which that amplification is not
    proven, so ``sampling="shuffle"`` gives the honest unamplified count (one release per
    epoch). The smash and cut gradients that cross the wire are NOT covered: the smash is
    a function of the raw input (pair with ``dp_smash``), and the server's parameters are
    trained on unclipped smash.

    Edge cases: examples whose gradient has NaN/inf are zeroed before clipping (the
    sensitivity bound holds for every input); zero gradients stay zero; with zero noise and
    a clip above every norm this is the plain batch-mean gradient (up to float rounding in
    the sum); ``noise_multiplier = 0`` gives epsilon = inf.

    Args:
      clip: per-example gradient norm bound C > 0.
      noise_multiplier: sigma >= 0.
      sampling: ``"poisson"`` (default, amplified) or ``"shuffle"`` (no amplification).
      adjacency: ``"add_remove"`` or ``"replace_one"`` (Poisson + replace-one: PLD only).

    Returns:
      a ``Defense`` with a ``privatizer`` and an ``accountant``.

    References:
      Abadi et al. 2016, "Deep Learning with Differential Privacy"; Mironov 2017;
      TF Privacy MNIST tutorial (noise 1.1, 60 epochs, batch 256).
    """
    clip = _checks.positive("dp_sgd", "clip", clip)
    sigma = _checks.nonnegative("dp_sgd", "noise_multiplier", noise_multiplier)
    _checks.choice("dp_sgd", "sampling", sampling, SAMPLINGS)
    _checks.choice("dp_sgd", "adjacency", adjacency, ADJACENCIES)

    def accountant(*, steps: int, batch_size: int, dataset_size: int, delta: float) -> dict:
        return privacy_report(sigma, delta, Schedule(int(steps), int(batch_size), int(dataset_size),
                                                     sampling, adjacency))

    return Defense(
        name=f"dp_sgd(adjacency={adjacency!r}, clip={clip!r}, noise_multiplier={sigma!r}, sampling={sampling!r})",
        privatizer=dp_sgd_privatizer(clip, sigma),
        guarantee=(f"(epsilon, delta)-DP of the client's parameter updates, sensitivity C ({adjacency}), "
                   f"noise {sigma} C, {sampling} sampling; the wire is not covered"),
        accountant=accountant)
