"""Many clients: round-robin split learning, SplitFed V1/V2, U-shaped and vertical split
learning, and a FedAvg baseline, each with measured bytes, FLOPs and simulated wall time;
every split topology reachable from a spec string (``TOPOLOGIES``) behind one interface
(``Topology`` -> ``TopologyTrainer``), each with a wire."""

from split_workbench.topology.accounting import (
                                        KINDS,
                                        Ledger,
                                        NetworkModel,
                                        TopologyResult,
                                        cost_flops,
                                        whole_train_flops,
)
from split_workbench.topology.clients import (
                                        Clients,
                                        Task,
                                        accuracy,
                                        epoch_plan,
                                        make_clients,
                                        plan_key,
                                        step_keys,
                                        tree_nbytes,
                                        tree_weighted_mean,
)
from split_workbench.topology.fedavg import fedavg, local_training
from split_workbench.topology.interface import (
                                        PARTITIONS,
                                        TOPOLOGIES,
                                        SingleCut,
                                        Topology,
                                        TopologyParts,
                                        UShaped,
                                        Vanilla,
                                        Vertical,
                                        build_topology,
                                        partition_alpha,
)
from split_workbench.topology.runtime import (
                                        ManyClients,
                                        TopologyTrainer,
                                        UShapedClients,
                                        VerticalParties,
                                        label_histograms,
                                        send_outside_training,
)
from split_workbench.topology.sequential import run_clients, same_optimizer_trainer, split_learning, splitfed_v2, turn
from split_workbench.topology.splitfed import run_splitfed_v1, sflv1_epoch, splitfed_v1
from split_workbench.topology.ushaped import UShapedModel, UShapedTrainer, run_u_shaped, u_shaped, u_split
from split_workbench.topology.vertical import (
                                        VerticalModel,
                                        VerticalTrainer,
                                        make_vertical,
                                        run_vertical,
                                        strips,
                                        vertical,
                                        vertical_split,
)

__all__ = [
    "KINDS", "Clients", "Ledger", "NetworkModel", "Task", "TopologyResult", "accuracy", "cost_flops",
    "epoch_plan", "fedavg", "local_training", "make_clients", "plan_key", "same_optimizer_trainer",
    "sflv1_epoch", "split_learning", "splitfed_v1", "splitfed_v2", "step_keys", "tree_nbytes",
    "tree_weighted_mean", "turn", "whole_train_flops", "UShapedModel", "UShapedTrainer", "u_shaped", "u_split",
    "VerticalModel", "VerticalTrainer", "make_vertical", "strips", "vertical",
    "PARTITIONS", "TOPOLOGIES", "SingleCut", "Topology", "TopologyParts", "UShaped", "Vanilla", "Vertical",
    "build_topology", "partition_alpha", "ManyClients", "TopologyTrainer", "UShapedClients", "VerticalParties",
    "label_histograms", "send_outside_training", "run_clients", "run_splitfed_v1", "run_u_shaped", "run_vertical",
    "vertical_split",
]
