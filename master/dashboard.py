"""The web dashboard's files (`master/static/`), served by the master at `GET /`.

Contract: `GET /` is `index.html`; `GET /dashboard/<name>` is one of the files of
`master/static/` (read once, at start: a fixed table, so no request path ever reaches the
file system and traversal is impossible); `GET /favicon.ico` is `favicon.svg`. Anything else
under `/dashboard/` is a 404 with a JSON error. Every answer has its content type, a strong
`ETag` and `Cache-Control: no-cache` (the browser revalidates and gets `304` while the file
is unchanged, so a new master version is picked up at once without stale assets);
`index.html` also carries a Content-Security-Policy that allows only this origin's scripts,
styles and connections.

Mount it with `Dashboard().routes()` on an aiohttp router, or call `Dashboard().serve(request)`
from a catch-all route (it answers None for paths that are not the dashboard's).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["STATIC_DIR", "Asset", "Dashboard", "load_assets"]

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}
_TEXT = {".html", ".js", ".css", ".svg", ".txt"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PREFIX = "/dashboard/"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    charset: str | None
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every regular file directly in `directory` with a known type and a plain name."""
    assets: dict[str, Asset] = {}
    for path in sorted(directory.iterdir()):
        suffix = path.suffix.lower()
        if not (_NAME.fullmatch(path.name) and suffix in CONTENT_TYPES and path.is_file()):
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.name] = Asset(body, CONTENT_TYPES[suffix],
                                  "utf-8" if suffix in _TEXT else None, etag)
    if "index.html" not in assets:
        raise FileNotFoundError(f"the dashboard has no index.html in {directory}: the "
                                "package is incomplete (reinstall it)")
    return assets


class Dashboard:
    """Serves the dashboard's files from memory; safe to share between requests."""

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        self.assets = load_assets(directory)

    def routes(self) -> list[web.RouteDef]:
        """`/`, `/dashboard/{name}` and `/favicon.ico` for an aiohttp router (GET and HEAD)."""
        return [web.get("/", self._index), web.get(PREFIX + "{name}", self._asset),
                web.get("/favicon.ico", self._favicon)]

    def serve(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """The answer for a dashboard path, or None when `request.path` is not one."""
        path = request.path
        if path == "/" or path == "/index.html":
            return self.respond(request, "index.html")
        if path == "/favicon.ico":
            return self.respond(request, "favicon.svg")
        if path.startswith(PREFIX):
            return self.respond(request, path[len(PREFIX):])
        return None

    def respond(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": f"{request.method} not allowed on the dashboard; "
                                      "use GET"}, status=405, headers={"Allow": "GET, HEAD"})
        asset = self.assets.get(name)
        if asset is None:
            return web.json_response({"error": f"no dashboard file {name[:100]!r}; the "
                                      "dashboard is at /"}, status=404)
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache",
                   "X-Content-Type-Options": "nosniff"}
        if name == "index.html":
            headers.update({"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                            "Referrer-Policy": "no-referrer"})
        tags = _etags(request.headers.get("If-None-Match", ""))
        if asset.etag in tags or "*" in tags:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type,
                            charset=asset.charset, headers=headers)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return self.respond(request, "index.html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return self.respond(request, request.match_info["name"])

    async def _favicon(self, request: web.Request) -> web.StreamResponse:
        return self.respond(request, "favicon.svg")


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare equal, as for GET)."""
    if header.strip() == "*":
        return {"*"}
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}
