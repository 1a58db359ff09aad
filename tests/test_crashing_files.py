"""Files that crash a native decoder take no process down (issue 28): a PNG with a valid signature and header but
corrupt compressed data ends torchvision 0.29.1's decode_png with SIGSEGV (any libpng error does). Such a file is
treated like any file that does not decode: skipped and listed in training and preparation, an unreadable row in
predict.py, a refused upload (NotAnImage, the server's 415).

Each check runs in a child process: before the fix the first decoding of such a file ended the process, and a test
in this one would have ended the whole suite rather than fail.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import processes
import pytest
from conftest import REPO, RUN_TIMEOUT, TINY, run_train
from fakedata import write_image_folder
from PIL import Image

from project.engine.data import shards


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def crashing_pngs() -> dict[str, bytes]:
    """Real PNG files whose header is valid and whose image data is not: as PIL writes them, then damaged."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    good = buffer.getvalue()
    ihdr_end = 8 + 8 + 13 + 4  # signature, then IHDR's length, type, 13 bytes and CRC
    header = good[:ihdr_end]
    compressed = zlib.compress(bytes(range(256)) * 2)
    scrambled = compressed[:2] + bytes(byte ^ 0x5A for byte in compressed[2:])  # zlib header kept, stream broken
    return {
        # The file: valid signature and IHDR, an IDAT of broken deflate data with a correct CRC.
        "corrupt_idat.png": header + _chunk(b"IDAT", scrambled) + _chunk(b"IEND", b""),
        # The image data's checksum wrong (libpng: "IDAT: CRC error").
        "bad_crc.png": header + _chunk(b"IDAT", zlib.compress(b"\0" * 200), crc=1) + _chunk(b"IEND", b""),
        # Cut in the middle of the image data, where a download or a full disk stops.
        "cut.png": good[: ihdr_end + 20],
    }


def write_crashing_pngs(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in list(crashing_pngs().items())[:count]:
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def _python(code: str) -> processes.subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return processes.run([sys.executable, "-c", code], RUN_TIMEOUT, env=env)


def test_torchvision_still_ends_the_process_on_a_corrupt_png(tmp_path: Path) -> None:
    # Why PNG is decoded by Pillow (engine/data/images.py): when this fails, torchvision no longer crashes and its
    # faster PNG decoder may come back.
    path = tmp_path / "corrupt_idat.png"
    path.write_bytes(crashing_pngs()["corrupt_idat.png"])
    code = f"import torchvision.io as io; io.decode_image(io.read_file({str(path)!r}))"
    result = _python(code)
    assert result.returncode == -11, (result.returncode, result.stderr[-500:])
    assert "libpng error" in result.stderr


def test_every_decoder_refuses_such_files_with_a_reason(tmp_path: Path) -> None:
    paths = write_crashing_pngs(tmp_path)
    code = (
        "import sys\n"
        "from project.engine.data.images import NotAnImage, load_image\n"
        "from project.engine.inputs import bytes_input\n"
        "for path in sys.argv[1:]:\n"
        "    for decode in (lambda: load_image(path), lambda: bytes_input(open(path, 'rb').read(), "
        "{'image_size': [8, 8], 'channels': 3})):\n"
        "        try:\n"
        "            decode()\n"
        "        except NotAnImage as error:\n"
        "            print('refused', error)\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = processes.run([sys.executable, "-c", code, *map(str, paths)], RUN_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-800:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2 * len(paths) and all(line.startswith("refused ") for line in lines), lines
    assert all(any(str(path) in line for line in lines) for path in paths)  # load_image names the file
    assert all("cannot be decoded" in line or "not an image" in line for line in lines), lines


@pytest.fixture(scope="module")
def folder_with_crashing_pngs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = write_image_folder(tmp_path_factory.mktemp("crashing") / "images", per_class=12, size=(16, 16))
    return root, write_crashing_pngs(root / "cat") + write_crashing_pngs(root / "dog", 1)


@pytest.mark.parametrize("cache", ["auto", "never"])
def test_training_skips_and_lists_them_and_predict_writes_unreadable_rows(
    cache: str, folder_with_crashing_pngs: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, bad = folder_with_crashing_pngs
    args = ["--model", "mlp", "--data", "folder", "--data.root", str(root), "--data.image_size", "16"]
    result = run_train([*TINY, *args, "--data.cache", cache, "--data.num_workers", "1", "--run_dir", "run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # The training split's files are judged when the statistics are first asked for, the others at setup.
    assert sum(map(int, re.findall(r"skipping (\d+) unusable file", result.stderr))) == len(bad)
    assert all(str(path) in result.stderr for path in bad)
    if cache == "auto":
        return
    good = next((root / "frog").iterdir())
    output = tmp_path / "predictions.csv"
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    command = [sys.executable, str(REPO / "scripts" / "predict.py"), "--ckpt", str(checkpoint), "--output", str(output)]
    predicted = processes.run([*command, str(good), *map(str, bad)], RUN_TIMEOUT)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = {row["path"]: row for row in csv.DictReader(output.open())}
    assert rows[str(good)]["error"] == "" and rows[str(good)]["prediction"]
    assert all(rows[str(path)]["error"] and not rows[str(path)]["prediction"] for path in bad), rows
    assert f"1 predicted, {len(bad)} unreadable" in predicted.stdout


def test_prepare_data_skips_and_lists_them(folder_with_crashing_pngs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, bad = folder_with_crashing_pngs
    output = tmp_path / "shards"
    command = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--data", "folder", "--data.root", str(root)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    result = processes.run([*command, "--output", str(output), "--num_workers", "1"], RUN_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"skipping {len(bad)} unusable file(s)" in result.stderr
    assert all(str(path) in result.stderr for path in bad)
    metadata = json.loads((output / shards.METADATA).read_text())
    assert sum(metadata["splits"].values()) == 36  # every good file, none of the bad
