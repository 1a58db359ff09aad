"""``scripts/evaluate.py`` under torchrun: one process per device, on one node or several, each testing its share.

torchrun starts the processes and sets ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_WORLD_SIZE`` (the nodes),
``RANK`` and ``LOCAL_RANK`` in each; Lightning's ``TorchElasticEnvironment`` reads the ranks from them, and the
``Trainer`` is given the matching ``devices`` and ``num_nodes`` with the DDP strategy (gloo on CPU, NCCL on GPUs).
Every sample of the test set is scored by exactly one rank, and everything evaluate.py writes is synchronized
across the ranks before rank 0 writes it: the accuracy and the dashboard's confusion matrix, per-class scores and
worst predictions, and the mean loss (a ``MeanMetric`` of the per-sample losses), by torchmetrics.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from project.engine import compat
from project.engine.errors import UserError
from project.engine.loaders import InMemoryLoader


def _several_under_torchrun() -> bool:
    return TorchElasticEnvironment.detect() and int(os.environ.get("WORLD_SIZE", 1)) > 1


def is_global_zero() -> bool:
    """Whether this process reports the result: a plain process, or global rank 0 of several under torchrun."""
    return not _several_under_torchrun() or int(os.environ["RANK"]) == 0


def trainer_options() -> dict[str, Any]:
    """The ``Trainer``'s ``devices`` (and, under torchrun with several processes, its strategy and nodes)."""
    if not _several_under_torchrun():
        return {"devices": 1}
    world, devices = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", world // devices))
    if devices * nodes != world:
        raise UserError(
            f"torchrun started {world} processes on {nodes} node(s) with {devices} here: "
            "give every node the same --nproc_per_node"
        )
    # Lightning's DistributedSampler would repeat test samples: distribute() splits the test set instead.
    return {"strategy": "ddp", "devices": devices, "num_nodes": nodes, "use_distributed_sampler": False}


def distribute(trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
    """With several processes: ``datamodule``'s test loader gives each rank its own samples, none twice."""
    if trainer.world_size == 1:
        return
    test_dataloader = datamodule.test_dataloader

    def sharded_test_dataloader() -> Any:
        return shard(test_dataloader(), trainer)

    datamodule.test_dataloader = sharded_test_dataloader  # the hook Lightning calls


def shard(loader: Any, trainer: L.Trainer) -> Any:
    """This rank's part of a test ``loader``: an in-memory loader shards itself, a ``DataLoader`` gets a sampler."""
    world = trainer.world_size
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        return loader  # the data module shards it itself
    if isinstance(loader, InMemoryLoader) and loader.world_size == world:
        size = len(loader.labels)  # it takes every world_size-th sample from its rank on, without padding
    elif isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        size = len(loader.dataset)
    else:
        raise UserError(
            f"evaluate.py cannot split a {type(loader).__name__} test loader between {world} processes: "
            "run it as one process"
        )
    if size < world:
        raise UserError(f"the test set has {size} sample(s), fewer than the {world} processes: start fewer")
    if isinstance(loader, DataLoader):
        loader = compat.without_repeats(loader, **trainer.distributed_sampler_kwargs)
    return loader
