"""Where streamed data lives, and how to tell that it is whole: a data set written by ``scripts/prepare_data.py``.

    OUT/
        train/ val/ test/     LitData's shards of each split (``index.json`` and ``chunk-*.bin``): each sample is
                              ``{"image": the image file's bytes (JPEG, PNG, ...), "label": int}``
        dataset.json          class names, channels, per-channel statistics, samples per split, the seed of the
                              samples' order and each shard's SHA-256 (checked when a worker first reads it);
                              written last, so a data set without it is one whose preparation did not finish

``OUT`` is a local directory or ``s3://bucket/prefix`` of any S3-compatible store (endpoint and credentials the
usual AWS way: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... or ``~/.aws``). Every problem is a one-line
:class:`DataError` naming the URL or the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from project.engine.api import DataError, first_line

SPLITS = ("train", "val", "test")
METADATA = "dataset.json"
INDEX = "index.json"  # LitData's list of a split's chunks, with each one's size in bytes
FORMAT = "project-shards"
VERSION = 2  # 2: samples in a seeded random order, a checksum per shard


def is_remote(url: str) -> bool:
    return url.startswith("s3://")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts]) if is_remote(url) else os.path.join(url, *parts)


def read_metadata(url: str) -> dict[str, Any]:
    """``dataset.json`` of a prepared data set, checked; a one-line error if it is not one."""
    raw = _read(
        join(url, METADATA),
        missing=f"{url} is not a complete prepared data set (no {METADATA}): "
        "write it with scripts/prepare_data.py, or run that again if it was interrupted",
    )
    try:
        metadata = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{join(url, METADATA)} is corrupt ({error}): run scripts/prepare_data.py again") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise DataError(f"{join(url, METADATA)} was not written by scripts/prepare_data.py")
    if metadata.get("version") != VERSION:
        raise DataError(
            f"{join(url, METADATA)} is of format version {metadata.get('version')}, this template reads "
            f"{VERSION}: run scripts/prepare_data.py again"
        )
    return metadata


def check_split(url: str, split: str) -> None:
    """Every chunk that the split's ``index.json`` lists is there, with its size: a missing or truncated shard is
    named now, not found by a worker in the middle of an epoch."""
    split_url = join(url, split)
    raw = _read(join(split_url, INDEX), missing=f"{join(split_url, INDEX)} is missing: the data set is incomplete")
    try:
        chunks = json.loads(raw)["chunks"]
        expected = {chunk["filename"]: int(chunk["chunk_bytes"]) for chunk in chunks}
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{join(split_url, INDEX)} is corrupt ({first_line(error)})") from None
    present = _sizes(split_url)
    for name, size in sorted(expected.items()):
        if name not in present:
            raise DataError(f"shard {join(split_url, name)} is missing: the data set is incomplete")
        if present[name] != size:
            raise DataError(
                f"shard {join(split_url, name)} is corrupt: {present[name]} bytes where {INDEX} says {size}"
            )


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ShardChecksums:
    """Checks a shard file (a split's chunk, local or fetched into the cache) against the SHA-256 that
    ``prepare_data.py`` recorded: a shard damaged at the right size is one line naming it, not a worker crash or a
    batch of garbage."""

    def __init__(self, split_url: str, expected: dict[str, str]) -> None:
        self.split_url, self.expected = split_url, expected

    def __call__(self, path: str) -> None:
        name = os.path.basename(path)
        if name not in self.expected:
            raise DataError(f"shard {join(self.split_url, name)} is not one that {METADATA} lists: prepare it again")
        if sha256_file(path) != self.expected[name]:
            where = "" if os.path.dirname(path) == self.split_url else f" (read from {path})"
            raise DataError(
                f"shard {join(self.split_url, name)} is damaged{where}: its SHA-256 is not the one {METADATA} "
                "records; restore it or run scripts/prepare_data.py again"
            )


# ---------------------------------------------------------------------------------------------- storage
def exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(url)
    bucket, key = _bucket_key(url)
    try:
        s3_call(url, lambda client: client.head_object(Bucket=bucket, Key=key))
    except _NotFound:
        return False
    return True


def _read(url: str, missing: str) -> bytes:
    if not is_remote(url):
        try:
            with open(url, "rb") as file:
                return file.read()
        except FileNotFoundError:
            raise DataError(missing) from None
        except OSError as error:
            raise DataError(f"cannot read {url}: {error.strerror or error}") from None
    bucket, key = _bucket_key(url)
    try:
        return s3_call(url, lambda client: client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except _NotFound:
        raise DataError(missing) from None


def _sizes(url: str) -> dict[str, int]:
    """``{file name: size}`` of the files directly in a directory or under an ``s3://`` prefix."""
    if not is_remote(url):
        try:
            return {entry.name: entry.stat().st_size for entry in os.scandir(url) if entry.is_file()}
        except OSError as error:
            raise DataError(f"cannot list {url}: {error.strerror or error}") from None
    bucket, prefix = _bucket_key(url.rstrip("/") + "/")

    def listing(client: Any) -> dict[str, int]:
        sizes = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            sizes.update({item["Key"][len(prefix) :]: item["Size"] for item in page.get("Contents", [])})
        return sizes

    try:
        return s3_call(url, listing)
    except _NotFound:
        return {}


class _NotFound(Exception):
    """No such key (the bucket exists)."""


def _bucket_key(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def s3_call(url: str, call: Any) -> Any:
    """``call(boto3 S3 client)``, with the store's failures as one line naming ``url`` and the endpoint."""
    import boto3  # LitData's own S3 client; imported here so local data needs no AWS set-up
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3")
    endpoint = client.meta.endpoint_url
    try:
        return call(client)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise _NotFound from None
        if code == "NoSuchBucket":
            raise DataError(f"{url}: no bucket {_bucket_key(url)[0]!r} at {endpoint}") from None
        raise DataError(f"{url}: {first_line(error)} (endpoint {endpoint})") from None
    except BotoCoreError as error:  # unreachable endpoint, no credentials, ...
        raise DataError(f"{url}: {first_line(error)}") from None
