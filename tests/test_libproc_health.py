"""`/health` and the checks processes register with `libproc.add_health_check`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest

import libproc
from libproc import UPID


@pytest.fixture(autouse=True)
def _no_checks_left() -> Iterator[None]:
    yield
    for name in ("db", "disk", "broken"):
        libproc.remove_health_check(name)


async def health(address: UPID) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{address.port}/health") as resp:
        return resp.status, json.loads(await resp.read())


async def test_health_follows_the_registered_checks(runtime: UPID) -> None:
    state = {"db": None, "disk": None}
    libproc.add_health_check("db", lambda: state["db"])
    libproc.add_health_check("disk", lambda: state["disk"])
    status, body = await health(runtime)
    assert status == 200 and body["healthy"] is True
    assert body["checks"] == {"db": "ok", "disk": "ok"} and "reason" not in body
    state["db"] = "database file /x is gone"
    status, body = await health(runtime)
    assert status == 503 and body["healthy"] is False
    assert body["reason"] == "db: database file /x is gone"
    assert body["checks"] == {"db": "database file /x is gone", "disk": "ok"}
    state["db"] = None
    assert (await health(runtime))[0] == 200


async def test_a_check_that_raises_is_unhealthy_not_a_500(runtime: UPID) -> None:
    def broken() -> str | None:
        raise OSError("stat failed")

    libproc.add_health_check("broken", broken)
    status, body = await health(runtime)
    assert status == 503 and "stat failed" in str(body["reason"])
    libproc.remove_health_check("broken")
    libproc.remove_health_check("broken")  # twice is harmless
    status, body = await health(runtime)
    assert status == 200 and body["checks"] == {}
