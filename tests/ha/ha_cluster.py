"""Several real masters (`cluster master --zk`) and slaves for the HA tests, on the private
ZooKeeper and PostgreSQL of tests/ha/conftest.py.

`HaCluster` wraps tests/cluster_harness.py's `Cluster` (every child ends with it, on failure
too) and adds what HA tests look at: each master's own `/master/state` (asked without
following redirects), who leads, raw answers of a standby, the database's leadership row and
an audit of which master's connections wrote which rows (`install_audit`). Every wait is
bounded and names what it waited for.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cluster_harness import Child, Cluster, MasterClient, free_port, wait_for
from conftest import SESSION_TIMEOUT

__all__ = ["HaCluster", "Raw", "no_redirects"]

# A new leader takes over within the session timeout (plus a ZooKeeper tick) and recovers
# in a moment; a loaded machine gets a generous margin.
FAILOVER = SESSION_TIMEOUT + 20.0


class _Keep(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Keep())


@dataclass
class Raw:
    """One HTTP answer, as sent (redirects not followed)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def own_state(port: int) -> dict[str, Any] | None:
    """The /master/state a master on `port` answers itself (no redirect followed), or None
    when it does not answer 200 (stopped, starting, between roles)."""
    try:
        raw = no_redirects(port, "GET", "/master/state", timeout=3.0)
    except OSError:
        return None
    if raw.status != 200:
        return None
    value: dict[str, Any] = raw.json()
    return value


def no_redirects(port: int, method: str, path: str, body: Any = None,
                 timeout: float = 10.0) -> Raw:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Raw(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Raw(exc.code, dict(exc.headers), exc.read())


def pg_conninfo(url: str) -> str:
    """A psycopg connection string from the tests' SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1).split("?", 1)[0]


@dataclass
class HaCluster:
    """Masters contending under `zk_url`, sharing the database `pg_url`."""

    cluster: Cluster
    zk_url: str
    pg_url: str
    session_timeout: float = SESSION_TIMEOUT
    masters: list[Child] = field(default_factory=list)

    def start_master(self, name: str | None = None) -> Child:
        """One more master (its connections named `name`, default master-N, for the
        audit); returns once it answers its own /master/state."""
        name = name or f"master-{len(self.masters) + 1}"
        sep = "&" if "?" in self.pg_url else "?"
        child = self.cluster.start_master(
            port=free_port(), db=f"{self.pg_url}{sep}application_name={name}", wait=False,
            zk=self.zk_url, zk_session_timeout=self.session_timeout)
        child.name = name
        self.masters.append(child)
        wait_for(lambda: self.state(child), 30.0, what=f"{name} to answer /master/state",
                 show=child.output)
        return child

    def start_slave(self, **options: Any) -> Child:
        return self.cluster.start_slave(master=self.zk_url, wait=False, **options)

    # -- looking at masters ------------------------------------------------------------

    def state(self, child: Child) -> dict[str, Any] | None:
        """Its own /master/state, or None when it does not answer (stopped, starting)."""
        return own_state(child.port) if child.alive() else None

    def leader(self, timeout: float = FAILOVER, among: list[Child] | None = None) -> Child:
        """The one master (of `among`, default every live one) that says it leads and
        serves, once every other live one is a standby naming it."""
        def check() -> Child | None:
            live = [m for m in (among or self.masters) if m.alive()]
            states = {m.name: self.state(m) for m in live}
            leading = [m for m in live if (states[m.name] or {}).get("leading")]
            if len(leading) != 1:
                return None
            pid = states[leading[0].name]["pid"]  # type: ignore[index]
            others = [states[m.name] for m in live if m is not leading[0]]
            if all(s and (s.get("leader") or {}).get("pid") == pid for s in others):
                return leading[0]
            return None

        return wait_for(check, timeout, interval=0.1, what="exactly one leading master",
                        show=lambda: {m.name: (self.state(m) or {}).get("role")
                                      for m in self.masters})

    def api(self, child: Child) -> MasterClient:
        return MasterClient(child.port, timeout=30.0)

    def wait_slaves(self, leader: Child, n: int, timeout: float = FAILOVER) -> None:
        self.api(leader).wait_slaves(n, timeout=timeout)

    def freeze(self, child: Child) -> None:
        child.popen.send_signal(signal.SIGSTOP)

    def thaw(self, child: Child) -> None:
        child.popen.send_signal(signal.SIGCONT)

    # -- the database ----------------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_conninfo(self.pg_url), connect_timeout=5,
                             autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def leadership(self) -> tuple[int, str, float]:
        """(epoch, owner, claimed_at) of the database's leadership row."""
        rows = self.sql("SELECT epoch, owner, claimed_at FROM leadership WHERE id = 1")
        assert rows, "no leadership row: nobody ever claimed"
        epoch, owner, at = rows[0]
        return int(epoch), str(owner), float(at)

    def install_audit(self) -> None:
        """Record every row written to every table of ours: which master's connection
        (application_name), the leader epoch in the database then, and when (the server's
        clock): the truth about who wrote what, whatever the masters say."""
        self.sql("""
            CREATE TABLE IF NOT EXISTS audit (
                seq bigserial PRIMARY KEY, app text, tbl text, op text, epoch bigint,
                at double precision);
            CREATE OR REPLACE FUNCTION audit_write() RETURNS trigger AS $$
            BEGIN
                INSERT INTO audit (app, tbl, op, epoch, at) VALUES (
                    current_setting('application_name'), TG_TABLE_NAME, TG_OP,
                    (SELECT epoch FROM leadership WHERE id = 1),
                    extract(epoch FROM clock_timestamp()));
                RETURN NULL;
            END $$ LANGUAGE plpgsql;""")
        for table in ("tasks", "attempts", "meta", "leadership", "sequences"):
            exists = self.sql("SELECT to_regclass(%s)", table)[0][0]
            if exists is None:
                continue
            self.sql(f"DROP TRIGGER IF EXISTS audit_{table} ON {table}")
            self.sql(f"CREATE TRIGGER audit_{table} AFTER INSERT OR UPDATE OR DELETE ON "
                     f"{table} FOR EACH ROW EXECUTE FUNCTION audit_write()")

    def audit(self) -> list[tuple[str, str, str, int | None, float]]:
        return [(str(a), str(t), str(o), e, float(at)) for a, t, o, e, at in
                self.sql("SELECT app, tbl, op, epoch, at FROM audit ORDER BY seq")]


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """wait_for with the HA tests' default interval."""
    return wait_for(predicate, timeout, interval=0.1, what=what)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
