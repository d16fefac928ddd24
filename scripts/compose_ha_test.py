"""End-to-end check of `docker compose --profile ha` on a real Docker engine
(`make compose-ha-test`).

Builds the images (the cluster's from the repository's Dockerfile; ZooKeeper's and
PostgreSQL's from docker/*.Dockerfile, Debian's packages on the same local base image) and
starts ZooKeeper, PostgreSQL, three masters and two slaves under a compose project of its
own, with every published port a free one. Then it checks:

  1. exactly one master leads and the two others are standbys naming it (each master's own
     /master/state, through its published port), and a standby answers 307 to the leader;
  2. through the CLI inside the compose network (`--master zk://zookeeper:2181/cluster`),
     both slaves register and a batch of tasks FINISHES;
  3. `docker kill` of the leader while a task runs: another master leads, the first task it
     accepts is timed, and the running task ends FINISHED on the new leader, never re-run;
  4. the killed master, started again, comes back as a standby naming the new leader.

It always ends with `docker compose down -v` and removes the image it tagged, pass or fail,
on SIGINT/SIGTERM/SIGHUP too. Prints its figures; exits non-zero with a clear message on any
failure. Needs `docker` and `docker compose` (scripts/docker-local.sh). Standard library
only; the helpers are scripts/compose_test.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_test import REPO, Failure, Interrupted, fail, run, say, wait_for  # noqa: E402

PROJECT_PREFIX = "libproc-ha-e2e-"
ZK = "zk://zookeeper:2181/cluster"
MASTERS = ("master-1", "master-2", "master-3")


def log(message: str) -> None:
    say(f"compose-ha-test: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def get(port: int, path: str) -> tuple[int, dict[str, str], Any]:
    """GET on a published port without following redirects: (status, headers, JSON)."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


class HaCompose:
    """The compose project (profile ha), its published ports and the CLI inside it."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.image = f"libproc-cluster:{project}"
        self.ports = {name: free_port() for name in MASTERS}
        self.env = dict(os.environ, CLUSTER_HA_IMAGE=self.image,
                        CLUSTER_HA_ZK_PORT=str(free_port()),
                        **{f"CLUSTER_HA_PORT_{i + 1}": str(self.ports[m])
                           for i, m in enumerate(MASTERS)})
        self.base = ["docker", "compose", "-p", project, "-f", str(REPO / "docker-compose.yml"),
                     "--project-directory", str(REPO), "--profile", "ha"]

    def compose(self, *args: str, timeout: float,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], timeout=timeout, check=check, env=self.env,
                   what=f"docker compose {' '.join(args)}")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`cluster ARGS --master zk://…` inside a slave container (the compose network)."""
        return self.compose("exec", "-T", "ha-slave", "cluster", *args, "--master", ZK,
                            timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        out = self.cli(*args, "--json").stdout
        try:
            return json.loads(out)
        except ValueError:
            fail(f"cluster {' '.join(args)} --json printed no JSON: {out[:300]!r}")

    def state(self, name: str) -> dict[str, Any] | None:
        try:
            status, _, body = get(self.ports[name], "/master/state")
        except (OSError, ValueError):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    def leader(self, among: Sequence[str] = MASTERS) -> str | None:
        """The one master of `among` that leads, once the others there name it."""
        states = {m: self.state(m) for m in among}
        leading = [m for m, s in states.items() if s and s.get("leading")]
        if len(leading) != 1:
            return None
        pid = states[leading[0]]["pid"]  # type: ignore[index]
        others = [s for m, s in states.items() if m != leading[0]]
        ok = all(s and (s.get("leader") or {}).get("pid") == pid for s in others)
        return leading[0] if ok else None

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service, timeout=30).stdout.split()
        if len(ids) != 1:
            fail(f"expected one container of {service}, compose lists {ids}")
        return ids[0]


