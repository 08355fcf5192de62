"""FSHA, the feature-space hijacking attack (Pasquini, Ateniese, Bernaschi, CCS 2021), as a
server party, and the attacks that read what it learnt.

Threat model: a malicious server that controls training. It never sees the client's
parameters or private data; it holds a public set from the same domain (the attacker's
auxiliary data). On its public set it trains a *pilot* network ``tilde_f`` and its
inverse, a *decoder* (or, for property inference, a classifier on the pilot space), and
a WGAN-GP critic ``D`` that tells pilot outputs from the client's smash. Instead of the
task gradient it sends the client the gradient of ``mean D(smash)``, which pulls the
client's smash into the pilot's feature space; once there, the decoder inverts it.

One server step (``FSHA.respond``, one jitted program inside the training scan):

- public batch ``x_pub`` (drawn with the step's key); ``z_pub = tilde_f(x_pub)``;
- pilot + decoder: MSE(decoder(z_pub), x_pub) (property inference: cross-entropy of the
  classifier on ``z_pub`` against the public labels), Adam ``lr_pilot``;
- critic: ``mean D(z_pub) - mean D(smash) + gp_weight * GP``, Adam ``lr_disc``;
- cut gradient sent: ``scale * d mean D(smash) / d smash`` (the client's WGAN generator
  loss), plus ``task_weight`` times the honest task gradient; every ``honest_every``-th
  step the honest task gradient alone. ``scale``, ``task_weight`` and ``honest_every`` are
  the adaptive attacker's knobs: the paper's ``alpha2`` against NoPeek is ``scale``;
  an attacker hiding from a detector mixes in, or interleaves, honest gradients.
- its own task half trains honestly on the received smash (its reported loss and
  accuracy look like a normal run's).

Architectures (official code, ``architectures.py``), derived from the input and smash
shapes: the pilot is *linear* (no activations): one stride-2 conv per halving of the
spatial size (widths 64, 128, 256, ...), then a stride-1 conv to the smash's channels.
The decoder is linear too: one stride-2 transposed conv per doubling (widths 256, 128,
...; on three doublings the last one outputs the image channels), a final conv when fewer,
and a tanh, mapped onto the data range [0, 1]. The critic: conv (``d_width``, stride 1),
``d_blocks`` ResBlocks, conv stride 2, dense 1. A flat smash gets dense equivalents.

Quirks of the official code, and what this port does:

- the critic's per-level branches overwrite each other, so every level gets the same stack
  (conv stride 1, six ResBlocks, conv stride 2): *followed* (it produced the published
  numbers);
- the gradient-penalty norm sums over axes 1-2 (height, width), leaving one norm per
  channel: *not followed by default* (``gp="standard"`` takes the norm over all of a
  sample's values, as WGAN-GP defines it); ``gp="official"`` reproduces the quirk;
- ``if ['alpha2' in ...]`` is always true, so the attacker's loss scaling always applies:
  here ``scale`` always applies (its default 1 is the unscaled attack).

Other departures: pixels stay in [0, 1] (the paper maps them to [-1, 1]); mean squared
errors on the paper's scale are 4x ours, and ``mse_paper_scale`` reports them so. The
public batch is drawn with replacement from the bound public set (the official code
iterates over a shuffled ``tf.data`` pipeline).

Attacks: ``fsha`` decodes the observed smash with the server's trained decoder;
``fsha_property`` classifies it with the trained classifier (property inference). Both need
the observation field ``server_party`` (the trained server party), granted when the run's
server is FSHA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from split_workbench.attacks.base import AbstractAttack, AttackResult, Observation
from split_workbench.attacks.common import ModuleApply, timed
from split_workbench.attacks.registry import register_attack
from split_workbench.ops import conv_kwargs
from split_workbench.parties import SERVERS, ServerReply, task_reply

__all__ = ["FSHA", "FSHAAttack", "FSHAProperty", "fsha_networks", "mse_paper_scale"]

HEADS = ("decoder", "classifier")
GPS = ("standard", "official")


def mse_paper_scale(mse_01: float) -> float:
    """An MSE on pixels in [0, 1] expressed on the paper's [-1, 1] scale."""
    return 4.0 * float(mse_01)


