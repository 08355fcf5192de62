"""Clients taking turns against one server part: vanilla split learning and SplitFed V2.

Vanilla (round-robin) split learning, after Gupta & Raskar 2018: in every epoch clients
``0..K-1`` take turns; a turn is one jitted ``lax.scan`` over that client's full batches
(the six-step ``SplitTrainer.step``), against the one server part. Client parts:

* ``handover="peer"``: one client part travels; after its turn client k sends it to
  client ``(k+1) mod K`` directly (eta*N parameters per hand-over, K per epoch when K > 1).
* ``handover="server"``: the same, relayed through the server (up to the server, down to
  the next client: each hand-over crosses two links, 2*eta*N bytes on the wire).
* ``handover="none"``: every client keeps and trains its own client part (no weights move).

SplitFed V2 (Thapa et al. 2020): each epoch the server serves clients one after another
(in an order drawn from the key), each client with its own client part; at the end of
the epoch the client parts are averaged FedAvg-style, weighted by samples processed,
each client uploading and downloading eta*N parameters.

Optimizer states never move: each client keeps its own for its client part.
A client with no full batch still takes its turn (it passes the weights on unchanged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from split_workbench.protocol import SplitState, SplitTrainer, StepMetrics
from split_workbench.topology.accounting import SERVER, Ledger, NetworkModel, TopologyResult
from split_workbench.topology.clients import (
    Task,
    accuracy,
    epoch_plan,
    plan_key,
    step_keys,
    tree_nbytes,
    tree_stack,
    tree_weighted_mean,
)

__all__ = ["split_learning", "splitfed_v2", "turn", "run_clients"]


def turn(trainer: SplitTrainer, state: SplitState, x_all, y_all, ids_SxB, valid_S, *, key
         ) -> tuple[SplitState, StepMetrics]:
    """One client's turn: ``trainer.step`` on every valid batch, as one jitted ``lax.scan``.

    Step ``s`` uses ``fold_in(key, s)``; invalid (padding) steps leave the state as it is,
    so ``state.step`` counts the steps that really ran.
    """
    return _turn_jit(trainer, state, x_all, y_all, ids_SxB, valid_S, key)


def _turn(trainer, state, x_all, y_all, ids_SxB, valid_S, key):
    zeros = StepMetrics(*(jnp.zeros((), jnp.float32) for _ in range(3)))

    def body(st, inp):
        s, ids, v = inp

        def run(st):
            st, m, _ = trainer.step(st, x_all[ids], y_all[ids], key=jax.random.fold_in(key, s))
            return st, m
        return jax.lax.cond(v, run, lambda st: (st, zeros), st)

    return jax.lax.scan(body, state, (jnp.arange(ids_SxB.shape[0]), ids_SxB, valid_S))


# The trainer is static (hashed by identity): jax.jit's own cache holds one program per trainer.
_turn_jit = jax.jit(_turn, static_argnums=0)


def run_clients(trainer: SplitTrainer, task: Task, *, epochs: int, key, network: NetworkModel, mode: str,
                name: str, state0: SplitState | None = None) -> tuple[TopologyResult, SplitState]:
    """Round-robin split learning (``mode`` "peer", "server" or "none") or SplitFed V2
    (``mode="sflv2"``); returns the accounting and client 0's final state (its client part
    and optimizer state, the server part, the wire state, the steps run). Each history
    entry also holds the epoch's ``steps``, ``train_loss``, ``train_accuracy`` and
    ``client_reg`` (means over the steps every client ran).

    Parties: the server party's state is one (one server), each client has its own client
    party state and its own stop flag (a client whose detector stopped training takes its
    turns without updates). ``state0`` seeds them (default ``trainer.init()``)."""
    sm, clients = trainer.model, task.clients
    k_num, b = clients.num_clients, clients.batch_size
    st0 = trainer.init() if state0 is None else state0
    with_parties = isinstance(st0.parties, dict)
    cparties = [st0.parties["client"] if with_parties else ()] * k_num
    sparty = st0.parties["server"] if with_parties else ()
    stops = [st0.stopped] * k_num
    per_client = mode in ("none", "sflv2")
    pcs = [st0.params["client"]] * k_num if per_client else None
    pc = st0.params["client"]
    ocs = [st0.opt_state["client"]] * k_num
    server = (st0.params["server"], st0.opt_state["server"], st0.wire_state, st0.step)
    traffic = trainer.traffic(b)
    flops = sm.flops()
    client_step_s = float(network.client(flops["client_train"] * b))
    server_step_s = float(network.server(flops["server_train"] * b))
    step_s = client_step_s + server_step_s + float(network.up(traffic.forward + traffic.labels)) + \
        float(network.down(traffic.backward))
    wbytes = tree_nbytes(st0.params["client"])
    ledger = Ledger(k_num)
    cflops, sflops, busy = np.zeros(k_num), 0.0, np.zeros(k_num)
    sim, history = 0.0, []
    for e in range(epochs):
        ids, valid = epoch_plan(clients, key=plan_key(key, e))
        keys = step_keys(key, e, k_num)
        order = range(k_num)
        if mode == "sflv2":
            order = np.asarray(jax.random.permutation(jax.random.fold_in(plan_key(key, e), 1), k_num))
        samples = np.zeros(k_num)
        sums = np.zeros(3)  # loss, accuracy, client_reg summed over the epoch's valid steps
        for k in map(int, order):
            params = {"client": pcs[k] if per_client else pc, "server": server[0]}
            parties = {"client": cparties[k], "server": sparty} if with_parties else ()
            st = SplitState(params, {"client": ocs[k], "server": server[1]}, server[2], server[3], parties, stops[k])
            before = int(st.step)
            st, m = turn(trainer, st, task.x_train, task.y_train, ids[k], valid[k], key=keys[k])
            steps = int(st.step) - before  # steps the jitted turn really executed
            sums += [float(m.loss.sum()), float(m.accuracy.sum()), float(m.client_reg.sum())]  # invalid steps are 0
            if per_client:
                pcs[k] = st.params["client"]
            else:
                pc = st.params["client"]
            ocs[k] = st.opt_state["client"]
            server = (st.params["server"], st.opt_state["server"], st.wire_state, st.step)
            if with_parties:
                cparties[k], sparty = st.parties["client"], st.parties["server"]
            stops[k] = st.stopped
            samples[k] = steps * b
            ledger.move(k, SERVER, "activations", traffic.forward * steps)
            ledger.move(k, SERVER, "labels", traffic.labels * steps)
            ledger.move(SERVER, k, "gradients", traffic.backward * steps)
            cflops[k] += flops["client_train"] * steps * b
            sflops += flops["server_train"] * steps * b
            busy[k] += client_step_s * steps
            sim += step_s * steps
            if mode in ("peer", "server") and k_num > 1:
                nxt = (k + 1) % k_num
                nb = tree_nbytes(pc)  # the client part as handed over
                if mode == "peer":
                    ledger.move(k, nxt, "weights", nb)
                    sim += network.latency_s + nb / min(network.up_bytes_per_s, network.down_bytes_per_s)
                else:
                    ledger.move(k, SERVER, "weights", nb)
                    ledger.move(SERVER, nxt, "weights", nb)
                    sim += float(network.up(nb) + network.down(nb))
        if mode == "sflv2":
            avg = tree_weighted_mean(tree_stack(pcs), jnp.asarray(samples, jnp.float32))
            ledger.move(np.arange(k_num), SERVER, "weights", wbytes)
            ledger.move(SERVER, np.arange(k_num), "weights", tree_nbytes(avg))
            pcs = [avg] * k_num
            sim += float(network.up(wbytes) + network.down(wbytes))
        n_steps = max(int(samples.sum()) // b, 1)
        history.append({"epoch": e + 1, "test_accuracy": _test_accuracy(sm, pcs if per_client else [pc],
                                                                         server[0], task),
                        "steps": int(samples.sum()) // b, "train_loss": sums[0] / n_steps,
                        "train_accuracy": sums[1] / n_steps, "client_reg": sums[2] / n_steps})
        if trainer.client.can_stop:  # which clients' detectors have stopped training so far
            history[-1]["stopped_clients"] = [k for k in range(k_num) if bool(stops[k])]
    params = {"client": pc if not per_client else pcs, "server": server[0]}
    parties = sm.param_counts
    result = TopologyResult(name, k_num, epochs, {"client": parties["client"], "server": parties["server"]},
                            ledger, cflops, sflops, sim, busy, network, int(clients.samples.sum()), history, params)
    client0 = SplitState({"client": pcs[0] if per_client else pc, "server": server[0]},
                         {"client": ocs[0], "server": server[1]}, server[2], server[3],
                         {"client": cparties[0], "server": sparty} if with_parties else (), stops[0])
    return result, client0


def _test_accuracy(sm, client_parts, server_params, task: Task) -> float:
    """Test accuracy; with one client part per client, the mean over the clients' models."""
    accs = [accuracy(sm.apply, {"client": c, "server": server_params}, task.x_test, task.y_test)
            for c in (client_parts[:1] if _all_same(client_parts) else client_parts)]
    return float(np.mean(accs))


