"""NoPeek: decorrelate the smash from the raw input with a distance-correlation penalty."""

from __future__ import annotations

from split_workbench.defenses import _checks
from split_workbench.defenses.base import Defense, LossTerm
from split_workbench.defenses.registry import register_defense, vmappable
from split_workbench.metrics import distance_correlation, distance_correlation_squared_distances

__all__ = ["nopeek"]

_VARIANTS = {"standard": distance_correlation, "squared": distance_correlation_squared_distances}


@vmappable("alpha")
@register_defense("nopeek")
def nopeek(alpha: float = 0.5, variant: str = "standard") -> Defense:
    """NoPeek: the client adds ``alpha * dCor(x, z)`` over each batch to its objective.

    ``dCor(X, Z) = dCov(X, Z) / sqrt(dVar(X) dVar(Z))`` on the batch's double-centred
    pairwise distance matrices (examples flattened), computed in one vectorised
    ``O(B^2 d)`` program by ``split_workbench.metrics``; its gradient wrt ``z`` is added to the
    cut gradient before the client's backward pass. Nothing extra crosses the wire.

    Guarantee: empirical, no formal guarantee (it lowers a statistical dependence measure
    on training batches; it bounds no adversary).
    Edge cases: ``alpha = 0`` installs no loss term (identity); a constant batch has
    dCor defined as 0 with a finite gradient; NaN in ``x`` or ``z`` gives a NaN loss (and
    NaN client gradients), which training metrics show.

    Args:
      alpha: the weight, >= 0.
      variant: ``"standard"`` (Szekely dCor, Euclidean distances) or ``"squared"``
        (squared distances, what Titcombe et al.'s code computes: sqrt of the RV coefficient).

    Returns:
      a ``Defense`` with one ``LossTerm`` named ``"nopeek"``.

    References:
      Vepakomma et al. 2020, "NoPeek: Information leakage reduction to share activations in
      distributed deep learning"; Szekely, Rizzo & Bakirov 2007; Titcombe et al. 2021.
    """
    alpha = _checks.nonnegative("nopeek", "alpha", alpha)
    fn = _VARIANTS[_checks.choice("nopeek", "variant", variant, tuple(_VARIANTS))]
    name = f"nopeek(alpha={alpha!r}, variant={variant!r})"
    if not _checks.traced(alpha) and alpha == 0:
        return Defense(name=name, guarantee="none (alpha = 0: identity)")
    return Defense(name=name, loss_terms=(LossTerm(fn, alpha, "nopeek"),),
                   guarantee="empirical, no formal guarantee")