def _halvings(big: int, small: int) -> int:
    k = 0
    while big > small:
        big = -(-big // 2)
        k += 1
    return k


class Pilot(nnx.Module):
    """The attacker's linear encoder from inputs to the smash shape."""

    def __init__(self, input_shape, smash_shape, *, width: int, rngs: nnx.Rngs):
        h, w, c = input_shape
        self.smash_shape = tuple(smash_shape)
        self.flat = len(smash_shape) == 1
        target = 4 if self.flat else smash_shape[0]
        k = max(_halvings(h, target), 1) if not self.flat else _halvings(h, 4)
        convs, cin = [], c
        for i in range(k):
            cout = width * 2 ** min(i, 2)
            convs.append(nnx.Conv(cin, cout, (3, 3), strides=2, padding="SAME", rngs=rngs, **conv_kwargs()))
            cin = cout
        self.convs = nnx.List(convs)
        self.size = -(-h // 2 ** k), -(-w // 2 ** k)
        if self.flat:
            self.out = nnx.Linear(self.size[0] * self.size[1] * cin, smash_shape[0], rngs=rngs)
        else:
            self.out = nnx.Conv(cin, smash_shape[-1], (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())

    def __call__(self, x):
        for conv in self.convs:
            x = conv(x)
        if self.flat:
            return self.out(x.reshape(x.shape[0], -1))
        if x.shape[1:3] != tuple(self.smash_shape[:2]):
            x = jax.image.resize(x, (x.shape[0], *self.smash_shape[:2], x.shape[-1]), "bilinear")
        return self.out(x)


def _depth_to_space(z):
    n, h, w, c4 = z.shape
    c = c4 // 4
    return z.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


class Decoder(nnx.Module):
    """The attacker's linear decoder from the smash shape to inputs (tanh onto [0, 1])."""

    def __init__(self, smash_shape, input_shape, *, width: int, rngs: nnx.Rngs):
        self.input_shape = tuple(input_shape)
        h, w, c = input_shape
        self.flat = len(smash_shape) == 1
        if self.flat:
            self.dense = nnx.Linear(smash_shape[0], 4 * 4 * 4 * width, rngs=rngs)
            h0, cin = 4, 4 * width
        else:
            h0, cin = smash_shape[0], smash_shape[-1]
        k = max(_halvings(h, h0), 0)
        ups = []
        for i in range(k):
            cout = c if (i == k - 1 and k >= 3) else max(4 * width // 2 ** i, c)
            # a stride-2 transposed conv as a sub-pixel conv: a 3x3 conv at the low resolution
            # to 4x the channels, then depth-to-space (the same linear family; several times
            # faster than a transposed conv's zero-inserted input on a CPU)
            ups.append(nnx.Conv(cin, 4 * cout, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs()))
            cin = cout
        self.ups = nnx.List(ups)
        self.head = None if (k >= 3) else nnx.Conv(cin, c, (3, 3), padding="SAME", rngs=rngs, **conv_kwargs())
        self.h0, self.cin0 = h0, (4 * width if self.flat else None)

    def __call__(self, z):
        n = z.shape[0]
        if self.flat:
            z = self.dense(z).reshape(n, self.h0, self.h0, self.cin0)
        for up in self.ups:
            z = _depth_to_space(up(z))
        if self.head is not None:
            z = self.head(z)
        h, w, c = self.input_shape
        if z.shape[1:3] != (h, w):
            z = jax.image.resize(z, (n, h, w, z.shape[-1]), "bilinear")
        return 0.5 * (jnp.tanh(z) + 1.0)


class Classifier(nnx.Module):
    """Property inference head: a dense layer on the flattened pilot space."""

    def __init__(self, smash_shape, classes: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(int(np.prod(smash_shape)), classes, rngs=rngs)

    def __call__(self, z):
        return self.dense(z.reshape(z.shape[0], -1))


class CriticBlock(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs, flat: bool):
        make = ((lambda: nnx.Linear(width, width, rngs=rngs)) if flat else
                (lambda: nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs)))
        self.a, self.b = make(), make()

    def __call__(self, x):
        return x + self.b(jax.nn.relu(self.a(jax.nn.relu(x))))


class Critic(nnx.Module):
    """WGAN critic on the smash space: conv (stride 1), ResBlocks, conv stride 2, dense 1."""

    def __init__(self, smash_shape, *, width: int, blocks: int, rngs: nnx.Rngs):
        self.flat = len(smash_shape) == 1
        if self.flat:
            self.inp = nnx.Linear(smash_shape[0], width, rngs=rngs)
            self.down = nnx.Linear(width, width, rngs=rngs)
            n_out = width
        else:
            # lax's own convolutions: the gradient penalty differentiates the critic twice,
            # which split_workbench.ops' custom-vjp convolution does not support
            self.inp = nnx.Conv(smash_shape[-1], width, (3, 3), padding="SAME", rngs=rngs)
            self.down = nnx.Conv(width, width, (3, 3), strides=2, padding="SAME", rngs=rngs)
            n_out = -(-smash_shape[0] // 2) * -(-smash_shape[1] // 2) * width
        self.blocks = nnx.List([CriticBlock(width, rngs, self.flat) for _ in range(blocks)])
        self.out = nnx.Linear(n_out, 1, rngs=rngs)

    def __call__(self, z):
        x = self.inp(z)
        for b in self.blocks:
            x = b(x)
        x = self.down(x)
        return self.out(x.reshape(x.shape[0], -1))[:, 0]


def _split(module) -> tuple[ModuleApply, Any]:
    graphdef, params = nnx.split(module, nnx.Param)
    return ModuleApply(graphdef), params


def fsha_networks(input_shape, smash_shape, classes: int, *, key: jax.Array, head: str = "decoder",
                  width: int = 64, d_width: int = 256, d_blocks: int = 6) -> tuple[dict, dict]:
    """``(applies, params)`` of the pilot, the head (decoder or classifier) and the critic."""
    kp, kh, kd = jax.random.split(key, 3)
    pilot = Pilot(tuple(input_shape), tuple(smash_shape), width=width, rngs=nnx.Rngs(params=kp))
    if head == "decoder":
        h = Decoder(tuple(smash_shape), tuple(input_shape), width=width, rngs=nnx.Rngs(params=kh))
    else:
        h = Classifier(tuple(smash_shape), classes, rngs=nnx.Rngs(params=kh))
    critic = Critic(tuple(smash_shape), width=d_width, blocks=d_blocks, rngs=nnx.Rngs(params=kd))
    applies, params = {}, {}
    for name, m in (("pilot", pilot), ("head", h), ("critic", critic)):
        applies[name], params[name] = _split(m)
    return applies, params


@dataclass(frozen=True)
class FSHA:
    """The hijacking server (see the module docstring). Build it from a spec as
    ``server="fsha"`` or ``"fsha(scale=50, honest_every=4)"``; the runner binds its public
    set (the spec's ``aux_size`` examples, disjoint from the private data)."""

    lr_pilot: float = 1e-5
    lr_disc: float = 1e-4
    gp_weight: float = 500.0
    gp: str = "standard"
    width: int = 64
    d_width: int = 256
    d_blocks: int = 6
    scale: float = 1.0
    task_weight: float = 0.0
    honest_every: int = 0
    head: str = "decoder"
    drop_class: int | None = None
    public: tuple | None = field(default=None, compare=False, repr=False)
    name: str = "fsha"
    active: bool = True
    data: str = "aux"

    def __post_init__(self):
        for f in ("lr_pilot", "lr_disc", "scale"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"fsha: {f} must be a positive number, got {v!r}")
        for f in ("gp_weight", "task_weight"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"fsha: {f} must be a number >= 0, got {v!r}")
        for f in ("width", "d_width"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"fsha: {f} must be an integer >= 1, got {v!r}")
        for f in ("d_blocks", "honest_every"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"fsha: {f} must be an integer >= 0, got {v!r}")
        if self.honest_every == 1:
            raise ValueError("fsha: honest_every=1 would make every step honest (no attack); use 0 (never) or >= 2")
        if self.gp not in GPS:
            raise ValueError(f"fsha: gp must be one of {GPS}, got {self.gp!r}")
        if self.head not in HEADS:
            raise ValueError(f"fsha: head must be one of {HEADS}, got {self.head!r}")
        if self.drop_class is not None and (isinstance(self.drop_class, bool) or not isinstance(self.drop_class, int)
                                            or self.drop_class < 0):
            raise ValueError(f"fsha: drop_class must be a class index >= 0 or None, got {self.drop_class!r}")

    # ------------------------------------------------------------------ data
    def bind(self, x, y) -> "FSHA":
        """A copy holding the public set ``(x, y)`` (without ``drop_class``: the paper's
        "mangled" public set)."""
        x, y = np.asarray(x, np.float32), np.asarray(y)
        if x.ndim != 4 or len(x) == 0:
            raise ValueError(f"fsha needs a public set of images (N, H, W, C) with N >= 1, got shape {x.shape}; "
                             "give the spec aux_size > 0")
        if self.drop_class is not None:
            if not (y == self.drop_class).any():
                raise ValueError(f"fsha: drop_class={self.drop_class} does not occur in the public set's labels")
            keep = y != self.drop_class
            x, y = x[keep], y[keep]
        return dataclasses.replace(self, public=(x, y.astype(np.int32)))

    def check_public(self, model) -> None:
        if self.public is None:
            raise ValueError("fsha holds no public set: bind(x_public, y_public) first (the runner does it)")
        shape = tuple(self.public[0].shape[1:])
        if shape != tuple(model.input_shape):
            raise ValueError(f"fsha's public set has inputs of shape {shape}, but the client takes "
                             f"{tuple(model.input_shape)}; give it public data of the client's input shape")

    def networks(self, model, *, key):
        classes = int(model.output_shape[-1])
        return fsha_networks(model.input_shape, model.smash_shape, classes, key=key, head=self.head,
                             width=self.width, d_width=self.d_width, d_blocks=self.d_blocks)

    def _opts(self):
        return optax.adam(self.lr_pilot), optax.adam(self.lr_disc)

    # ------------------------------------------------------------------ party
    def init(self, model, *, key):
        self.check_public(model)
        _, params = self.networks(model, key=key)
        opt_ae, opt_d = self._opts()
        ae = {"pilot": params["pilot"], "head": params["head"]}
        return {"ae": ae, "critic": params["critic"], "opt_ae": opt_ae.init(ae), "opt_d": opt_d.init(params["critic"]),
                "public_x": jnp.asarray(self.public[0]), "public_y": jnp.asarray(self.public[1]),
                "step": jnp.zeros((), jnp.int32), "ae_loss": jnp.zeros((), jnp.float32),
                "d_loss": jnp.zeros((), jnp.float32)}

    def _gp(self, critic_apply, critic, z_priv, z_pub, key):
        eps = jax.random.uniform(key, (z_priv.shape[0],) + (1,) * (z_priv.ndim - 1))
        z_hat = eps * z_priv + (1.0 - eps) * z_pub
        g = jax.grad(lambda zh: critic_apply(critic, zh).sum())(z_hat)
        axes = (tuple(range(1, g.ndim)) if self.gp == "standard" or g.ndim == 2 else (1, 2))
        norm = jnp.sqrt(jnp.sum(g ** 2, axis=axes) + 1e-12)
        return jnp.mean((norm - 1.0) ** 2)

    def respond(self, model, loss, params, state, smash, labels, *, key) -> ServerReply:
        applies, _ = self._applies(model)
        k_batch, k_gp = jax.random.split(key)
        b = smash.shape[0]
        idx = jax.random.randint(k_batch, (b,), 0, state["public_x"].shape[0])
        x_pub, y_pub = state["public_x"][idx], state["public_y"][idx]
        z_priv = jax.lax.stop_gradient(smash)

        # pilot + head on the public set
        def ae_loss(ae):
            z_pub = applies["pilot"](ae["pilot"], x_pub)
            out = applies["head"](ae["head"], z_pub)
            if self.head == "decoder":
                return jnp.mean((out - x_pub) ** 2), z_pub
            return optax.softmax_cross_entropy_with_integer_labels(out, y_pub).mean(), z_pub

        (l_ae, z_pub), g_ae = jax.value_and_grad(ae_loss, has_aux=True)(state["ae"])
        z_pub = jax.lax.stop_gradient(z_pub)

        # critic: pilot outputs are "real" (low), the client's smash "fake" (high)
        def d_loss(critic):
            d = applies["critic"](critic, z_pub).mean() - applies["critic"](critic, z_priv).mean()
            return d + self.gp_weight * self._gp(applies["critic"], critic, z_priv, z_pub, k_gp)

        l_d, g_d = jax.value_and_grad(d_loss)(state["critic"])

        # what the client is sent: the gradient of its generator loss mean D(smash)
        dz_adv = jax.grad(lambda z: applies["critic"](state["critic"], z).mean())(smash)
        honest = task_reply(model, loss, params, smash, labels)
        dz = self.scale * dz_adv + self.task_weight * honest.cut_grads
        if self.honest_every:
            dz = jnp.where(state["step"] % self.honest_every == self.honest_every - 1, honest.cut_grads, dz)

        opt_ae, opt_d = self._opts()
        u_ae, opt_ae_state = opt_ae.update(g_ae, state["opt_ae"], state["ae"])
        u_d, opt_d_state = opt_d.update(g_d, state["opt_d"], state["critic"])
        new = dict(state, ae=optax.apply_updates(state["ae"], u_ae), critic=optax.apply_updates(state["critic"], u_d),
                   opt_ae=opt_ae_state, opt_d=opt_d_state, step=state["step"] + 1, ae_loss=l_ae, d_loss=l_d)
        return ServerReply(honest.grads, dz, honest.loss, honest.logits, new)

    # ------------------------------------------------------------------ reading it out
    def _applies(self, model):
        # applies depend on shapes only; built once per (model shapes) and cached on the instance
        cache_key = (tuple(model.input_shape), tuple(model.smash_shape), tuple(model.output_shape))
        cache = self.__dict__.setdefault("_cache", {})
        if cache_key not in cache:
            cache[cache_key] = self.networks(model, key=jax.random.key(0))
        return cache[cache_key]

    def decode(self, model, state, smash: jax.Array) -> jax.Array:
        """The trained decoder's reconstruction of ``smash`` (head ``decoder``)."""
        if self.head != "decoder":
            raise ValueError("this FSHA server trained a classifier (head='classifier'), not a decoder")
        applies, _ = self._applies(model)
        return applies["head"](state["ae"]["head"], smash)

    def classify(self, model, state, smash: jax.Array) -> jax.Array:
        """The trained property classifier's logits on ``smash`` (head ``classifier``)."""
        if self.head != "classifier":
            raise ValueError("this FSHA server trained a decoder (head='decoder'), not a classifier")
        applies, _ = self._applies(model)
        return applies["head"](state["ae"]["head"], smash)

    def reconstruction_mse(self, model, state, client_params, client_apply: Callable, x: jax.Array) -> jax.Array:
        """The attack's own score during training: the MSE (pixels in [0, 1]) between
        ``x`` and the decoding of the client's smash on ``x`` (for evaluation only: the
        server never holds ``x``)."""
        return jnp.mean((self.decode(model, state, client_apply(client_params, x)) - x) ** 2)


@SERVERS.register("fsha")
def fsha(lr_pilot: float = 1e-5, lr_disc: float = 1e-4, gp_weight: float = 500.0, gp: str = "standard",
         width: int = 64, d_width: int = 256, d_blocks: int = 6, scale: float = 1.0, task_weight: float = 0.0,
         honest_every: int = 0, head: str = "decoder", drop_class: int | None = None) -> FSHA:
    return FSHA(lr_pilot=lr_pilot, lr_disc=lr_disc, gp_weight=gp_weight, gp=gp, width=width, d_width=d_width,
                d_blocks=d_blocks, scale=scale, task_weight=task_weight, honest_every=honest_every, head=head,
                drop_class=drop_class)


def _party(obs: Observation, attack: str):
    view = obs.server_party
    strategy = getattr(view, "strategy", None)
    if not isinstance(strategy, FSHA):
        raise ValueError(f"attack {attack!r} reads a trained FSHA server; this run's server is "
                         f"{getattr(strategy, 'name', strategy)!r} (use server='fsha' in the spec)")
    return view


class _ReadsServer(AbstractAttack):
    """An attack with no optimisation of its own: it applies a network the hijacking server
    trained during training (``head``: ``"decode"`` or ``"classify"``) to the observed smash.
    Its ``loss_curve`` is the server's latest loss on its public set."""

    needs = frozenset({"smash", "server_party"})
    requires_server = "fsha"
    head: str

    def run(self, obs: Observation, *, key: jax.Array) -> AttackResult:
        view = _party(obs, self.name)
        apply = getattr(view.strategy, self.head)
        out, seconds = timed(jax.jit(lambda z: apply(view.model, view.state, z)), obs.smash)
        if self.kind == "label":
            out = jnp.argmax(out, -1)
        return AttackResult(out, {"seconds": seconds, "server_steps": int(view.state["step"]), "steps": 0,
                                  "loss_curve": np.asarray([float(view.state["ae_loss"])])})


@register_attack("fsha")
class FSHAAttack(_ReadsServer):
    """Decodes the observed smash with the hijacking server's trained decoder."""

    name = "fsha"
    head = "decode"


@register_attack("fsha_property")
class FSHAProperty(_ReadsServer):
    """Property inference: the hijacking server's classifier on the pilot space, applied to
    the observed smash (the predicted class of each target)."""

    name = "fsha_property"
    kind = "label"
    head = "classify"
