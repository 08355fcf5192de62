"""split_workbench.ops.conv_general_dilated: the same values and gradients as lax, and fast
gradients inside lax.scan (the reason it exists)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from split_workbench.ops import conv_general_dilated, conv_kwargs

DN = ("NHWC", "HWIO", "NHWC")
CASES = [  # (in_hw, k_hw, strides, padding, lhs_dilation, rhs_dilation)
    ((12, 12), (3, 3), (1, 1), "SAME", (1, 1), (1, 1)),
    ((12, 10), (5, 3), (1, 1), "VALID", (1, 1), (1, 1)),
    ((13, 13), (3, 3), (2, 2), "SAME", (1, 1), (1, 1)),
    ((12, 12), (1, 1), (2, 2), "VALID", (1, 1), (1, 1)),
    ((8, 8), (4, 4), (1, 1), ((2, 1), (2, 1)), (2, 2), (1, 1)),   # a stride-2 transposed conv
    ((9, 11), (3, 2), (2, 1), ((1, 0), (0, 2)), (1, 1), (2, 1)),
    ((6, 6), (5, 5), (1, 1), ((4, 4), (4, 4)), (1, 1), (1, 1)),    # "full" conv (VALID transpose)
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_values_and_gradients_match_lax(case):
    in_hw, k_hw, strides, padding, lhs_dil, rhs_dil = case
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, *in_hw, 4))
    w = jax.random.normal(kw, (*k_hw, 4, 5))

    def f(conv):
        return lambda x, w: conv(x, w, strides, padding, lhs_dil, rhs_dil, dimension_numbers=DN)

    y_ref, vjp_ref = jax.vjp(f(lax.conv_general_dilated), x, w)
    y, vjp = jax.vjp(f(conv_general_dilated), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, y.shape)
    for a, b in zip(vjp(g), vjp_ref(g)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_other_layouts_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(0), (2, 4, 9, 9))      # NCHW, lax's default
    w = jax.random.normal(jax.random.key(1), (6, 4, 3, 3))      # OIHW
    np.testing.assert_allclose(conv_general_dilated(x, w, (1, 1), "SAME"),
                               lax.conv_general_dilated(x, w, (1, 1), "SAME"), rtol=1e-6)
    xg = jax.random.normal(jax.random.key(2), (2, 9, 9, 4))
    wg = jax.random.normal(jax.random.key(3), (3, 3, 2, 4))
    np.testing.assert_allclose(
        conv_general_dilated(xg, wg, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2),
        lax.conv_general_dilated(xg, wg, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2), rtol=1e-5)


def test_nnx_conv_hook_matches_default_conv():
    a = nnx.Conv(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    b = nnx.Conv(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0), **conv_kwargs())
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 3))
    np.testing.assert_allclose(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_gradients_inside_scan_are_not_slow():
    """The kernel and input gradients inside lax.scan run at about the speed of the same
    step jitted alone (XLA:CPU's generic emitter for non-canonical convs is 10-40x slower)."""
    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) * 0.1

    def body(conv):
        def f(c, _):
            x, w = c
            gx, gw = jax.grad(lambda x, w: jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=DN) ** 2),
                              argnums=(0, 1))(x, w)
            return (x - 1e-6 * gx, w - 1e-6 * gw), None
        return f

    def scan_time(conv, steps=10):
        run = jax.jit(lambda c: lax.scan(body(conv), c, None, length=steps)[0])
        jax.block_until_ready(run((x, w)))
        t0 = time.perf_counter()
        jax.block_until_ready(run((x, w)))
        return time.perf_counter() - t0

    ours, theirs = scan_time(conv_general_dilated), scan_time(lax.conv_general_dilated)
    if jax.default_backend() == "cpu":
        assert ours < theirs / 2, (ours, theirs)


@pytest.mark.parametrize("kernels_batched", [True, False])
def test_vmapped_values_and_gradients_match_lax(kernels_batched):
    """Under vmap (a sweep's members), batched inputs fold into the conv batch and batched
    kernels run one canonical conv per member: same numbers as lax's grouped convolution."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (3, 2, 9, 9, 4))
    w = jax.random.normal(kw, (3, 3, 3, 4, 5) if kernels_batched else (3, 3, 4, 5))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.tanh(conv(x, w, (2, 2), "SAME", dimension_numbers=DN)) ** 2)

    def per_member(conv):
        return jax.vmap(jax.value_and_grad(loss(conv), argnums=(0, 1)), in_axes=(0, 0 if kernels_batched else None))

    (v, (gx, gw)), (v_ref, (gx_ref, gw_ref)) = per_member(conv_general_dilated)(x, w), \
        per_member(lax.conv_general_dilated)(x, w)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_string_padding_with_input_dilation_fails_like_lax():
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="String padding is not implemented"):
        conv_general_dilated(x, w, (1, 1), "SAME", lhs_dilation=(2, 2), dimension_numbers=DN)
