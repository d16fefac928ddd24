"""Firewall: rules every incoming HTTP request must pass (libprocess's firewall.hpp).

`install(rules)` replaces the rules of this OS process; `install([])` removes them. Each
rule's `apply(request, path, endpoint)` returns None to let the request through or a response
to answer instead (and nothing else runs). `path` is the request's decoded path as it will be
routed (with the delegate's id in front when the request goes to the delegate); `endpoint` is
`/<id><route>` of the route that would serve it, or None (a built-in endpoint, or no route).
Rules see HTTP requests only, built-in endpoints (`/__processes__`, ...) included; libprocess
messages are not HTTP requests here and are never filtered, as in libprocess. A rule that
raises is logged and the request refused with 500 (a broken rule lets nothing through).

`DisabledEndpointsFirewallRule(paths)` answers 403 for a request to one of `paths`. Matches are
exact, with no patterns (`/id/x/*` matches only that literal path); repeated and trailing
slashes are ignored on both sides, so `/id/x/` cannot slip past a rule for `/id/x`. A listed
path that is itself a route (`/id` + the path given to `route()`) also disables every path that
route serves (`/id/x/more` is served by route `/x`): libprocess matches the request path only,
so there `/id/x/more` reaches a disabled endpoint; libproc closes that gap. A listed path that
is not a route disables only itself (`/id/x/nested` under route `/x` leaves `/id/x/nested/y`
open), as in libprocess.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web

__all__ = ["FirewallRule", "DisabledEndpointsFirewallRule", "install", "rules", "check"]

log = logging.getLogger("libproc.firewall")


class FirewallRule(Protocol):
    """What `install()` takes: an object with `apply(request, path, endpoint)`."""

    def apply(self, request: web.BaseRequest, path: str, endpoint: str | None
              ) -> web.StreamResponse | None:
        """None lets the request through; a response refuses it."""


def _normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    return "/" + "/".join(parts)


def _forbidden(path: str) -> web.Response:
    return web.json_response({"error": f"endpoint {path!r} is disabled"}, status=403)


class DisabledEndpointsFirewallRule:
    """403 for requests to any of `paths` (exact paths; see the module docstring)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(_normalize(p) for p in paths)

    def apply(self, request: web.BaseRequest, path: str, endpoint: str | None
              ) -> web.StreamResponse | None:
        if _normalize(path) in self.paths:
            return _forbidden(path)
        if endpoint is not None and _normalize(endpoint) in self.paths:
            return _forbidden(endpoint)
        return None

    def __repr__(self) -> str:
        return f"DisabledEndpointsFirewallRule({sorted(self.paths)!r})"


_rules: tuple[FirewallRule, ...] = ()


def install(new_rules: Iterable[FirewallRule]) -> None:
    """Replace every rule with `new_rules` (an empty list removes them all)."""
    global _rules
    installed = tuple(new_rules)
    for rule in installed:
        if not callable(getattr(rule, "apply", None)):
            raise TypeError(f"a firewall rule needs an apply(request, path, endpoint) method; got "
                            f"{type(rule).__name__} {rule!r}")
    _rules = installed


def rules() -> tuple[FirewallRule, ...]:
    """The rules installed now, in order."""
    return _rules


def check(request: web.BaseRequest, path: str, endpoint: str | None
          ) -> web.StreamResponse | None:
    """The first refusal of the installed rules for this request, or None (the HTTP server
    calls this before a request reaches a process or a built-in endpoint)."""
    for rule in _rules:
        try:
            refusal = rule.apply(request, path, endpoint)
        except Exception:
            log.exception("firewall rule %r raised on %s; refusing the request", rule, path)
            return web.json_response({"error": "a firewall rule failed on this request"},
                                     status=500)
        if refusal is not None:
            log.debug("firewall rule %r refused %s with %s", rule, path, refusal.status)
            return refusal
    return None
