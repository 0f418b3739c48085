"""HTTP answers given before any WebSocket handshake (probes, metrics, the page, refusals)."""

from __future__ import annotations

from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response


def respond(connection: ServerConnection, status: HTTPStatus, body: str | bytes, content_type: str) -> Response:
    """``body`` with its own content type (websockets' ``respond`` makes every answer plain text)."""
    response = connection.respond(status, "")
    response.body = body.encode() if isinstance(body, str) else body
    for name, value in (("Content-Type", content_type), ("Content-Length", str(len(response.body)))):
        del response.headers[name]
        response.headers[name] = value
    return response


def respond_json(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    return respond(connection, status, body, "application/json")
