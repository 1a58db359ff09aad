"""scripts/serve.py: real HTTP requests to LitServe on 127.0.0.1 give predict.py's answers; bad input is a 4xx."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_helpers import serving, train_checkpoint

from project.datamodules import MNISTDataModule
from project.engine import export, predict, serve
from project.engine.checkpoint import load_model

TOPK = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> list[Path]:
    """Twelve test images as PNG files, and one as JPEG at another size (resized by the preprocessing)."""
    folder = tmp_path_factory.mktemp("requests")
    data = MNISTDataModule(root=str(data_root), download=False)
    data.setup("test")
    paths = []
    for index, image in enumerate(data.splits["test"][0][:12]):
        paths.append(folder / f"{index}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    Image.open(paths[0]).convert("RGB").resize((40, 40)).save(folder / "big.jpg")
    return [*paths, folder / "big.jpg"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[str, Path, Path]:
    """(URL, checkpoint, the server's working directory) of a server with dynamic batching."""
    checkpoint = train_checkpoint(tmp_path_factory.mktemp("serve"), data_root)
    cwd = tmp_path_factory.mktemp("cwd")
    with serving(checkpoint, cwd, "--topk", str(TOPK), "--max_batch_size", "8", "--accelerator", "cpu") as url:
        yield url, checkpoint, cwd


def expected_answers(checkpoint: Path, paths: list[Path]) -> dict[str, list[tuple[str, float]]]:
    """The oracle: predict.py's top-k for the same files."""
    results = predict.predict_files(load_model(checkpoint), paths, topk=TOPK)
    return {result.path: result.topk for result in results}


def answer(response: httpx.Response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(item["class"], item["probability"]) for item in response.json()["predictions"]]


def assert_same(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-5)


def test_raw_bytes_multipart_and_json_give_predict_pys_answers(server: tuple, images: list[Path]) -> None:
    url, checkpoint, _ = server
    expected = expected_answers(checkpoint, images)
    for path in images:
        data = path.read_bytes()
        kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        raw = httpx.post(f"{url}/predict", content=data, headers={"Content-Type": kind}, timeout=60)
        form = httpx.post(f"{url}/predict", files={"image": (path.name, data, kind)}, timeout=60)
        as_json = httpx.post(f"{url}/predict", json={"image": base64.b64encode(data).decode()}, timeout=60)
        for response in (raw, form, as_json):
            assert_same(answer(response), expected[str(path)])


def test_health_and_the_page(server: tuple) -> None:
    url, _, _ = server
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    page = httpx.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<input id="file" type="file"' in page.text and 'fetch("predict"' in page.text


def _bomb() -> bytes:
    """A real PNG of 10,000 × 10,000 pixels (100 M, above Pillow's 89 M limit) in a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"this is not an image", "image/png", 415, "not an image"),
        (b"", "image/png", 400, "empty"),
        ("bomb", "image/png", 413, "decompression bomb"),
        (b"hello", "text/plain", 415, "Content-Type text/plain"),
        (b"a=1", "application/x-www-form-urlencoded", 415, "Content-Type application/x-www-form-urlencoded"),
    ],
    ids=["not-an-image", "empty", "bomb", "text", "urlencoded"],
)
def test_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(
    server: tuple, images: list[Path], body: bytes | str, content_type: str, status: int, reason: str
) -> None:
    url, checkpoint, _ = server
    data = _bomb() if body == "bomb" else body
    response = httpx.post(f"{url}/predict", content=data, headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert reason in detail and "\n" not in detail
    good = httpx.post(
        f"{url}/predict", content=images[0].read_bytes(), headers={"Content-Type": "image/png"}, timeout=60
    )
    assert_same(answer(good), expected_answers(checkpoint, images[:1])[str(images[0])])


def test_a_multipart_upload_without_the_image_field_is_a_400(server: tuple) -> None:
    url, _, _ = server
    response = httpx.post(f"{url}/predict", files={"photo": ("x.png", b"123", "image/png")}, timeout=60)
    assert response.status_code == 400 and "field 'image'" in response.json()["detail"]


def test_400_requests_from_16_clients_all_get_predict_pys_answers(server: tuple, images: list[Path]) -> None:
    url, checkpoint, cwd = server
    expected = expected_answers(checkpoint, images)
    bodies = [(str(path), path.read_bytes()) for path in images]
    jobs = [bodies[index % len(bodies)] for index in range(400)]

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=16)) as client:

        def ask(job: tuple[str, bytes]) -> tuple[str, httpx.Response]:
            return job[0], client.post(f"{url}/predict", content=job[1], headers={"Content-Type": "image/png"})

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(ask, jobs))
    assert len(results) == 400
    for path, response in results:
        assert_same(answer(response), expected[path])
    # Nothing written where the server runs (LitServe would write a client.py by default).
    assert [path.name for path in cwd.iterdir()] == [f"serve-{url.rsplit(':', 1)[1]}.log"]


@pytest.mark.slow
def test_an_exported_program_serves_the_checkpoints_answers(server: tuple, images: list[Path], tmp_path: Path) -> None:
    url, checkpoint, _ = server
    program = export.export(checkpoint, "exported", tmp_path / "model.pt2")
    expected = expected_answers(checkpoint, images[:4])
    with serving(program, tmp_path, "--topk", str(TOPK), "--max_batch_size", "1", "--accelerator", "cpu") as other:
        for path in images[:4]:
            response = httpx.post(
                f"{other}/predict", content=path.read_bytes(), headers={"Content-Type": "image/png"}, timeout=60
            )
            assert_same(answer(response), expected[str(path)])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ckpt", "{missing}"], "does not exist"),
        (["--ckpt", "{best}", "--max_batch_size", "0"], "--max_batch_size must be at least 1"),
        (["--ckpt", "{not_a_program}"], "not a torch.export program"),
    ],
)
def test_serve_mistakes_are_one_line_errors_with_exit_code_2(
    server: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "x.pt2").write_bytes(b"not a zip file")
    paths = {"missing": tmp_path / "missing.ckpt", "best": server[1], "not_a_program": tmp_path / "x.pt2"}
    assert serve.main([arg.format(**paths) for arg in args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]
