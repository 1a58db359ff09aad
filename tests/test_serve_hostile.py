"""scripts/serve.py against hostile and broken requests, and as a production process: real requests to a real server
on 127.0.0.1 (LitServe 0.2.19). Every httpx call has an explicit timeout."""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import processes
import pytest
from PIL import Image
from serve_helpers import free_port, server_process, train_checkpoint

TIMEOUT = 60  # seconds for one request: a hang guard on a loaded 2-core machine, not a speed limit
API_KEY = "test-key-29"
KEY = {"X-API-Key": API_KEY}


def corrupt_png() -> bytes:
    """124 bytes: a valid PNG signature and header, IDAT data that is not a deflate stream (with valid CRCs):
    torchvision's decoder (libpng) crashes the process on it with SIGSEGV (the engine's decoding reads PNG with Pillow,
    tests/test_crashing_files.py)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    idat = b"\x78\x9c" + bytes((index * 97 + 13) % 256 for index in range(65))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 200).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return train_checkpoint(tmp_path_factory.mktemp("serve-hostile"), data_root)


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a generator fixture
    cwd = tmp_path_factory.mktemp("cwd")
    args = ("--accelerator", "cpu", "--max_body_size", "1MB", "--workers_per_device", "2")
    args += ("--max_batch_size", "4", "--batch_timeout", "0.05")
    env = {"LIT_SERVER_API_KEY": API_KEY}
    with server_process(checkpoint, cwd, *args, env=env, ready_within=180) as (url, process):
        yield url, process


def predict(url: str, content: bytes = b"", **options: object) -> httpx.Response:
    options.setdefault("headers", {"Content-Type": "image/png", **KEY})
    return httpx.post(f"{url}/predict", content=content or None, timeout=TIMEOUT, **options)


def assert_serving(url: str) -> None:
    response = predict(url, png())
    assert response.status_code == 200 and len(response.json()["predictions"]) == 5, response.text


BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
GOOD_PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
).encode()
MALFORMED = {
    "multipart-garbage-after-boundary": (MULTIPART, f"--{BOUNDARY}\r\n".encode() + bytes(range(200, 256))),
    "multipart-no-boundary": ("multipart/form-data", GOOD_PART + b"data\r\n--" + BOUNDARY.encode() + b"--\r\n"),
    "multipart-other-boundary": ("multipart/form-data; boundary=other", GOOD_PART + b"data\r\n"),
    "multipart-truncated": (MULTIPART, GOOD_PART + b"\x89PNG\r\n"),
    "multipart-no-disposition": (MULTIPART, f"--{BOUNDARY}\r\nX: y\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode()),
    "multipart-empty": (MULTIPART, b""),
    "json-invalid": ("application/json", b'{"image": '),
    "json-list": ("application/json", b"[1, 2, 3]"),
    "json-not-a-string": ("application/json", b'{"image": 42}'),
    "json-not-base64": ("application/json", b'{"image": "%%%not base64%%%"}'),
    "json-deeply-nested": ("application/json", b"[" * 100_000 + b"]" * 100_000),
    "json-not-utf8": ("application/json", b'{"image": "\xff\xfe"}'),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_body_is_a_4xx_with_one_line_and_the_server_keeps_serving(server: tuple, kind: str) -> None:
    url, _ = server
    content_type, body = MALFORMED[kind]
    response = predict(url, body, headers={"Content-Type": content_type, **KEY})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    assert_serving(url)


def test_an_image_that_crashes_the_decoder_is_a_4xx_and_the_workers_live(server: tuple) -> None:
    url, _ = server
    for _ in range(4):  # more than the workers: none of them took it and died
        response = predict(url, corrupt_png())
        detail = response.json()["detail"]
        assert response.status_code == 415 and "cannot be decoded" in detail and "\n" not in detail, response.text
    assert_serving(url)


def test_a_body_over_max_body_size_is_a_413_before_it_is_read_whole(server: tuple) -> None:
    url, _ = server
    declared = predict(url, b"\0" * (2 * 10**6))
    assert declared.status_code == 413 and "--max_body_size" in declared.json()["detail"]

    # Chunked, no Content-Length: only counting the bytes received can stop it. A raw socket, to see the answer
    # while sending (httpx sends a whole body first).
    port = int(url.rsplit(":", 1)[1])
    sent, chunk = 0, b"\0" * (64 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-API-Key: {API_KEY}\r\n"
        client.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        answer = b""
        while sent < 200 * 10**6 and not answer:
            try:
                client.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break  # the server has answered and closed the connection
            sent += len(chunk)
            if select.select([client], [], [], 0)[0]:
                answer = client.recv(65536)
        answer = answer or client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 20 * 10**6  # answered after about --max_body_size (1 MB), long before the 200 MB
    assert_serving(url)


def test_the_api_key_is_litserves_x_api_key(server: tuple) -> None:
    url, _ = server
    assert predict(url, png(), headers={"Content-Type": "image/png"}).status_code == 401
    assert predict(url, png(), headers={"Content-Type": "image/png", "X-API-Key": "wrong"}).status_code == 401
    # refused before its body is read: not the 413 of a key-holder's oversized body
    assert predict(url, b"\0" * (2 * 10**6), headers={"Content-Type": "image/png"}).status_code == 401
    assert predict(url, b"\0" * (2 * 10**6)).status_code == 413
    assert_serving(url)


def inference_workers(process) -> list[int]:  # noqa: ANN001
    """The pids of LitServe's inference workers: the processes it spawns, but for its logger process, which it
    spawns first (LitServer.run starts the loggers, then the workers), so the lowest pid of them."""
    spawned = [pid for pid in processes.group_members(process) if "spawn_main" in processes.cmdline(pid)]
    return sorted(spawned)[1:]


def test_a_worker_that_dies_is_replaced_while_the_other_serves(server: tuple) -> None:
    url, process = server
    workers = inference_workers(process)
    assert len(workers) == 2, [processes.cmdline(pid) for pid in processes.group_members(process)]
    os.kill(workers[0], signal.SIGKILL)
    for _ in range(6):  # the other worker answers meanwhile (a request the dead one held may fail: not these)
        assert_serving(url)
    deadline = time.monotonic() + 300
    while True:
        now = inference_workers(process)
        if len(now) == 2 and workers[0] not in now:
            break
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(0.5)
    health = time.monotonic() + 300
    while httpx.get(f"{url}/health", headers=KEY, timeout=TIMEOUT).status_code != 200:
        assert time.monotonic() < health
        time.sleep(0.5)
    assert_serving(url)


def _stop_and_wait(process, signum: int) -> int:  # noqa: ANN001
    os.kill(process.pid, signum)  # the main process only, as kill PID or a supervisor sends it
    deadline = time.monotonic() + 120  # a hang guard
    while processes.group_members(process):
        assert time.monotonic() < deadline, [processes.cmdline(pid) for pid in processes.group_members(process)]
        time.sleep(0.2)
    return process.wait(timeout=30)


@pytest.mark.slow  # two servers start and stop: about 30 s
def test_sigterm_and_sigint_stop_every_process_and_free_the_port(checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with server_process(checkpoint, tmp_path, "--accelerator", "cpu", port=port) as (url, process):
            assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
            assert _stop_and_wait(process, signum) == 128 + signum
    with socket.socket() as probe:  # and the port is free again
        probe.bind(("127.0.0.1", port))


def metrics(url: str) -> dict[str, float]:
    """``GET /metrics`` as ``{sample name with labels: value}``."""
    response = httpx.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_requests_errors_latency_and_batches_of_up_to_max_batch_size(server: tuple) -> None:
    url, _ = server
    before = metrics(url)
    assert predict(url, b"not an image").status_code == 415
    with ThreadPoolExecutor(max_workers=16) as pool:  # concurrent: dynamic batching gathers them
        answers = list(pool.map(lambda _: predict(url, png()).status_code, range(48)))
    assert answers == [200] * 48
    deadline = time.monotonic() + 60  # the logger process records batches a moment after they ran
    while True:
        after = metrics(url)
        batches = after.get("project_batch_size_count", 0) - before.get("project_batch_size_count", 0)
        images = after.get("project_batch_size_sum", 0) - before.get("project_batch_size_sum", 0)
        if images >= 48 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert images == 48  # every image went through a logged model call
    singles = after['project_batch_size_bucket{le="1.0"}'] - before.get('project_batch_size_bucket{le="1.0"}', 0)
    assert batches - singles > 0, "no batch held more than one image: --max_batch_size 4 was not used"
    above_four = after["project_batch_size_count"] - after['project_batch_size_bucket{le="4.0"}']
    assert above_four == 0, "a batch held more than --max_batch_size 4"

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew('project_requests_total{status="200"}') >= 48
    assert grew('project_requests_total{status="415"}') >= 1
    assert grew('project_request_errors_total{status="415"}') >= 1
    assert grew("project_request_seconds_count") >= 49 and grew("project_request_seconds_sum") > 0
