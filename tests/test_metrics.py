"""split_workbench.metrics against scikit-image / scikit-learn and direct references."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score

from split_workbench import metrics as M

ATOL = 1e-4


def _sk_ssim(a, b):
    return np.array(
        [structural_similarity(ai, bi, data_range=1.0, channel_axis=-1) for ai, bi in zip(a, b)]
    )


def _sk_psnr(a, b):
    out = []
    for ai, bi in zip(a, b):
        with warnings.catch_warnings():
            # skimage divides by a zero error for identical images and warns.
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(peak_signal_noise_ratio(ai, bi, data_range=1.0))
    return np.array(out)


def _noisy_pair(rng, shape, sigma=0.1):
    x = rng.random(shape, dtype=np.float32)
    y = np.clip(x + sigma * rng.standard_normal(shape).astype(np.float32), 0.0, 1.0)
    return x, y


def _check_against_skimage(x, y):
    np.testing.assert_allclose(np.asarray(M.ssim(x, y)), _sk_ssim(x, y), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(M.psnr(x, y)), _sk_psnr(x, y), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- SSIM / PSNR


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (3, 32, 32, 3)], ids=["grey", "colour"])
def test_ssim_psnr_random_match_skimage(shape):
    rng = np.random.default_rng(0)
    x, y = _noisy_pair(rng, shape)
    # An unrelated pair as well, where SSIM is near 0 and can go negative.
    x2 = rng.random(shape, dtype=np.float32)
    _check_against_skimage(np.concatenate([x, x]), np.concatenate([y, x2]))


def _as_unit_float(img):
    img = img.astype(np.float32) / 255.0
    return img[None, ..., None] if img.ndim == 2 else img[None]


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_ssim_psnr_real_images_match_skimage(name):
    x = _as_unit_float(getattr(skdata, name)())
    rng = np.random.default_rng(1)
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), 0.0, 1.0)
    _check_against_skimage(x, y)


def test_identical_images_give_ssim_one_psnr_inf():
    rng = np.random.default_rng(2)
    x = rng.random((2, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(M.ssim(x, x)), 1.0, atol=ATOL)
    assert np.all(np.isposinf(np.asarray(M.psnr(x, x))))
    assert np.all(np.isposinf(_sk_psnr(x, x)))
    np.testing.assert_allclose(_sk_ssim(x, x), 1.0, atol=ATOL)


@pytest.mark.parametrize("a,b", [(0.3, 0.3), (0.2, 0.7), (0.0, 1.0)])
def test_constant_images_match_skimage(a, b):
    x = np.full((1, 12, 12, 1), a, np.float32)
    y = np.full((1, 12, 12, 1), b, np.float32)
    _check_against_skimage(x, y)
    if a == b:
        np.testing.assert_allclose(np.asarray(M.ssim(x, y)), 1.0, atol=ATOL)
        assert np.isposinf(np.asarray(M.psnr(x, y))[0])


def test_minimum_size_7x7_matches_skimage():
    rng = np.random.default_rng(3)
    x, y = _noisy_pair(rng, (3, 7, 7, 2), sigma=0.2)
    _check_against_skimage(x, y)


@pytest.mark.parametrize("shape", [(1, 6, 6, 1), (2, 7, 6, 3), (1, 6, 9, 1)])
def test_ssim_too_small_raises(shape):
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=r"7x7.*" + r"\(" + ", ".join(map(str, shape))):
        M.ssim(x, x)
    # scikit-image rejects the same inputs.
    with pytest.raises(ValueError):
        structural_similarity(x[0], x[0], data_range=1.0, channel_axis=-1)


def test_valid_box_filter_is_independent_of_border_mode():
    # skimage filters with mode='reflect' then crops 3 pixels; the cropped
    # region never sees the border, so any mode (and a 'valid' filter) agrees.
    rng = np.random.default_rng(4)
    img = rng.random((20, 17)).astype(np.float64)
    pad = 3
    crops = [
        ndi.uniform_filter(img, size=7, mode=mode)[pad:-pad, pad:-pad]
        for mode in ("reflect", "constant", "nearest", "mirror", "wrap")
    ]
    for c in crops[1:]:
        np.testing.assert_allclose(c, crops[0], rtol=0, atol=1e-12)
    valid = np.asarray(M._box_mean_valid(jnp.asarray(img, jnp.float32)[None, ..., None], 7))[0, ..., 0]
    np.testing.assert_allclose(valid, crops[0], rtol=0, atol=1e-6)


def test_mse_matches_numpy():
    rng = np.random.default_rng(5)
    x, y = _noisy_pair(rng, (5, 9, 11, 3))
    ref = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
    out = M.mse(x, y)
    assert out.shape == (5,) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-8)


def test_jit_equals_eager():
    rng = np.random.default_rng(6)
    x, y = _noisy_pair(rng, (3, 28, 28, 1))
    for f in (M.ssim, M.psnr, M.mse):
        np.testing.assert_allclose(
            np.asarray(jax.jit(f)(x, y)), np.asarray(f(x, y)), rtol=1e-6, atol=1e-6
        )


def test_vmap_equals_per_image_calls():
    rng = np.random.default_rng(7)
    x, y = _noisy_pair(rng, (2, 3, 10, 12, 3))  # (groups, N, H, W, C)
    for f in (M.ssim, M.psnr, M.mse):
        batched = np.asarray(jax.vmap(f)(x, y))
        assert batched.shape == (2, 3)
        single = np.array([[f(x[g, i : i + 1], y[g, i : i + 1])[0] for i in range(3)] for g in range(2)])
        np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-6)


def test_image_metrics_reject_bad_shapes():
    a = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        M.mse(a, a[:1])
    with pytest.raises(ValueError, match="rank 4"):
        M.psnr(a[0], a[0])


# ------------------------------------------------------ distance correlation


def _dcor_reference(x, y, squared=False):
    """Direct O(n^2) Szekely double centring in float64 with explicit loops."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n = len(x)

    def centred(z):
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                s = float(np.sum((z[i] - z[j]) ** 2))
                d[i, j] = s if squared else np.sqrt(s)
        row = [sum(d[i, k] for k in range(n)) / n for i in range(n)]
        col = [sum(d[k, j] for k in range(n)) / n for j in range(n)]
        grand = sum(row) / n
        return np.array([[d[i, j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)])

    a, b = centred(x), centred(y)
    dcov2 = (a * b).sum() / n**2
    dvx, dvy = (a * a).sum() / n**2, (b * b).sum() / n**2
    denom = np.sqrt(dvx * dvy)
    return 0.0 if denom == 0 else np.sqrt(max(dcov2, 0.0) / denom)


@pytest.mark.parametrize("squared", [False, True], ids=["euclidean", "squared"])
def test_distance_correlation_matches_reference(squared):
    f = M.distance_correlation_squared_distances if squared else M.distance_correlation
    rng = np.random.default_rng(8)
    x = rng.standard_normal((24, 3, 4, 2)).astype(np.float32)  # flattened to d=24
    y = (np.tanh(x.reshape(24, -1)[:, :5]) ** 2 + 0.3 * rng.standard_normal((24, 5))).astype(np.float32)
    z = rng.standard_normal((24, 7)).astype(np.float32)
    for a, b in ((x, y), (x, z), (y, z)):
        np.testing.assert_allclose(float(f(a, b)), _dcor_reference(a, b, squared), atol=ATOL, rtol=0)


def test_distance_correlation_properties():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    for f in (M.distance_correlation, M.distance_correlation_squared_distances):
        np.testing.assert_allclose(float(f(x, x)), 1.0, atol=ATOL)
        # Affine maps with a scalar gain preserve distances up to |a|.
        np.testing.assert_allclose(float(f(x, -2.5 * x + 3.0)), 1.0, atol=ATOL)
        np.testing.assert_allclose(float(jax.jit(f)(x, x)), 1.0, atol=ATOL)
        # A constant batch has zero distance variance; defined as 0.
        assert float(f(x, np.ones_like(x))) == 0.0
    big_x = rng.standard_normal((1000, 3)).astype(np.float32)
    big_y = rng.standard_normal((1000, 3)).astype(np.float32)
    assert float(M.distance_correlation(big_x, big_y)) < 0.1
    # Dependence without correlation: standard dCor sees it, the squared
    # variant (the RV coefficient) does not.
    u = rng.uniform(-1, 1, (1000, 1)).astype(np.float32)
    assert float(M.distance_correlation(u, u**2)) > 0.3
    assert float(M.distance_correlation_squared_distances(u, u**2)) < 0.15


def test_distance_correlation_gradient_is_finite():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.standard_normal((8, 3)).astype(np.float32)
    y_dup = y.copy()
    y_dup[3] = y_dup[1]  # two identical rows: zero off-diagonal distance
    x_dup = x.copy()
    x_dup[3] = x_dup[1]
    for f in (M.distance_correlation, M.distance_correlation_squared_distances):
        g = jax.grad(f, argnums=1)
        for a, b in ((x, y), (x, y_dup), (x_dup, y_dup), (x, x), (x, np.ones_like(y))):
            grad = np.asarray(g(a, b))
            assert np.all(np.isfinite(grad)), (f.__name__, grad)
    # And the gradient is informative, not silently zero.
    assert np.abs(np.asarray(jax.grad(M.distance_correlation, argnums=1)(x, y_dup))).sum() > 0


# ------------------------------------------------------ accuracy and ROC-AUC


def test_accuracy():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [0.0, 5.0]], np.float32)
    labels = np.array([1, 0, 1, 1])
    assert float(M.accuracy(logits, labels)) == pytest.approx(0.75)
    assert float(jax.jit(M.accuracy)(logits, labels)) == pytest.approx(0.75)


