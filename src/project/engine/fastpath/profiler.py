"""Lightning's "no profiler", without its cost: the Trainer's profiler when ``--trainer.profiler`` is not set."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    """Profiles nothing, like Lightning's default ``PassThroughProfiler``, but for free.

    Lightning wraps every hook call in ``with trainer.profiler.profile(name):``, about 140 times per training step
    with the template's callbacks. The default profiler's ``profile()`` is a generator-based context manager that
    does nothing, yet costs hundreds of Python calls per step (benchmarks/README.md). This one returns the same
    empty context every time.
    """

    def profile(self, action_name: str) -> AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING
