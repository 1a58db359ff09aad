"""Loader workers (engine/workers.py): started from the forkserver, never waited on without end."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from project.engine import compat
from project.engine.errors import DataError
from project.engine.workers import BoundedWait, worker_options


class ParentPids(Dataset):
    """Each sample is the pid of the process that started the worker reading it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return os.getppid()


class StuckAt(Dataset):
    """Sample ``stuck`` takes far longer than any timeout of the test; the others come at once."""

    def __init__(self, stuck: int) -> None:
        self.stuck = stuck

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        if index == self.stuck:
            time.sleep(120)
        return index


class Watched(BoundedWait, DataLoader):
    what = "the test loader"


def test_workers_are_not_forked_from_the_training_process() -> None:
    # Forked from this (many-threaded) process, a worker's parent would be this process.
    loader = DataLoader(ParentPids(), batch_size=2, **worker_options(ParentPids(), 2, 60))
    parents = {int(pid) for batch in loader for pid in batch}
    assert os.getpid() not in parents and len(parents) == 1  # one forkserver started them all


def test_a_worker_that_sends_no_batch_is_one_line_naming_it() -> None:
    # Batch 3 (samples 6, 7) goes to worker 1 of 2, which sticks; batches 0-2 arrive.
    dataset = StuckAt(stuck=6)
    loader = Watched(dataset, batch_size=2, **worker_options(dataset, 2, 3))
    seen = []
    with pytest.raises(DataError) as caught:
        for batch in loader:
            seen.append(batch.tolist())
    assert seen == [[0, 1], [2, 3], [4, 5]]
    assert str(caught.value).startswith("the test loader's worker 1 sent no batch in 3 s")
    assert "\n" not in str(caught.value)


def test_torch_still_says_a_loader_timed_out_as_compat_reads_it() -> None:
    # The message and the iterator's bookkeeping compat relies on (torch 2.14), from a real timeout.
    dataset = StuckAt(stuck=0)
    loader = DataLoader(dataset, batch_size=2, **worker_options(dataset, 1, 1))
    iterator = iter(loader)
    with pytest.raises(RuntimeError) as caught:
        next(iterator)
    assert compat.loader_timed_out(caught.value)
    assert compat.awaited_worker(iterator) == 0
    assert not compat.loader_timed_out(RuntimeError("something else"))
    del iterator


def test_no_workers_no_options_and_a_negative_timeout_is_refused() -> None:
    assert worker_options(ParentPids(), 0, 60) == {"num_workers": 0}
    with pytest.raises(ValueError, match="loader_timeout must not be negative"):
        worker_options(ParentPids(), 2, -1)
    assert torch.utils.data.get_worker_info() is None


#: Held by a thread of the main process while the workers start (as gloo's threads, queue feeders and OpenMP's
#: pool hold theirs); a forked child would get it locked, with no thread left to release it.
BUSY = threading.Lock()


class NeedsTheLock(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        with BUSY:
            return index


def test_a_lock_another_thread_holds_at_start_does_not_reach_the_workers() -> None:
    # The DDP job's hang in miniature, made certain: forked, the workers would wait for BUSY for good (here: until
    # the loader's timeout). Started from the forkserver, they import this module afresh, with BUSY free.
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with BUSY:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        loader = Watched(NeedsTheLock(), batch_size=2, **worker_options(NeedsTheLock(), 2, 20))
        assert [batch.tolist() for batch in loader] == [[0, 1], [2, 3]]
    finally:
        release.set()
        holder.join()
