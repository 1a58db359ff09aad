"""What LitServe's HTTP layer lacks for an image classifier, as one ASGI middleware (:class:`PageAndRawImages`).

LitServe (0.2) decodes only JSON and form bodies and answers ``GET /`` itself. This middleware serves the page at
``GET /``, hands a raw image body (``image/*`` or ``application/octet-stream``, as ``curl --data-binary`` with that
content type sends it) on as JSON ``{"image": "<base64>"}``, and refuses other content types with a 415 and a
one-line reason before they reach a worker.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PAGE = Path(__file__).with_name("serve_page.html")
PREDICT_PATH = "/predict"
#: Bodies passed on as they are: LitServe decodes them.
DECODED_TYPES = ("application/json", "multipart/form-data")
RAW_TYPES = ("image/", "application/octet-stream")


class PageAndRawImages:
    """An ASGI middleware in front of LitServe's app (``LitServer(middlewares=[PageAndRawImages])``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.page = PAGE.read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/":
            await _respond(send, 200, self.page, "text/html; charset=utf-8")
            return
        if method != "POST" or path != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        content_type = _header(scope, b"content-type").split(";")[0].strip().lower()
        if content_type.startswith(DECODED_TYPES):
            await self.app(scope, receive, send)
            return
        if content_type and not content_type.startswith(RAW_TYPES):
            reason = (
                f"Content-Type {content_type}: send an image (image/*, application/octet-stream) or a multipart upload"
            )
            await _respond(send, 415, json.dumps({"detail": reason}).encode(), "application/json")
            return
        body = json.dumps({"image": base64.b64encode(await _read_body(receive)).decode("ascii")}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def receive_json() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: a disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, receive_json, send)


def _header(scope: Scope, name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), "")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