def _all_same(parts) -> bool:
    return all(p is parts[0] for p in parts)


def split_learning(trainer: SplitTrainer, task: Task, *, epochs: int, key: jax.Array,
                   network: NetworkModel = NetworkModel(), handover: str = "peer") -> TopologyResult:
    """Round-robin split learning with K clients (see the module docstring for ``handover``)."""
    if handover not in ("peer", "server", "none"):
        raise ValueError(f"handover must be 'peer', 'server' or 'none', got {handover!r}")
    name = {"peer": "SL (peer hand-over)", "server": "SL (hand-over via server)", "none": "SL (own client parts)"}
    return run_clients(trainer, task, epochs=epochs, key=key, network=network, mode=handover,
                       name=name[handover])[0]


def splitfed_v2(trainer: SplitTrainer, task: Task, *, epochs: int, key: jax.Array,
                network: NetworkModel = NetworkModel()) -> TopologyResult:
    """SplitFed V2: the server serves clients in sequence; client parts averaged each epoch."""
    return run_clients(trainer, task, epochs=epochs, key=key, network=network, mode="sflv2", name="SplitFed V2")[0]


def same_optimizer_trainer(sm, optimizer: optax.GradientTransformation) -> SplitTrainer:
    """A split trainer whose client and server use ``optimizer`` (as FedAvg does)."""
    return SplitTrainer(sm, optimizer, optimizer)
