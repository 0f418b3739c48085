"""The browser page: ``GET /`` and its files under ``/page/``, on the main port.

Plain HTML, CSS and JavaScript from ``streamd/server/page/`` (no build step, nothing from
another host). The page speaks the native protocol to the server that served it, so it is
same-origin (the Origin check admits it) and works behind TLS and a proxy's path prefix like
everything else. It holds no secret, so it is served without a token; its WebSocket needs one
where the server has tokens (``?token=`` in the page's URL, or its token field).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from importlib import resources
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from streamd.server.responses import respond

PAGE_PREFIX = "/page/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page may load its own files and talk to its own server, nothing else: 'self' covers the
# same host's ws:// and wss:// for connect-src. Media from blob: are dropped audio files.
CONTENT_SECURITY_POLICY = ("default-src 'self'; connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
                           "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The page's URL may carry ?token=: never send it on as a Referer.
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (an upgraded server serves new files at once); the ETag makes
    # an unchanged file a bodiless 304.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class PageFile:
    text: str
    content_type: str
    etag: str


@cache
def page_file(name: str) -> PageFile | None:
    """A file of the page by name (read once from the installed package), or None."""
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in CONTENT_TYPES:
        return None
    resource = resources.files("streamd.server").joinpath("page", name)
    if not resource.is_file():
        return None
    text = resource.read_text(encoding="utf-8")
    etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
    return PageFile(text, CONTENT_TYPES[suffix], etag)


def page_response(connection: ServerConnection, request: Request) -> Response | None:
    """The page's answer to a request that is not a WebSocket upgrade: ``/`` is ``index.html``,
    ``/page/NAME`` a file of the page (404 if there is none); None for any other path."""
    if getattr(request, "method", "GET") != "GET":  # websockets answers other methods 405 (before 14: 400)
        return None
    path = urlsplit(request.path).path
    if path == "/":
        name = "index.html"
    elif path.startswith(PAGE_PREFIX):
        name = path[len(PAGE_PREFIX):]
    else:
        return None
    found = page_file(name)
    if found is None:
        return connection.respond(HTTPStatus.NOT_FOUND, f"{path} is not a file of the page\n")
    if request.headers.get("If-None-Match") == found.etag:
        response = connection.respond(HTTPStatus.NOT_MODIFIED, "")
        del response.headers["Content-Type"], response.headers["Content-Length"]
    else:
        response = respond(connection, HTTPStatus.OK, found.text, found.content_type)
    response.headers["ETag"] = found.etag
    for header, value in SECURITY_HEADERS.items():
        response.headers[header] = value
    return response
