"""The dashboard's file server (master/dashboard.py) over a real aiohttp server: content
types, caching, CSP, and that no request path reaches the file system."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from master.dashboard import STATIC_DIR, Dashboard, load_assets


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture(params=["router", "catch-all"])
async def base(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The dashboard mounted both ways the master may mount it."""
    dashboard = Dashboard()
    app = web.Application()
    if request.param == "router":
        app.add_routes(dashboard.routes())
    else:
        async def catch_all(req: web.Request) -> web.StreamResponse:
            answer = dashboard.serve(req)
            return answer if answer is not None else web.json_response({"error": "x"}, status=404)

        app.router.add_route("*", "/{tail:.*}", catch_all)
    runner, url = await _serve(app)
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_index_is_html_with_a_strict_csp(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(base + "/") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "<main" in await r.text()


@pytest.mark.parametrize("path,ctype", [
    ("/dashboard/app.js", "text/javascript; charset=utf-8"),
    ("/dashboard/style.css", "text/css; charset=utf-8"),
    ("/favicon.ico", "image/svg+xml; charset=utf-8"),
    ("/dashboard/favicon.svg", "image/svg+xml; charset=utf-8"),
])
async def test_assets_have_their_content_type(base: str, path: str, ctype: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(base + path) as r:
        assert r.status == 200 and r.headers["Content-Type"] == ctype
        assert len(await r.read()) > 100


async def test_an_unchanged_file_revalidates_with_304(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/dashboard/app.js") as r:
            etag = r.headers["ETag"]
            assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        async with s.get(base + "/dashboard/app.js", headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
        async with s.get(base + "/dashboard/app.js",
                         headers={"If-None-Match": '"other", W/' + etag}) as r:
            assert r.status == 304
        async with s.get(base + "/dashboard/app.js", headers={"If-None-Match": '"old"'}) as r:
            assert r.status == 200


@pytest.mark.parametrize("path", [
    "/dashboard/../dashboard.py",
    "/dashboard/..%2Fdashboard.py",
    "/dashboard/%2e%2e%2fevents.py",
    "/dashboard/%2fetc%2fpasswd",
    "/dashboard/..%5cdashboard.py",
    "/dashboard/.hidden",
    "/dashboard/",
    "/dashboard/app.js%00.css",
    "/dashboard/static/app.js",
    "/dashboard/" + "a" * 5000,
])
async def test_no_path_reaches_the_file_system(base: str, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(base + path) as r:
            body = await r.read()
    assert r.status in (400, 404), (path, r.status)
    assert b"import" not in body and b"root:" not in body


async def test_writes_are_refused(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(base + "/dashboard/app.js") as r:
        assert r.status in (404, 405)  # the router's 405, or ours (JSON)


async def test_head_answers_without_a_body(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.head(base + "/dashboard/style.css") as r:
        assert r.status == 200 and r.headers["ETag"]


def test_every_file_the_pages_load_is_served() -> None:
    """index.html's links and each module's imports name files the server has."""
    assets = load_assets()
    html = (STATIC_DIR / "index.html").read_text()
    wanted = {m for m in re.findall(r'(?:src|href)="/dashboard/([^"]+)"', html)}
    for name in [n for n in assets if n.endswith(".js")]:
        wanted |= set(re.findall(r"from '\./([^']+)'", (STATIC_DIR / name).read_text()))
    assert wanted and wanted <= set(assets), wanted - set(assets)
    assert "favicon.svg" in assets


def test_pages_never_use_inner_html_or_remote_urls() -> None:
    """Text goes in through textContent (no injection); nothing loads from another origin."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert "innerHTML" not in text and "eval(" not in text, path.name
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name


def test_a_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("x")
    with pytest.raises(FileNotFoundError, match="no index.html"):
        load_assets(tmp_path)


async def test_files_are_read_once_not_per_request(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>v1</p>")
    dashboard = Dashboard(tmp_path)
    (tmp_path / "index.html").write_text("<p>v2</p>")
    (tmp_path / "new.js").write_text("1")
    app = web.Application()
    app.add_routes(dashboard.routes())
    runner, url = await _serve(app)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/") as r:
                assert await r.text() == "<p>v1</p>"
            async with s.get(url + "/dashboard/new.js") as r:
                assert r.status == 404
    finally:
        await runner.cleanup()
        await asyncio.sleep(0)
