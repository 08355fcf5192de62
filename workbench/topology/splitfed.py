"""SplitFed V1 (Thapa et al. 2020): K clients train in parallel against one server part.

Every step, all clients run the six-step protocol at once as ONE vmapped program (vmap
over clients of ``SplitTrainer.compute_grads``, the server part broadcast): each client
updates its own client part with its own optimizer state; the server averages its
parameter gradients over the clients whose step is valid (equal weights: every valid
client contributes one batch of B samples, so this is the gradient of the mean loss over
the K*B samples of the step) and takes one optimizer step. At the end of the epoch the
client parts are averaged FedAvg-style, weighted by samples processed; each client
uploads and downloads eta*N parameters. An epoch is one jitted ``lax.scan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.protocol import SplitState, SplitTrainer
from split_workbench.topology.accounting import SERVER, Ledger, NetworkModel, TopologyResult
from split_workbench.topology.clients import (
    Task,
    accuracy,
    epoch_plan,
    plan_key,
    step_keys,
    tree_broadcast,
    tree_nbytes,
    tree_weighted_mean,
)

__all__ = ["splitfed_v1", "sflv1_epoch", "run_splitfed_v1"]


def _select(v_K, new, old):
    return jax.tree.map(lambda a, b: jnp.where(v_K.reshape(v_K.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def _epoch(trainer, pc_K, oc_K, ps, os_, ws_K, x_all, y_all, ids_KxSxB, valid_KxS, keys_K):
    def body(carry, inp):
        pc_K, oc_K, ps, os_, ws_K, steps_K = carry
        s, ids_KxB, v_K = inp
        x_K, y_K = x_all[ids_KxB], y_all[ids_KxB]
        k_K = jax.vmap(lambda k: jax.random.fold_in(k, s))(keys_K)

        def one(pc, ws, x, y, k):
            g, ws, m, _ = trainer.compute_grads({"client": pc, "server": ps}, ws, x, y, key=k)
            return g, ws, m

        g_K, ws_new, m_K = jax.vmap(one)(pc_K, ws_K, x_K, y_K, k_K)
        g_s = tree_weighted_mean(g_K["server"], v_K.astype(jnp.float32))
        us, os_new = trainer.server_opt.update(g_s, os_, ps)
        any_v = v_K.any()
        ps = jax.tree.map(lambda a, b: jnp.where(any_v, a, b), optax.apply_updates(ps, us), ps)
        os_ = jax.tree.map(lambda a, b: jnp.where(any_v, a, b), os_new, os_)
        uc_K, oc_new = jax.vmap(trainer.client_opt.update)(g_K["client"], oc_K, pc_K)
        pc_K = _select(v_K, optax.apply_updates(pc_K, uc_K), pc_K)
        oc_K = _select(v_K, oc_new, oc_K)
        ws_K = _select(v_K, ws_new, ws_K)
        vf = v_K.astype(jnp.float32)
        sums = jnp.stack([(m_K.loss * vf).sum(), (m_K.accuracy * vf).sum(), (m_K.client_reg * vf).sum()])
        return (pc_K, oc_K, ps, os_, ws_K, steps_K + v_K.astype(jnp.int32)), sums

    steps0 = jnp.zeros(valid_KxS.shape[0], jnp.int32)
    inputs = (jnp.arange(ids_KxSxB.shape[1]), ids_KxSxB.transpose(1, 0, 2), valid_KxS.T)
    carry, sums_S = jax.lax.scan(body, (pc_K, oc_K, ps, os_, ws_K, steps0), inputs)
    return (*carry, sums_S.sum(0))


# The trainer is static (hashed by identity): jax.jit's own cache holds one program per trainer.
_epoch_jit = jax.jit(_epoch, static_argnums=0)


def sflv1_epoch(trainer: SplitTrainer, pc_K, oc_K, ps, os_, ws_K, x_all, y_all, ids_KxSxB, valid_KxS, keys_K):
    """One SFLV1 epoch (before the client parts are averaged), jitted as one program.

    Returns ``(client params (K,...), client opt states, server params, server opt state,
    wire states, steps run per client (K,), (loss, accuracy, client_reg) summed over the
    valid client-steps)``.
    """
    return _epoch_jit(trainer, pc_K, oc_K, ps, os_, ws_K, x_all, y_all, ids_KxSxB, valid_KxS, keys_K)


def splitfed_v1(trainer: SplitTrainer, task: Task, *, epochs: int, key: jax.Array,
                network: NetworkModel = NetworkModel()) -> TopologyResult:
    """SplitFed V1 with ``task.clients`` in parallel (see the module docstring)."""
    return run_splitfed_v1(trainer, task, epochs=epochs, key=key, network=network)[0]


def run_splitfed_v1(trainer: SplitTrainer, task: Task, *, epochs: int, key: jax.Array,
                    network: NetworkModel = NetworkModel()) -> tuple[TopologyResult, SplitState]:
    """SplitFed V1, returning the accounting and client 0's final state (the averaged client
    part, its optimizer and wire states, the server part, the steps it ran); each history
    entry also holds ``steps``, ``train_loss``, ``train_accuracy`` and ``client_reg``."""
    sm, clients = trainer.model, task.clients
    k_num, b = clients.num_clients, clients.batch_size
    st0 = trainer.init()
    pc = st0.params["client"]
    pc_K = tree_broadcast(pc, k_num)
    oc_K = tree_broadcast(st0.opt_state["client"], k_num)
    ws_K = tree_broadcast(st0.wire_state, k_num)
    ps, os_ = st0.params["server"], st0.opt_state["server"]
    traffic, flops = trainer.traffic(b), sm.flops()
    ledger = Ledger(k_num)
    cflops, sflops, busy, sim, history = np.zeros(k_num), 0.0, np.zeros(k_num), 0.0, []
    agg_flops = 2.0 * k_num * sm.param_counts["client"]
    total_steps = 0
    for e in range(epochs):
        ids, valid = epoch_plan(clients, key=plan_key(key, e))
        pc_K, oc_K, ps, os_, ws_K, steps_K, sums = sflv1_epoch(trainer, pc_K, oc_K, ps, os_, ws_K, task.x_train,
                                                         task.y_train, ids, valid, step_keys(key, e, k_num))
        steps = np.asarray(steps_K, np.int64)  # steps each client really ran
        everyone = np.arange(k_num)
        ledger.move(everyone, SERVER, "activations", traffic.forward * steps)
        ledger.move(everyone, SERVER, "labels", traffic.labels * steps)
        ledger.move(SERVER, everyone, "gradients", traffic.backward * steps)
        cflops += flops["client_train"] * steps * b
        sflops += flops["server_train"] * steps.sum() * b
        # client parts: up to the fed server, averaged, down again
        ledger.move(everyone, SERVER, "weights", tree_nbytes(pc))
        pc = tree_weighted_mean(pc_K, jnp.asarray(steps * b, jnp.float32))
        ledger.move(SERVER, everyone, "weights", tree_nbytes(pc))
        pc_K = tree_broadcast(pc, k_num)
        sflops += agg_flops
        # simulated time: step s waits for the slowest valid client; the server serves all of them
        client_s = float(network.client(flops["client_train"] * b))
        up_s = float(network.up(traffic.forward + traffic.labels))
        down_s = float(network.down(traffic.backward))
        active = (np.arange(clients.max_steps)[:, None] < steps[None, :]).sum(1)  # (S,) clients per step
        active = active[active > 0]
        sim += float((client_s + up_s + down_s + network.server(flops["server_train"] * b * active)).sum())
        sim += float(network.up(tree_nbytes(pc)) + network.down(tree_nbytes(pc)) + network.server(agg_flops))
        busy += client_s * steps
        n_steps, sums = int(steps.sum()), np.asarray(sums)
        history.append({"epoch": e + 1, "test_accuracy": accuracy(sm.apply, {"client": pc, "server": ps},
                                                                  task.x_test, task.y_test),
                        "steps": n_steps, "train_loss": float(sums[0]) / max(n_steps, 1),
                        "train_accuracy": float(sums[1]) / max(n_steps, 1),
                        "client_reg": float(sums[2]) / max(n_steps, 1)})
        total_steps += n_steps
    parties = sm.param_counts
    result = TopologyResult("SplitFed V1", k_num, epochs, {"client": parties["client"], "server": parties["server"]},
                            ledger, cflops, sflops, sim, busy, network, int(clients.samples.sum()), history,
                            {"client": pc, "server": ps})
    client0 = SplitState({"client": pc, "server": ps}, {"client": jax.tree.map(lambda a: a[0], oc_K), "server": os_},
                         jax.tree.map(lambda a: a[0], ws_K), jnp.asarray(total_steps, jnp.int32))
    return result, client0
