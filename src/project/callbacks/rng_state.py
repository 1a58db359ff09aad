"""Random-number-generator state in checkpoints, for bit-identical resumes."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCheckpoint(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) generator states in every checkpoint; restores them.

    Lightning saves weights, optimizer, schedulers and loop counters, but not these: without them a resumed run
    draws different dropout masks and augmentations than an uninterrupted one. All values are tensors or plain
    Python values, so the checkpoint still loads with ``torch.load(weights_only=True)``. The data order needs
    nothing here: the in-memory loaders derive it from the seed and the epoch number, and Lightning saves their
    position within the epoch.

    Under DDP only rank 0's file is written, and every rank restores rank 0's states. That is exact: all ranks
    are seeded alike and draw the same numbers in the same order, so their states are equal at every step. For
    the same reason only the training device's CUDA state is saved, and restored to each rank's own device.
    """

    key = "rng_states"

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[self.key] = capture_rng_states(trainer.strategy.root_device)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.key in checkpoint:
            restore_rng_states(checkpoint[self.key], trainer.strategy.root_device)


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
