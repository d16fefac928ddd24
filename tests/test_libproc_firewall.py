"""libproc.firewall against requests that try to slip past a rule: extra or trailing slashes,
percent-encoding, query strings, the delegate's short paths, built-in endpoints; a rule that
raises; and libprocess messages, which a firewall never sees."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import libproc
from libproc import UPID, Clock, Process, firewall
from libproc.firewall import DisabledEndpointsFirewallRule

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_rules() -> Iterator[None]:
    firewall.install([])
    yield
    firewall.install([])


@pytest.fixture
async def delegated() -> AsyncIterator[UPID]:
    Clock.reset()
    address = await libproc.start(host="127.0.0.1", port=0, delegate="guarded")
    try:
        yield address
    finally:
        await libproc.stop()


class Guarded(Process):
    def __init__(self) -> None:
        super().__init__("guarded")
        self.messages: list[bytes] = []

    def initialize(self) -> None:
        self.route("/secret", lambda request: "secret")
        self.route("/open", lambda request: "open")
        self.install("secret", lambda sender, body: self.messages.append(body))


async def _get(address: UPID, path: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{address.host}:{address.port}{path}") as response:
            return response.status


async def test_a_disabled_path_stays_disabled_however_it_is_spelled(delegated: UPID) -> None:
    libproc.spawn(Guarded())
    firewall.install([DisabledEndpointsFirewallRule(["/guarded/secret", "/__processes__"])])
    for path in ("/guarded/secret", "/guarded//secret", "/guarded/secret/",
                 "/guarded/secre%74", "/guarded/secret?x=1", "/secret", "/__processes__"):
        assert await _get(delegated, path) == 403, path
    # An empty first segment goes to the delegate as /guarded//guarded/secret: no such route.
    assert await _get(delegated, "//guarded/secret") == 404
    assert await _get(delegated, "/guarded/open") == 200
    assert await _get(delegated, "/open") == 200  # through the delegate
    # Served by the disabled route /secret: disabled too (libprocess would serve it).
    assert await _get(delegated, "/guarded/secret/more") == 403
    assert await _get(delegated, "/secret/more") == 403


async def test_messages_are_not_subject_to_the_firewall(delegated: UPID) -> None:
    guarded = Guarded()
    libproc.spawn(guarded)
    firewall.install([DisabledEndpointsFirewallRule(["/guarded/secret"])])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{delegated.host}:{delegated.port}/guarded/secret",
                             headers={"Libprocess-From": "peer@127.0.0.1:9"},
                             data=b"m") as response:
            assert response.status == 202
    await Clock.settle()
    assert guarded.messages == [b"m"]


async def test_a_rule_that_raises_refuses_the_request_and_later_rules_still_apply(
    delegated: UPID,
) -> None:
    libproc.spawn(Guarded())

    class Broken:
        def apply(self, request: web.BaseRequest, path: str, endpoint: str | None) -> Any:
            raise RuntimeError("rule bug")

    class Teapot:
        def apply(self, request: web.BaseRequest, path: str, endpoint: str | None) -> Any:
            return web.Response(status=418) if endpoint == "/guarded/open" else None

    firewall.install([Broken()])
    assert await _get(delegated, "/guarded/open") == 500
    firewall.install([Teapot(), DisabledEndpointsFirewallRule(["/guarded/secret"])])
    assert await _get(delegated, "/guarded/open") == 418
    assert await _get(delegated, "/guarded/secret") == 403
    assert len(firewall.rules()) == 2


def test_install_refuses_an_object_that_is_not_a_rule() -> None:
    with pytest.raises(TypeError, match="apply"):
        firewall.install(["/guarded/secret"])  # type: ignore[list-item]
    assert firewall.rules() == ()


async def test_a_forbidden_answer_says_which_endpoint_is_disabled(delegated: UPID) -> None:
    libproc.spawn(Guarded())
    firewall.install([DisabledEndpointsFirewallRule(["/guarded/secret"])])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{delegated.host}:{delegated.port}/guarded/secret") as r:
            assert r.status == 403
            assert await r.json() == {"error": "endpoint '/guarded/secret' is disabled"}