def _auc_cases():
    rng = np.random.default_rng(11)
    n = 500
    lab = rng.integers(0, 2, n)
    yield "random", rng.standard_normal(n) + 0.7 * lab, lab
    lab = rng.integers(0, 2, n)
    yield "ties", rng.integers(0, 5, n).astype(np.float32) + (lab & rng.integers(0, 2, n)), lab
    lab = (rng.random(n) < 0.03).astype(np.int32)
    lab[0] = 1
    yield "imbalanced", rng.standard_normal(n) + 1.0 * lab, lab
    yield "all_tied", np.zeros(40), np.arange(40) % 2
    yield "perfect", np.arange(10.0), (np.arange(10) >= 4).astype(int)


@pytest.mark.parametrize("case", list(_auc_cases()), ids=lambda c: c[0])
def test_roc_auc_matches_sklearn(case):
    _, scores, labels = case
    scores = scores.astype(np.float32)
    ref = roc_auc_score(labels, scores)
    assert float(M.roc_auc(scores, labels)) == pytest.approx(ref, abs=ATOL)
    assert float(jax.jit(M.roc_auc)(scores, labels)) == pytest.approx(ref, abs=ATOL)


def test_roc_auc_single_class_is_nan():
    scores = np.linspace(0, 1, 10, dtype=np.float32)
    assert np.isnan(float(M.roc_auc(scores, np.ones(10, int))))
    assert np.isnan(float(M.roc_auc(scores, np.zeros(10, int))))
