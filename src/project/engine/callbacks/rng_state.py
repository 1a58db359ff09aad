"""Random-number-generator state in checkpoints, for bit-identical resumes."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


class RNGStateCheckpoint(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) generator states in every checkpoint; restores them.

    Lightning saves weights, optimizer, schedulers and loop counters, but not these: without them a resumed run
    draws different dropout masks and augmentations than an uninterrupted one. All values are tensors or plain
    Python values, so the checkpoint still loads with ``torch.load(weights_only=True)``. The data order needs
    nothing here: the in-memory loaders derive it from the seed and the epoch number, and Lightning saves their
    position within the epoch (the same on every rank: each rank runs the same number of steps).

    Under DDP each rank draws from its own streams: at setup, ranks 1.. reseed their generators from
    ``(seed, rank)`` (rank 0 keeps the stream a single process has), so that the ranks do not apply the same
    dropout masks and augmentations to their different samples. (Model initialization is unaffected: DDP copies
    rank 0's weights to every rank.) Every checkpoint therefore holds every rank's states: they are gathered to
    rank 0, which writes the file, under ``rng_states_per_rank`` (a list indexed by global rank; ``rng_states``
    stays rank 0's), and each rank restores its own. A checkpoint from another number of processes restores
    rank 0's states everywhere, with a warning: that run goes on, but not bit for bit.
    """

    key = "rng_states"
    per_rank_key = "rng_states_per_rank"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before a checkpoint is restored (Lightning restores callbacks after setup), so a resume overrides this.
        if stage == "fit" and trainer.world_size > 1 and trainer.global_rank > 0:
            seed_rank_streams(int(os.environ.get("PL_GLOBAL_SEED", 0)), trainer.global_rank)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = capture_rng_states(trainer.strategy.root_device)
        checkpoint[self.key] = states
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning builds the checkpoint on every rank and writes rank 0's: gather all ranks' states there.
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
            checkpoint[self.per_rank_key] = gathered

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        per_rank = checkpoint.get(self.per_rank_key)
        if per_rank is not None and len(per_rank) == trainer.world_size:
            restore_rng_states(per_rank[trainer.global_rank], trainer.strategy.root_device)
            return
        if per_rank is not None or (trainer.world_size > 1 and self.key in checkpoint):
            saved = len(per_rank) if per_rank is not None else 1
            rank_zero_warn(
                f"the checkpoint holds the random state of {saved} process(es), this run has {trainer.world_size}: "
                "every rank restores rank 0's, so the run continues, but not bit for bit as it would have"
            )
        if self.key in checkpoint:
            restore_rng_states(checkpoint[self.key], trainer.strategy.root_device)


def seed_rank_streams(seed: int, rank: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all CUDA devices too) from ``(seed, rank)``."""
    words = np.random.SeedSequence([seed, rank]).generate_state(2, dtype=np.uint32)
    random.seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))


def capture_rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """The generator states; with a CUDA ``device``, also that device's (the one a rank trains on)."""
    version, python_state, gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"].cpu())
    cuda = states.get("cuda")
    if isinstance(cuda, torch.Tensor) and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)
