"""What LitServe's HTTP layer lacks for an image classifier, as one ASGI middleware (:class:`PageAndRawImages`).

LitServe (0.2) decodes only JSON and form bodies, reads a body whole whatever its size, answers a malformed one with
a 500, and answers ``GET /`` itself. This middleware, in front of it:

- serves the page at ``GET /``;
- reads the body of ``POST /predict`` up to ``max_body_size`` bytes, refusing a larger one with a 413 as soon as
  its ``Content-Length`` or the bytes received so far pass the limit (never read whole);
- takes the image from any of the three forms (raw bytes with an ``image/*`` or ``application/octet-stream`` type,
  a multipart upload in the field ``image``, JSON ``{"image": "<base64>"}``) and hands LitServe one well-formed
  JSON body ``{"image": "<base64>"}``; a malformed multipart or JSON body is a 400, any other type a 415, each with
  a one-line ``detail``, before it reaches a worker.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from project.engine import compat
from project.engine.errors import first_line
from project.engine.serve_metrics import METRICS_PATH, observe_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PAGE = Path(__file__).with_name("serve_page.html")
PREDICT_PATH = "/predict"
RAW_TYPES = ("image/", "application/octet-stream")
#: ``--max_body_size``'s default: a 20-megapixel JPEG is about 10 MB; base64 in JSON adds a third.
DEFAULT_MAX_BODY_SIZE = "32MB"
IMAGE_FIELD = "image"


class BadRequest(Exception):
    """A request refused with ``status`` and a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class PageAndRawImages:
    """An ASGI middleware in front of LitServe's app (``LitServer(middlewares=[(PageAndRawImages, {...})])``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_body_size: int = 32 * 10**6) -> None:
        self.app, self.max_body_size = app, max_body_size
        self.page = PAGE.read_bytes()
        self.api_key = compat.litserve_api_key()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/":
            await _respond(send, 200, self.page, "text/html; charset=utf-8")
            return
        if path == METRICS_PATH:  # mounted (LitServe's logger API) at /metrics/, which would redirect /metrics
            scope = {**scope, "path": METRICS_PATH + "/", "raw_path": (METRICS_PATH + "/").encode()}
        if method != "POST" or path != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.predict(scope, receive, send_and_count)
        finally:
            observe_request(status[0], time.perf_counter() - started)

    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.api_key and not hmac.compare_digest(_header(scope, b"x-api-key"), self.api_key):
                # LitServe checks the key too, but only after this middleware read the body: refuse before.
                raise BadRequest(401, "Invalid API Key: pass the server's key in the X-API-Key header")
            image = await self.image(scope, receive)
        except BadRequest as refused:
            await _respond(send, refused.status, json.dumps({"detail": refused.detail}).encode(), "application/json")
            return
        body = json.dumps({IMAGE_FIELD: base64.b64encode(image).decode("ascii")}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.app({**scope, "headers": headers}, _replay(body, receive), send)

    async def image(self, scope: Scope, receive: Receive) -> bytes:
        """The image bytes of a ``POST /predict``, whichever of the three forms it came in."""
        content_type = _header(scope, b"content-type").split(";")[0].strip().lower()
        if content_type and not content_type.startswith((*RAW_TYPES, "application/json", "multipart/form-data")):
            raise BadRequest(
                415,
                f"Content-Type {content_type}: send an image (image/*, application/octet-stream), a multipart upload "
                f"in the field '{IMAGE_FIELD}' or JSON {{'{IMAGE_FIELD}': base64}}",
            )
        body = await self.read_body(scope, receive)
        if content_type == "application/json":
            return _json_image(body)
        if content_type == "multipart/form-data":
            return await _multipart_image(scope, body, self.max_body_size)
        return body

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The body, refused with a 413 as soon as it is known to be longer than :attr:`max_body_size`."""
        too_large = BadRequest(413, f"the request body is larger than --max_body_size ({self.max_body_size} bytes)")
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_size:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, "the client disconnected before the body was sent")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _json_image(body: bytes) -> bytes:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: a body of 100,000 nested brackets
        raise BadRequest(400, f"malformed JSON body ({first_line(error)[:100]})") from None
    if not isinstance(value, dict) or not isinstance(value.get(IMAGE_FIELD), str):
        raise BadRequest(400, f"no image: the JSON body must be an object with the field '{IMAGE_FIELD}' (base64)")
    try:
        return base64.b64decode(value[IMAGE_FIELD], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(415, f"the JSON field '{IMAGE_FIELD}' is not base64") from None


async def _multipart_image(scope: Scope, body: bytes, max_size: int) -> bytes:
    request = Request({**scope, "type": "http"}, _replay(body, None))
    try:
        form = await request.form(max_files=4, max_fields=16, max_part_size=max_size)
    except HTTPException as error:  # starlette's form parser, inside an app, turns its refusals into these
        raise BadRequest(400, f"malformed multipart body ({first_line(Exception(error.detail))[:100]})") from None
    except (MultiPartException, ValueError, KeyError, AssertionError) as error:  # python-multipart's many refusals
        raise BadRequest(400, f"malformed multipart body ({first_line(error)[:100]})") from None
    try:
        upload = form.get(IMAGE_FIELD)
        if upload is None:
            raise BadRequest(400, f"no image: a multipart upload needs the field '{IMAGE_FIELD}'")
        return await upload.read() if isinstance(upload, UploadFile) else str(upload).encode()
    finally:
        await form.close()


def _replay(body: bytes, receive: Receive | None) -> Receive:
    """A ``receive`` that gives ``body`` once, then (after the body) the client's own messages, e.g. a disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent and receive is not None:
            return await receive()
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _header(scope: Scope, name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), "")


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
