"""Loader worker processes, started one way for every loader: from a forkserver, and never waited on forever.

Why a forkserver: a ``DataLoader`` forks its workers from the training process, which by then runs other threads
(gloo's under DDP, the queue feeders of the loaders already running, OpenMP's). A fork copies only the thread that
forks; a lock another thread held at that moment stays locked in the child for good. So the 2-process DDP job from
shards hung, under load, with a validation worker of rank 1 stuck in ``os.fork()`` and rank 0 waiting for it. The
forkserver is one process per run, started by a fresh interpreter before it is needed, that forks every worker from
its own single thread (Python 3.14 makes it the default on Linux for this reason). It costs one start per process
(about 4 s on 2 CPU cores, importing torch once); later loaders start their workers as fast as a fork.

A worker that sends no batch for ``timeout`` seconds (stuck, or a store that stopped answering) ends the run with one
line naming the loader and the worker, instead of a wait without end; a :class:`UserError` a worker raises (a damaged
shard, a file gone bad) reaches the user as its own message, without the worker's traceback.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

from project.engine import compat
from project.engine.errors import DataError, UserError

#: Seconds a loader waits for one batch from its workers before it gives up (``--data.loader_timeout``).
DEFAULT_TIMEOUT = 600.0
#: Imported once by the forkserver, so that each worker forked from it starts with them loaded.
_PRELOAD = ["torch", "project.engine.workers"]


def start_method() -> str | None:
    """``forkserver`` where the platform has it (Linux, macOS), else the platform's default (spawn on Windows)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


def worker_options(dataset: Any, num_workers: int, timeout: float) -> dict[str, Any]:
    """The ``DataLoader`` arguments of every loader with worker processes: how they start and how long a batch may
    take; nothing for ``num_workers=0`` (the main process loads)."""
    if num_workers == 0:
        return {"num_workers": 0}
    if timeout < 0:
        raise ValueError(f"loader_timeout must not be negative (0: wait without end), got {timeout}")
    method = start_method()
    if method == "forkserver":
        # Only the first call counts: the server starts once, with these modules, when the first workers start.
        multiprocessing.set_forkserver_preload([*_PRELOAD, type(dataset).__module__])
    return {"num_workers": num_workers, "multiprocessing_context": method, "timeout": timeout}


class BoundedWait:
    """Mixed into a ``DataLoader`` (subclass): a batch its workers do not deliver within the loader's ``timeout`` is
    a :class:`DataError` naming ``what`` (e.g. "the val loader") and the worker it waited for."""

    what = "the loader"

    def _get_iterator(self) -> Any:
        self._workers_iterator = super()._get_iterator()  # the iterator that knows which worker it waits for
        return self._workers_iterator

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from super().__iter__()
        except UserError as error:  # raised in a worker: its message, not the worker's traceback
            message = compat.worker_error_message(error)
            if message is None:
                raise
            raise type(error)(message) from None
        except RuntimeError as error:
            if not compat.loader_timed_out(error):
                raise
            worker = compat.awaited_worker(getattr(self, "_workers_iterator", None))
            who = f"worker {worker}" if worker is not None else "its workers"
            raise DataError(
                f"{self.what}'s {who} sent no batch in {self.timeout:g} s (stuck, or the data stopped arriving): "
                "the run stops here; raise --data.loader_timeout if a batch can really take longer"
            ) from None
