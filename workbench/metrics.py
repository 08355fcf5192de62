"""Image-reconstruction, dependence and classification metrics in pure jax.numpy.

Every function here is jittable and vmappable, computes in float32, and is
checked against scikit-image / scikit-learn in ``tests/test_metrics.py``.
Images are float32 NHWC arrays in [0, 1]; per-image metrics return shape (N,).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = [
    "mse",
    "psnr",
    "ssim",
    "distance_correlation",
    "distance_correlation_squared_distances",
    "accuracy",
    "roc_auc",
]

# scikit-image's structural_similarity defaults (gaussian_weights=False).
_SSIM_WIN = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

# Squared distances at or below this are treated as exactly zero, which bounds
# d sqrt(d2) / d d2 by 1 / (2 sqrt(_SQRT_EPS)) and so keeps NoPeek gradients
# finite; the value error this introduces is at most sqrt(_SQRT_EPS) = 1e-6.
_SQRT_EPS = 1e-12


def _check_image_pair(x, y, name):
    # Shapes are static under jit, so these checks cost nothing at run time.
    if x.ndim != 4 or y.ndim != 4:
        raise ValueError(
            f"{name} expects NHWC batches of rank 4, got shapes {x.shape} and {y.shape}"
        )
    if x.shape != y.shape:
        raise ValueError(f"{name} needs equal shapes, got {x.shape} and {y.shape}")
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def mse(x, y):
    """Per-image mean squared error.

    For NHWC inputs of equal shape returns a float32 array of shape (N,), the
    mean of (x - y)**2 over H, W and C of each image.
    """
    x, y = _check_image_pair(x, y, "mse")
    return jnp.mean(jnp.square(x - y), axis=(1, 2, 3))


def psnr(x, y, data_range=1.0):
    """Per-image peak signal-to-noise ratio in dB.

    Returns shape (N,) with 10*log10(data_range**2 / mse); identical images give
    +inf, as scikit-image's peak_signal_noise_ratio does (without its warning).
    """
    err = mse(x, y)
    # Division by a zero error yields +inf and log10(+inf) = +inf, which is the
    # convention we want, so no special-casing is needed.
    return 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / err)


def _box_mean_valid(z, win):
    # Separable 'valid' box sum: two 1-D window sums cost 2*win adds per pixel
    # instead of win**2, and reduce_window keeps each sum exact to float32
    # rounding (a cumulative-sum trick loses precision on large images).
    s = lax.reduce_window(z, 0.0, lax.add, (1, win, 1, 1), (1, 1, 1, 1), "VALID")
    s = lax.reduce_window(s, 0.0, lax.add, (1, 1, win, 1), (1, 1, 1, 1), "VALID")
    return s / float(win * win)


def ssim(x, y, data_range=1.0):
    """Per-image structural similarity (SSIM), shape (N,).

    Matches skimage.metrics.structural_similarity(a, b, data_range=data_range,
    channel_axis=-1) with its defaults: 7x7 uniform window, K1=0.01, K2=0.03,
    sample covariance, mean over the SSIM map cropped by 3 pixels on each side,
    and for colour the mean of the per-channel SSIMs. Raises ValueError if an
    image is smaller than 7x7.
    """
    x, y = _check_image_pair(x, y, "ssim")
    _, h, w, _ = x.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise ValueError(
            f"ssim needs images of at least {_SSIM_WIN}x{_SSIM_WIN} pixels "
            f"(the window size), got NHWC shape {x.shape}"
        )
    c = x.shape[-1]
    # scikit-image filters the whole image (border mode 'reflect') and then
    # drops a (win-1)//2 strip on each side: exactly the pixels whose window
    # touches the border. A 'valid' filter therefore reproduces its numbers
    # while never computing the border values it throws away.
    # Local (co)variances are shift-invariant; computing them on data centred
    # per image and channel shrinks the float32 cancellation in E[x^2] - E[x]^2
    # (about 3x closer to a float64 reference on 512x512 photographs).
    mx = jnp.mean(x, axis=(1, 2), keepdims=True)
    my = jnp.mean(y, axis=(1, 2), keepdims=True)
    xc, yc = x - mx, y - my
    stats = _box_mean_valid(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1), _SSIM_WIN)
    ux, uy, uxx, uyy, uxy = (stats[..., i * c : (i + 1) * c] for i in range(5))
    np_ = _SSIM_WIN * _SSIM_WIN
    cov_norm = np_ / (np_ - 1.0)  # unbiased (sample) covariance, skimage's default
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    ux, uy = ux + mx, uy + my
    r = jnp.float32(data_range)
    c1 = (_SSIM_K1 * r) ** 2
    c2 = (_SSIM_K2 * r) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # Every channel's cropped map has the same size, so the mean over
    # (H', W', C) equals the mean of the per-channel means.
    return jnp.mean(s_map, axis=(1, 2, 3))


def _flatten_pair(x, y):
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"distance correlation needs two batches with the same number of examples, "
            f"got shapes {x.shape} and {y.shape}"
        )
    n = x.shape[0]
    return x.reshape(n, -1), y.reshape(n, -1)


def _squared_distances(z):
    # Centring first shrinks the norms in |a|^2 + |b|^2 - 2 a.b and with them
    # the cancellation error of the Gram-matrix form; distances are unchanged.
    # The Gram form avoids materialising an (n, n, d) difference tensor.
    z = z - jnp.mean(z, axis=0, keepdims=True)
    sq = jnp.sum(z * z, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    d2 = jnp.maximum(d2, 0.0)
    # The diagonal is zero by definition; rounding would otherwise leave noise.
    return jnp.where(jnp.eye(z.shape[0], dtype=bool), 0.0, d2)


def _safe_sqrt(v):
    # The double where keeps sqrt's infinite derivative at 0 out of the
    # backward pass (jnp.where alone would still give 0 * inf = nan).
    pos = v > _SQRT_EPS
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def _double_centre(d):
    return d - jnp.mean(d, axis=0, keepdims=True) - jnp.mean(d, axis=1, keepdims=True) + jnp.mean(d)


def _dcor_from_distances(a, b):
    a = _double_centre(a)
    b = _double_centre(b)
    dcov2 = jnp.mean(a * b)
    denom2 = jnp.mean(a * a) * jnp.mean(b * b)
    # A constant batch has dVar^2 = 0; the double where keeps sqrt'(0) = inf
    # out of the gradient, which still flows through the distances.
    ok = denom2 > jnp.finfo(jnp.float32).tiny
    denom = jnp.sqrt(jnp.where(ok, denom2, 1.0))
    # The V-statistic dCov^2 is non-negative in exact arithmetic; clip rounding
    # noise and use the safe sqrt so independent inputs keep a finite gradient.
    ratio = jnp.where(ok, jnp.maximum(dcov2, 0.0) / denom, 0.0)
    return _safe_sqrt(ratio)


def distance_correlation(x, y):
    """Szekely sample distance correlation between two batches, a float32 scalar.

    Each batch is flattened per example to (n, d). Uses double-centred Euclidean
    distance matrices A, B, dCov^2 = mean(A*B) and dCor = sqrt(dCov^2(x, y) /
    sqrt(dVar^2(x) dVar^2(y))), defined as 0 when the denominator is 0. Lies in
    [0, 1]; its gradient is finite even when rows coincide (distances below
    1e-6 are treated as 0), so it can serve as a training loss (NoPeek).
    """
    x, y = _flatten_pair(x, y)
    return _dcor_from_distances(_safe_sqrt(_squared_distances(x)), _safe_sqrt(_squared_distances(y)))


def distance_correlation_squared_distances(x, y):
    """Distance-correlation variant built from squared Euclidean distances.

    Not the standard statistic: this is what Titcombe et al. (2021)'s NoPeekNN
    code computes. With squared distances the double-centred matrices are
    -2 * (centred Gram matrices), so the result is the square root of the RV
    coefficient and only measures linear dependence (it can be 0 for dependent
    data). Same shapes, range [0, 1] and zero-denominator convention as
    distance_correlation.
    """
    x, y = _flatten_pair(x, y)
    return _dcor_from_distances(_squared_distances(x), _squared_distances(y))


def accuracy(logits, labels):
    """Fraction of examples whose argmax over the last axis equals the label.

    Returns a float32 scalar in [0, 1].
    """
    pred = jnp.argmax(logits, axis=-1)
    return jnp.mean((pred == jnp.asarray(labels)).astype(jnp.float32))


def roc_auc(scores, labels):
    """Area under the ROC curve for binary labels, a float32 scalar.

    Equals sklearn.metrics.roc_auc_score(labels, scores) including ties, via
    the Mann-Whitney U statistic with tie-averaged ranks in O(n log n).
    Examples with label 1 are positives, all others negatives; returns nan
    when either class is absent.
    """
    scores = jnp.asarray(scores, jnp.float32).reshape(-1)
    pos = (jnp.asarray(labels).reshape(-1) == 1)
    if scores.shape != pos.shape:
        raise ValueError(f"roc_auc needs one label per score, got {scores.shape} and {pos.shape}")
    srt = jnp.sort(scores)
    # 1-based average rank of each score among tied values: ties occupy ranks
    # left+1 .. right, whose mean is (left + right + 1) / 2.
    left = jnp.searchsorted(srt, scores, side="left", method="sort")
    right = jnp.searchsorted(srt, scores, side="right", method="sort")
    rank = (left + right + 1).astype(jnp.float32) * 0.5
    n_pos = jnp.sum(pos).astype(jnp.float32)
    n_neg = scores.shape[0] - n_pos
    # U / (n_pos n_neg) written as a mean over positives of O(1) terms: the
    # plain rank sum reaches n^2/2 and would lose float32 precision for large n.
    safe_pos = jnp.maximum(n_pos, 1.0)
    safe_neg = jnp.maximum(n_neg, 1.0)
    terms = jnp.where(pos, (rank - (n_pos + 1.0) * 0.5) / safe_neg, 0.0)
    auc = jnp.sum(terms) / safe_pos
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)
