"""``--data streaming`` from an S3-compatible object store: a real one (moto's server) on 127.0.0.1, reached the way
users configure theirs (``AWS_ENDPOINT_URL`` and credentials in the environment); nothing is mocked."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import processes
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_streaming import STREAM_TINY, prepare_mnist

from project.engine.cli import main
from project.engine.data import shards

BUCKET = "datasets"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in its own process on a free port of 127.0.0.1, with one empty bucket."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")  # noqa: SIM115 (closed below)
    server = processes.start(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 (the server is still starting: any failure means "not yet")
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        processes.end(server)
        log.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def s3_shards(s3_endpoint: str, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The same MNIST shards written locally and straight to the bucket by prepare_data.py."""
    local = tmp_path_factory.mktemp("local") / "mnist"
    assert prepare_mnist(data_root, local) == 0
    url = f"s3://{BUCKET}/mnist"
    assert prepare_mnist(data_root, url) == 0  # type: ignore[arg-type]
    return url, local


def test_prepare_data_writes_the_same_data_set_to_the_bucket_as_to_a_directory(s3_shards: tuple[str, Path]) -> None:
    url, local = s3_shards
    client = boto3.client("s3")
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="mnist/")["Contents"]
    uploaded = {item["Key"].removeprefix("mnist/") for item in listing}
    written = {path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file()}
    assert uploaded == written and f"train/{shards.INDEX}" in written and shards.METADATA in written
    for name in sorted(written):
        remote = client.get_object(Bucket=BUCKET, Key=f"mnist/{name}")["Body"].read()
        if name.endswith(shards.INDEX):  # LitData stamps the time of writing in it: the chunks must agree
            assert json.loads(remote)["chunks"] == json.loads((local / name).read_text())["chunks"], name
        else:
            assert remote == (local / name).read_bytes(), name


#: Bytes of chunk files in the remote run's cache, seen after each training step (CacheSize).
CACHE_SIZES: list[int] = []


class CacheSize(Callback):
    """Records how many bytes of shards the cache holds after each training step."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = Path(cache_dir)

    def on_train_batch_end(self, *args: Any) -> None:
        CACHE_SIZES.append(sum(path.stat().st_size for path in self.cache_dir.rglob("chunk-*.bin")))


def test_training_from_the_bucket_equals_training_from_the_local_directory_within_the_cache_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_shards: tuple[str, Path]
) -> None:
    url, local = s3_shards
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    chunks = sorted((local / "train").glob("chunk-*.bin"))
    bound, largest = 24 * 1024, max(path.stat().st_size for path in chunks)
    assert sum(path.stat().st_size for path in chunks) > 3 * bound  # the bound must evict to hold
    common = [*STREAM_TINY, "--data", "streaming", "--data.num_workers", "2", "--model", "deepnet"]
    common += ["--trainer.limit_train_batches", "1.0"]  # a whole epoch: every shard of the split is read
    assert main([*common, "--data.input_dir", str(local), "--run_dir", "local"]) == 0
    remote = ["--data.input_dir", url, "--data.cache_dir", str(cache), "--data.max_cache_size", f"{bound}B"]
    watch = json.dumps([{"class_path": "test_streaming_s3.CacheSize", "init_args": {"cache_dir": str(cache)}}])
    CACHE_SIZES.clear()
    assert main([*common, *remote, "--run_dir", "remote", "--trainer.callbacks", watch]) == 0
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True) for run in ("local", "remote")
    ]
    assert weights[0]["state_dict"].keys() == weights[1]["state_dict"].keys()
    for key, tensor in weights[0]["state_dict"].items():
        assert torch.equal(weights[1]["state_dict"][key], tensor), key
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("local", "remote")]
    assert summaries[0]["test_acc"] == summaries[1]["test_acc"] and summaries[0]["test_acc"] is not None
    # Every shard came through the cache, which never held much more than its bound: what is being read and what
    # each of the two workers fetches ahead, a chunk each, beyond it.
    assert CACHE_SIZES and max(CACHE_SIZES) > 0
    assert max(CACHE_SIZES) <= bound + 2 * largest, (max(CACHE_SIZES), bound, largest)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (
            "s3://no-such-bucket/mnist",
            "s3://no-such-bucket/mnist/dataset.json: no bucket 'no-such-bucket' at http://127.0.0.1:",
        ),
        (f"s3://{BUCKET}/nothing-here", f"s3://{BUCKET}/nothing-here is not a complete prepared data set"),
    ],
)
def test_a_missing_bucket_or_data_set_is_one_line_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    s3_endpoint: str,
    where: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*STREAM_TINY, "--data", "streaming", "--data.input_dir", where]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: {expected}"), lines
    assert "Traceback" not in "\n".join(lines)


def test_an_unreachable_endpoint_is_one_line_naming_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], s3_endpoint: str
) -> None:
    monkeypatch.chdir(tmp_path)
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main([*STREAM_TINY, "--data", "streaming", "--data.input_dir", f"s3://{BUCKET}/mnist"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = f"error: s3://{BUCKET}/mnist/dataset.json: Could not connect to the endpoint URL"
    assert lines[-1].startswith(expected), lines
    assert closed in lines[-1]
