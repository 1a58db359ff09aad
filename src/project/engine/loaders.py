"""Loaders that resume in the middle of an epoch: the in-memory one (a shuffled index over tensors on the device)
and a ``DataLoader`` over a seeded sampler (files decoded in worker processes).

Lightning saves a loader's ``state_dict()`` in checkpoints and hands it back on resume; both loaders then skip the
batches of the interrupted epoch already trained on, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler


class EpochPosition:
    """What a loader needs to resume in the middle of an epoch: the number of batches it handed out in this one.

    Lightning saves :meth:`state_dict` in checkpoints and hands it back to :meth:`load_state_dict` on resume (it
    fetches no batch ahead from a loader that has a length, so when a checkpoint is written the batches handed out
    are exactly those trained on). A subclass says which epoch it is in (:meth:`_epoch`), calls
    :meth:`_begin_epoch` when an epoch's iteration starts, skips the batches it returns, and counts each batch it
    hands out in ``_yielded``.
    """

    _yielded = 0  # batches handed out in the current epoch
    _resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def _epoch(self) -> int:
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches_done": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def _begin_epoch(self) -> int:
        """The batches of this epoch already trained on, from a checkpoint of this epoch (else 0); counting starts
        there."""
        done = 0
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            self._resume_at = None
            if epoch == self._epoch():  # a checkpoint from an earlier epoch's end skips nothing
                done = batches
        self._yielded = done
        return done


def loader_seed() -> int:
    """The seed of the training order: Lightning's ``seed_everything`` sets ``PL_GLOBAL_SEED`` (and under DDP its
    ``DistributedSampler`` uses it too)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class InMemoryLoader(EpochPosition):
    """Batches of ``(images[idx], labels[idx])`` for consecutive slices ``idx`` of a (shuffled) index.

    The order of epoch ``e`` is ``randperm(n)`` seeded with ``seed + e``: identical across runs, resumes and
    ranks. With ``world_size > 1`` each rank takes every ``world_size``-th sample of that order; the training
    order is padded (like ``DistributedSampler``) so every rank runs the same number of steps, the evaluation
    order is not, so each sample is scored exactly once.

    The loader is resumable mid-epoch (:class:`EpochPosition`): the next iteration of the epoch a checkpoint was
    written in skips the batches already trained on.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    #: Memory for one block of training batches gathered in order (see ``__iter__``).
    BLOCK_BYTES = 32 * 2**20

    #: Lightning inspects these DataLoader attributes; there is no batch sampler to wrap.
    batch_sampler = None

    @property
    def sampler(self) -> InMemoryLoader:
        # Lightning calls ``loader.sampler.set_epoch(epoch)`` at the start of every epoch.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._yielded = 0

    def _epoch(self) -> int:
        return self.epoch

    def _num_samples(self) -> int:
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.shuffle:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        samples = self._num_samples()
        return samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in order."""
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.shuffle:
                total = math.ceil(n / self.world_size) * self.world_size
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: this body runs at the first next(), after Lightning's set_epoch() and load_state_dict().
        first = self._begin_epoch()
        if not self.shuffle and self.world_size == 1:
            # Evaluation in order: slices are views, nothing is copied.
            for start in range(first * self.batch_size, len(self) * self.batch_size, self.batch_size):
                self._yielded += 1
                yield (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )
            return
        order = self.indices().to(self.images.device)[first * self.batch_size : len(self) * self.batch_size]
        # The rows are gathered into training order a block of batches at a time (up to BLOCK_BYTES), and each batch
        # is a view of its block: two index_select calls per block instead of per step (small ops are slow right
        # after an optimizer step). The block bounds the memory this costs, whatever the image size.
        sample_bytes = self.images[:1].numel() * self.images.element_size()
        block = self.batch_size * max(1, self.BLOCK_BYTES // max(1, sample_bytes * self.batch_size))
        for block_start in range(0, len(order), block):
            # index_select, not images[index]: the same rows, much faster for a small index on CPU.
            index = order[block_start : block_start + block]
            images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            for start in range(0, len(index), self.batch_size):
                self._yielded += 1
                yield images[start : start + self.batch_size], labels[start : start + self.batch_size]


class EpochSeededSampler(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``: the same in every run and after a resume.

    Lightning calls ``set_epoch`` at the start of every epoch; under DDP it replaces any ``RandomSampler`` with its
    ``DistributedSampler``, which is seeded the same way.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0
        self.skip = 0  # leading indices of the next iteration to leave out (a resume in the middle of an epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableDataLoader(EpochPosition, DataLoader):
    """A ``DataLoader`` over a seeded sampler that resumes in the middle of an epoch (:class:`EpochPosition`).

    The epoch then goes on with the batches not trained on yet, which are those the interrupted run would have seen
    next, since the order depends only on ``(seed, epoch)``. An :class:`EpochSeededSampler` leaves the done ones out
    without reading them; with another sampler (Lightning's ``DistributedSampler`` under DDP) they are loaded and
    dropped.
    """

    def _epoch(self) -> int:
        return getattr(self.sampler, "epoch", 0)

    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first next(), after Lightning's set_epoch() and load_state_dict().
        done = self._begin_epoch()
        drop = 0
        if isinstance(self.sampler, EpochSeededSampler):
            self.sampler.skip = done * self.batch_size
        else:
            drop = done
        for index, batch in enumerate(super().__iter__()):
            if index < drop:
                continue
            self._yielded += 1
            yield batch
