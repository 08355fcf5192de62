"""FedAvg (McMahan et al. 2017): the whole model on every client, weighted averaging.

Each round the server sends the global model (N parameters) to every client; all clients
train it in parallel for ``local_epochs`` epochs on their own data (ONE vmapped program:
vmap over clients of a ``lax.scan`` over their steps, padded steps masked); each sends
its model back (N parameters) and the server averages them weighted by the samples each
processed. Per round: 2N parameters per client, 2KN in all. Optimizer states stay on the
clients (never averaged, never sent), as for the split topologies.

The model is the same ``SplitModel`` the split topologies cut, trained whole
(``sm.apply`` on ``{"client", "server"}`` parameters: no cut, no wire).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.protocol import cross_entropy
from split_workbench.split import SplitModel
from split_workbench.topology.accounting import SERVER, Ledger, NetworkModel, TopologyResult, whole_train_flops
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

__all__ = ["fedavg", "local_training"]


@partial(jax.jit, static_argnames=("apply", "opt"))
def local_training(apply, opt, params_K, opt_K, x_all, y_all, ids_KxSxB, valid_KxS, keys_K):
    """Every client's local epochs at once: ``ids``/``valid`` hold ``(K, E*S, B)`` batches.

    Returns ``(params (K,...), opt states (K,...), steps run per client (K,))``.
    """
    del keys_K  # plain SGD-style local training draws no randomness; kept for a uniform signature

    def client(p, o, ids_SxB, valid_S):
        def body(carry, inp):
            p, o, n = carry
            ids, v = inp
            g = jax.grad(lambda p: cross_entropy(apply(p, x_all[ids]), y_all[ids]))(p)
            u, o2 = opt.update(g, o, p)
            p2 = optax.apply_updates(p, u)
            keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(v, x, y), a, b)  # noqa: E731
            return (keep(p2, p), keep(o2, o), n + v.astype(jnp.int32)), None

        (p, o, n), _ = jax.lax.scan(body, (p, o, jnp.zeros((), jnp.int32)), (ids_SxB, valid_S))
        return p, o, n

    return jax.vmap(client)(params_K, opt_K, ids_KxSxB, valid_KxS)


def fedavg(sm: SplitModel, optimizer: optax.GradientTransformation, task: Task, *, epochs: int,
           key: jax.Array, network: NetworkModel = NetworkModel(), local_epochs: int = 1) -> TopologyResult:
    """``epochs`` rounds of FedAvg with ``local_epochs`` local epochs each.

    Round r, local epoch j draws its batches with ``plan_key(key, r * local_epochs + j)``, so
    with ``local_epochs=1`` every topology run from ``key`` sees the same batches.
    """
    clients = task.clients
    k_num, b = clients.num_clients, clients.batch_size
    glob = sm.params
    n_params = sm.param_counts["client"] + sm.param_counts["server"]
    opt_K = tree_broadcast(optimizer.init(glob), k_num)
    train_flops = whole_train_flops(sm.apply, glob, sm.input_shape)
    agg_flops = 2.0 * k_num * n_params
    ledger = Ledger(k_num)
    cflops, sflops, busy, sim, history = np.zeros(k_num), 0.0, np.zeros(k_num), 0.0, []
    everyone = np.arange(k_num)
    for r in range(epochs):
        plans = [epoch_plan(clients, key=plan_key(key, r * local_epochs + j)) for j in range(local_epochs)]
        ids = jnp.concatenate([p[0] for p in plans], axis=1)
        valid = jnp.concatenate([p[1] for p in plans], axis=1)
        down = tree_nbytes(glob)
        ledger.move(SERVER, everyone, "weights", down)
        params_K, opt_K, steps_K = local_training(sm.apply, optimizer, tree_broadcast(glob, k_num), opt_K,
                                                  task.x_train, task.y_train, ids, valid, step_keys(key, r, k_num))
        steps = np.asarray(steps_K, np.int64)
        up = tree_nbytes(jax.tree.map(lambda a: a[0], params_K))  # one client's model as sent
        ledger.move(everyone, SERVER, "weights", up)
        glob = tree_weighted_mean(params_K, jnp.asarray(steps * b, jnp.float32))
        cflops += train_flops * steps * b
        sflops += agg_flops
        busy += network.client(train_flops * steps * b)
        sim += float((network.down(down) + network.client(train_flops * steps * b) + network.up(up)).max()
                     + network.server(agg_flops))
        history.append({"epoch": r + 1, "test_accuracy": accuracy(sm.apply, glob, task.x_test, task.y_test)})
    return TopologyResult("FedAvg", k_num, epochs, {"client": n_params, "server": n_params}, ledger, cflops,
                          sflops, sim, busy, network, int(clients.samples.sum()) * local_epochs, history, glob,
                          notes=f"{local_epochs} local epoch(s) per round; N = {n_params}")
