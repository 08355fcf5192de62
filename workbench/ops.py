"""A 2-D convolution whose gradients stay fast inside ``lax.scan`` on XLA:CPU.

XLA:CPU rewrites convolutions into its fast (Eigen / YNNPACK) form only when their
dimension labels are canonical (``b01f_01io->b01f``: NHWC input, HWIO kernel, NHWC output).
Outside loops, layout passes make the two gradient convolutions of ``jax.grad`` canonical
with explicit transposes; inside a ``while`` body (every ``lax.scan`` over training steps,
attack steps or decoder steps) they keep JAX's transposed labels (``b01f_01oi->b01f`` for
the input gradient, ``f01b_i01o->01bf`` for the kernel gradient) and run a generic loop
emitter: measured 10x (input gradient) to 40x (kernel gradient) slower than the same step
jitted alone, on a 2-core CPU with jax 0.10.

``conv_general_dilated`` here is a drop-in for ``lax.conv_general_dilated`` (and the
``conv_general_dilated=`` hook of ``flax.nnx.Conv``) with a custom VJP that writes both
gradient convolutions in canonical form, transposing operands explicitly. The math is
JAX's own transpose rule; only the layouts differ, so values match ``jax.grad`` of
``lax.conv_general_dilated`` to float rounding (tests/test_ops.py). Anything other than
2-D NHWC/HWIO/NHWC convolutions with one feature group falls back to ``lax``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import custom_batching, lax

_DN = ("NHWC", "HWIO", "NHWC")


def _dilate(shape, dilation):
    return [0 if s == 0 else 1 + d * (s - 1) for s, d in zip(shape, dilation)]


def _pads_lhs(in_sp, k_sp, strides, out_sp, padding, lhs_dil, rhs_dil):
    lhs_d, rhs_d, out_d = _dilate(in_sp, lhs_dil), _dilate(k_sp, rhs_dil), _dilate(out_sp, strides)
    before = [r - lo - 1 for r, (lo, _) in zip(rhs_d, padding)]
    after = [a + r - 1 - o - b for a, r, o, b in zip(lhs_d, rhs_d, out_d, before)]
    return tuple(zip(before, after))


def _pads_rhs(in_sp, k_sp, strides, out_sp, padding, lhs_dil, rhs_dil):
    lhs_d, rhs_d, out_d = _dilate(in_sp, lhs_dil), _dilate(k_sp, rhs_dil), _dilate(out_sp, strides)
    lo = [p for p, _ in padding]
    hi = [(o - a) + (r - p - 1) for o, a, r, p in zip(out_d, lhs_d, rhs_d, lo)]
    return tuple(zip(lo, hi))


@functools.lru_cache(maxsize=None)
def _canonical_conv(strides, padding, lhs_dil, rhs_dil):
    """A canonical NHWC/HWIO conv with a batching rule that keeps it canonical: a batched
    input folds into the conv's batch; batched kernels (one model per vmapped sweep
    member) run as one canonical conv per member instead of the grouped convolution that
    ``lax``'s batching rule emits (7x slower inside a loop on XLA:CPU)."""

    @custom_batching.custom_vmap
    def conv(lhs, rhs):
        return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dil, rhs_dil, dimension_numbers=_DN)

    @conv.def_vmap
    def _rule(axis_size, in_batched, lhs, rhs):
        lhs_b, rhs_b = in_batched
        if not rhs_b:
            n = lhs.shape[1]
            out = conv(lhs.reshape(axis_size * n, *lhs.shape[2:]), rhs)
            return out.reshape(axis_size, n, *out.shape[1:]), True
        return jnp.stack([conv(lhs[i] if lhs_b else lhs, rhs[i]) for i in range(axis_size)]), True

    return conv


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, padding, lhs_dil, rhs_dil):
    return _canonical_conv(strides, padding, lhs_dil, rhs_dil)(x, w)


def _conv_fwd(x, w, strides, padding, lhs_dil, rhs_dil):
    return _conv(x, w, strides, padding, lhs_dil, rhs_dil), (x, w)


def _conv_bwd(strides, padding, lhs_dil, rhs_dil, res, g):
    x, w = res
    in_sp, k_sp, out_sp = x.shape[1:3], w.shape[:2], g.shape[1:3]
    # input gradient: g convolved with the flipped kernel, in/out channels swapped explicitly
    w_t = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
    dx = _canonical_conv(lhs_dil, _pads_lhs(in_sp, k_sp, strides, out_sp, padding, lhs_dil, rhs_dil),
                         strides, rhs_dil)(g, w_t)
    # kernel gradient: channels of x as the batch, examples as the contracted features
    x_t = jnp.transpose(x, (3, 1, 2, 0))          # (C_in, H, W, N)
    g_t = jnp.transpose(g, (1, 2, 0, 3))          # (Ho, Wo, N, C_out)
    dw = _canonical_conv(rhs_dil, _pads_rhs(in_sp, k_sp, strides, out_sp, padding, lhs_dil, rhs_dil),
                         lhs_dil, strides)(x_t, g_t)
    return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _canonical(lhs, rhs, dimension_numbers) -> bool:
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if dimension_numbers is None:
        return False  # lax's default is NCHW/OIHW
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
    got = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return got == want


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None, **kwargs):
    """``lax.conv_general_dilated`` with loop-friendly gradients on 2-D NHWC/HWIO convs.
    Extra keyword arguments of newer ``lax`` (e.g. ``out_sharding``) are passed through;
    any that is not None selects the ``lax`` path."""
    fast = (_canonical(lhs, rhs, dimension_numbers) and feature_group_count == 1 and batch_group_count == 1
            and precision is None and preferred_element_type is None and lhs.dtype == rhs.dtype
            and all(v is None for v in kwargs.values()))
    if not fast:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    lhs_dil = (1, 1) if lhs_dilation is None else tuple(int(d) for d in lhs_dilation)
    rhs_dil = (1, 1) if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
    if isinstance(padding, str):
        if lhs_dil != (1, 1):  # lax refuses this (transposed conv with string padding): same error
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers)
        padding = lax.padtype_to_pads(lhs.shape[1:3], _dilate(rhs.shape[:2], rhs_dil), strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, strides, padding, lhs_dil, rhs_dil)


def conv_kwargs() -> dict:
    """Keyword arguments that make ``flax.nnx.Conv`` use this convolution."""
    return {"conv_general_dilated": conv_general_dilated}


__all__ = ["conv_general_dilated", "conv_kwargs"]