def scenario(c: HaCompose, figures: dict[str, str]) -> None:
    log(f"docker compose -p {c.project} --profile ha up -d --build --scale ha-slave=2 ha-slave")
    started = time.monotonic()
    c.compose("up", "-d", "--build", "--scale", "ha-slave=2", "ha-slave", timeout=1800)
    leader, _ = wait_for("exactly one leading master", c.leader, timeout=60)
    figures["up -> one leader"] = f"{time.monotonic() - started:.1f} s"
    standbys = [m for m in MASTERS if m != leader]
    log(f"{leader} leads; {', '.join(standbys)} are standbys naming it")
    status, headers, body = get(c.ports[standbys[0]], "/master/tasks?state=RUNNING")
    want = f"http://{leader}:{5061 + MASTERS.index(leader)}/master/tasks?state=RUNNING"
    if status != 307 or headers.get("Location") != want:
        fail(f"a standby answered {status} {headers.get('Location')!r} ({body}), not 307 {want}")
    if get(c.ports[leader], "/master/slaves")[0] != 200:
        fail(f"the leader {leader} does not serve /master/slaves itself")

    def two_slaves() -> list[Any] | None:
        slaves = [s for s in c.cli_json("slaves")["slaves"] if s["state"] == "active"]
        return slaves if len(slaves) == 2 else None

    wait_for("two slaves registered with the leader", two_slaves, timeout=60)
    batch = c.cli("submit", "--count", "4", "--wait", "echo hello from $(hostname)")
    log(f"a batch of 4 tasks: {batch.stdout.strip().splitlines()[-1]}")

    (long_id,) = c.cli_json("submit", "--name", "across", "sleep 8")["ids"]
    wait_for(f"task {long_id} running", lambda: c.cli_json("task", str(long_id))["state"]
             == "RUNNING" or None, timeout=60)
    victim = c.container(leader)
    log(f"docker kill {leader} (container {victim[:12]}) while task {long_id} runs")
    run(["docker", "kill", "-s", "KILL", victim], timeout=60)
    killed = time.monotonic()
    after = c.cli_json("submit", "--name", "after", "true")["ids"]  # follows to the new one
    figures["docker kill of the leader -> first task accepted by the new one"] = (
        f"{time.monotonic() - killed:.1f} s (includes `docker compose exec`)")
    new, _ = wait_for("another master leading", lambda: c.leader(standbys), timeout=60)
    log(f"{new} leads now; task {after[0]} accepted by it")

    def finished() -> dict[str, Any] | None:
        task: dict[str, Any] = c.cli_json("task", str(long_id))
        return task if task["state"] in ("FINISHED", "FAILED", "KILLED", "LOST") else None

    task, _ = wait_for(f"task {long_id} to end", finished, timeout=90)
    if task["state"] != "FINISHED" or task["attempt"] != 1:
        fail(f"task {long_id} ended {task['state']} at attempt {task['attempt']} "
             f"({task['message']}); it should have run on, once, through the failover")
    log(f"task {long_id} FINISHED on the new leader, attempt 1")

    run(["docker", "start", victim], timeout=60)
    back, _ = wait_for(f"{leader} back as a standby", lambda: c.leader(MASTERS),
                       timeout=60)
    if back != new:
        fail(f"after {leader} came back, {back} leads (expected {new} to keep leading)")
    log(f"{leader} is back, a standby naming {new}")


def not_run(message: str) -> NoReturn:
    ci = os.environ.get("CI", "").lower() == "true"
    say(f"compose-ha-test {'FAILED (CI=true)' if ci else 'NOT RUN'}: {message}", err=True)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=f"{PROJECT_PREFIX}{os.getpid()}",
                        help="compose project name (default: libproc-ha-e2e-<pid>)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    for check, why in ((["docker", "info"], "dockerd does not answer `docker info`"),
                       (["docker", "compose", "version"], "no `docker compose` plugin")):
        try:
            code = subprocess.run(check, check=False, capture_output=True,
                                  timeout=30).returncode
        except (OSError, subprocess.TimeoutExpired):
            code = 1
        if code != 0:
            not_run(f"{why} (run scripts/docker-local.sh)")

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    c = HaCompose(args.project)
    figures: dict[str, str] = {}
    ok = False
    try:
        scenario(c, figures)
        ok = True
    except Failure as exc:
        say(f"compose-ha-test FAILED: {exc}", err=True)
        logs = c.compose("logs", "--no-color", "--tail", "30", timeout=60, check=False)
        say((logs.stdout + logs.stderr)[-12000:], err=True)
    except Exception:  # noqa: BLE001 - a bug here: still a failure, still torn down
        say(f"compose-ha-test FAILED with an error:\n{traceback.format_exc()}", err=True)
    except Interrupted as exc:
        say(f"compose-ha-test INTERRUPTED by {exc}; tearing down", err=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        log(f"docker compose -p {c.project} down -v")
        try:
            c.compose("down", "-v", "-t", "5", "--remove-orphans", timeout=180)
        except Failure as exc:
            say(f"compose-ha-test: teardown failed: {exc}", err=True)
            ok = False
        run(["docker", "image", "rm", c.image], timeout=120, check=False)
    figures["total"] = f"{time.monotonic() - started:.1f} s"
    for name, value in figures.items():
        log(f"figure: {name}: {value}")
    log("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
