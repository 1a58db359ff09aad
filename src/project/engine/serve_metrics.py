"""``GET /metrics`` of ``serve.py``, in Prometheus's text format: requests, latency, errors and batch sizes.

LitServe runs the HTTP side, the inference workers and its loggers in separate processes, so the metrics are
prometheus_client's multiprocess ones: every process writes its own file in a temporary folder
(``PROMETHEUS_MULTIPROC_DIR``, set by :func:`metrics_folder` before prometheus_client is imported, removed when the
server stops) and ``/metrics`` adds them up. The workers report each batch's size through LitServe's logger API
(``LitAPI.log`` → :class:`MetricsLogger`, which also mounts ``/metrics``); requests, their latency and their status
are counted where every ``POST /predict`` passes, the HTTP middleware (:func:`observe_request`), refusals included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
BATCH_SIZE = "batch_size"  # the key workers log each batch's size under


@contextlib.contextmanager
def metrics_folder() -> Iterator[str]:
    """A temporary folder for every process's metric files, for as long as the server runs (outside the working
    directory: serving writes nothing there)."""
    folder = tempfile.mkdtemp(prefix="project-serve-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = folder  # inherited by the forked HTTP servers and the spawned workers and logger
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous


def _metrics():  # noqa: ANN202 - prometheus_client is imported only once its folder is set
    from prometheus_client import Counter, Histogram

    return (
        Counter("project_requests", "POST /predict requests, by HTTP status", ["status"]),
        Histogram("project_request_seconds", "Time from a request's arrival to its answer, in seconds"),
        Counter("project_request_errors", "POST /predict requests answered with a 4xx or 5xx, by status", ["status"]),
        Histogram("project_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
    )


_CACHE: dict[int, tuple] = {}


def _get() -> tuple:
    """The metric objects of this process (created on first use, after the folder is set)."""
    if os.getpid() not in _CACHE:
        _CACHE.clear()
        _CACHE[os.getpid()] = _metrics()
    return _CACHE[os.getpid()]


def observe_request(status: int, seconds: float) -> None:
    if not os.environ.get(MULTIPROC_ENV):
        return  # not serving with metrics (e.g. the middleware in a test of its own)
    requests, latency, errors, _ = _get()
    requests.labels(status=str(status)).inc()
    latency.observe(seconds)
    if status >= 400:
        errors.labels(status=str(status)).inc()


try:
    from litserve import Logger
except ImportError:  # the optional extra: serve.py says so in one line
    Logger = object


class MetricsLogger(Logger):
    """LitServe's logger API: mounts ``/metrics`` on the server and records what the workers log."""

    def __init__(self) -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry, make_asgi_app
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        self.mount(METRICS_PATH, make_asgi_app(registry))

    def __reduce__(self) -> tuple:
        return (_LoggerInWorker, ())  # sent to LitServe's logger process: the ASGI app stays in the HTTP servers

    def process(self, key: str, value: float) -> None:
        if key == BATCH_SIZE:
            _get()[3].observe(value)


class _LoggerInWorker(MetricsLogger):
    def __init__(self) -> None:  # noqa: D107 - no endpoint to mount in the logger process
        Logger.__init__(self)
