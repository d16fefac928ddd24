"""End-to-end test of `docker compose up` on a real Docker engine (`make compose-test`).

Builds the image from the repository's own Dockerfile and docker-compose.yml, starts a master
and three slaves under a project name of its own, and then checks, from the host only through
127.0.0.1:5050 and the `cluster` CLI, what a user relies on:

  1. three slaves register, each saying in its log that it runs tasks without cgroups
     isolation (Docker mounts the cgroup hierarchy read-only in an unprivileged container);
  2. a batch of tasks with progress lines runs to FINISHED, spread over more than one slave;
  3. `cluster logs <id>` shows each task's output (the master proxies it from the slave);
  4. /vars answers with `key value` lines;
  5. `docker compose down` (keeping the volume) and `up` again keeps every task (SQLite on
     the named volume);
  6. `docker stop` of the slave running a long task makes that task LOST (or re-queued);
  7. `docker kill` (a crash) of the slave running a task with a retry left re-queues it onto
     another slave within the slave timeout.

It always ends with `docker compose down -v`, pass or fail, on SIGINT/SIGTERM/SIGHUP too.
Prints the figures (time to three slaves, batch time, image size) and exits non-zero with a
clear message on any failure. Needs a working `docker` and `docker compose` (see
scripts/docker-local.sh) and the project's CLI (.venv/bin/cluster, or --cluster PATH).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

REPO = Path(__file__).resolve().parents[1]
MASTER = "127.0.0.1:5050"
IMAGE = "libproc-cluster:latest"
PROJECT_PREFIX = "libproc-e2e-"
SLAVES = 3
BATCH = 6
BATCH_COMMAND = "for i in 1 2 3 4; do echo PROGRESS $((i*25)); sleep 0.3; done; echo done-$TASK_ID"
TERMINAL = {"FINISHED", "FAILED", "KILLED", "LOST"}

T = TypeVar("T")


class Failure(Exception):
    """A check failed: the message says which and what was seen."""


class Interrupted(BaseException):
    """A signal asked us to stop (teardown still runs)."""


def say(text: str, *, err: bool = False) -> None:
    """Print, never raising: a closed stdout (`| head`) must not skip the teardown."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def log(message: str) -> None:
    say(f"compose-test: {message}")


def fail(message: str) -> NoReturn:
    raise Failure(message)


def run(
    args: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a bound; on failure raise Failure with its output's tail."""
    try:
        proc = subprocess.run(
            list(args),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw)[-2000:]
        fail(f"{what or args[0]} did not finish within {timeout:.0f}s: {' '.join(args)}\n{out}")
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        fail(f"{what or ' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 0.3
) -> tuple[T, float]:
    """Call probe until it returns something not None; (value, seconds waited). Bounded."""
    start = time.monotonic()
    last_error = ""
    while True:
        try:
            value = probe()
        except Failure as exc:
            value, last_error = None, str(exc)
        if value is not None:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            fail(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


class Cluster:
    """The compose project and the CLI pointed at its master."""

    def __init__(self, project: str, cli: str) -> None:
        self.project = project
        self.compose_base = [
            "docker",
            "compose",
            "-p",
            project,
            "-f",
            str(REPO / "docker-compose.yml"),
            "--project-directory",
            str(REPO),
        ]
        self.cli_path = cli
        self.cli_env = dict(os.environ, CLUSTER_MASTER=MASTER, NO_COLOR="1", COLUMNS="120")
        self.cli_env.pop("CLUSTER_VERBOSE", None)

    def compose(
        self, *args: str, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [*self.compose_base, *args],
            timeout=timeout,
            check=check,
            what=f"docker compose {' '.join(args)}",
        )

    def cli(
        self, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.cli_path, *args],
            timeout=timeout,
            check=check,
            env=self.cli_env,
            what=f"cluster {' '.join(args)}",
        )

    def cli_json(self, *args: str, timeout: float = 30) -> Any:
        out = self.cli(*args, "--json", timeout=timeout).stdout
        try:
            return json.loads(out)
        except ValueError:
            fail(f"cluster {' '.join(args)} --json printed no JSON: {out[:500]!r}")

    def slaves(self) -> list[dict[str, Any]]:
        slaves: list[dict[str, Any]] = self.cli_json("slaves")["slaves"]
        return slaves

    def tasks(self) -> dict[str, dict[str, Any]]:
        return {t["id"]: t for t in self.cli_json("tasks")["tasks"]}

    def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.cli_json("task", task_id)
        return task

    def slave_containers(self) -> dict[str, str]:
        """hostname -> container id, for the running slave containers of this project."""
        ids = self.compose("ps", "-q", "slave", timeout=30).stdout.split()
        result = {}
        for cid in ids:
            host = run(
                ["docker", "inspect", "-f", "{{.Config.Hostname}}", cid], timeout=30
            ).stdout.strip()
            result[host] = cid
        return result

    def active_slaves(
        self, count: int, hostnames: set[str] | None = None
    ) -> list[dict[str, Any]] | None:
        active = [
            s
            for s in self.slaves()
            if s["state"] == "active" and (hostnames is None or s["hostname"] in hostnames)
        ]
        return active if len(active) >= count else None


def port_in_use(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def stale_projects() -> list[str]:
    """Compose projects left by an earlier run of this script that was killed outright."""
    names: set[str] = set()
    for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
        out = run(
            [
                "docker",
                *kind,
                "--filter",
                "label=com.docker.compose.project",
                "--format",
                '{{.Label "com.docker.compose.project"}}',
            ],
            timeout=30,
            check=False,
        ).stdout
        names.update(n for n in out.split() if n.startswith(PROJECT_PREFIX))
    return sorted(names)


def prune_dangling_images() -> None:
    """Remove the untagged images earlier builds of these projects left (each rebuild leaves
    one or two: both services build the same image), so repeated runs do not fill the disk."""
    dangling = run(
        [
            "docker",
            "images",
            "-q",
            "--no-trunc",
            "-f",
            "dangling=true",
            "-f",
            "label=com.docker.compose.project",
        ],
        timeout=30,
        check=False,
    ).stdout.split()
    if not dangling:
        return
    out = run(
        [
            "docker",
            "image",
            "inspect",
            "-f",
            '{{.Id}} {{index .Config.Labels "com.docker.compose.project"}}',
            *dangling,
        ],
        timeout=60,
        check=False,
    ).stdout
    ids = [
        f[0]
        for f in (line.split() for line in out.splitlines())
        if len(f) == 2 and f[1].startswith(PROJECT_PREFIX)
    ]
    if ids:
        run(["docker", "image", "rm", *ids], timeout=120, check=False)
        log(f"removed {len(ids)} untagged image(s) left by earlier builds")


def states(tasks: dict[str, dict[str, Any]], ids: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for i in ids:
        state = tasks[i]["state"] if i in tasks else "MISSING"
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# -- the scenario ------------------------------------------------------------------------------


def scenario(c: Cluster, figures: dict[str, str]) -> None:
    # 1. up --build, three slaves registered.
    log(f"docker compose -p {c.project} up -d --build --scale slave={SLAVES}")
    t_up = time.monotonic()
    c.compose("up", "-d", "--build", "--scale", f"slave={SLAVES}", timeout=900)
    up_returned = time.monotonic() - t_up
    hostnames = set(c.slave_containers())
    if len(hostnames) != SLAVES:
        fail(
            f"expected {SLAVES} slave containers, compose runs {len(hostnames)}: "
            f"{sorted(hostnames)}"
        )
    slaves, _ = wait_for(
        f"{SLAVES} active slaves at {MASTER}",
        lambda: c.active_slaves(SLAVES, hostnames),
        timeout=60,
    )
    to_slaves = time.monotonic() - t_up
    figures["up --build returned"] = f"{up_returned:.1f} s"
    figures["up start -> 3 slaves registered"] = (
        f"{to_slaves:.1f} s ({to_slaves - up_returned:.1f} s after up returned)"
    )
    log(
        f"{len(slaves)} slaves active after {to_slaves:.1f}s: "
        + ", ".join(f"{s['id']}@{s['hostname']}" for s in slaves)
    )
    slave_log = c.compose("logs", "--no-color", "slave", timeout=60).stdout
    warned = [line for line in slave_log.splitlines() if "cgroups cannot be used here" in line]
    if len(warned) != SLAVES or slave_log.count("isolation=none") < SLAVES:
        fail(f"expected each of {SLAVES} slaves to say once that it runs without cgroups "
             f"isolation; they said: {warned or slave_log[-2000:]!r}")
    log(f"isolation: every slave runs tasks without cgroups ({warned[0].split(': ')[-1][:90]})")

    # 2. A batch with progress lines: all FINISHED, on more than one slave.
    log(f"submitting {BATCH} tasks: {BATCH_COMMAND}")
    t_batch = time.monotonic()
    ids = [
        str(i)
        for i in c.cli_json("submit", "--count", str(BATCH), "--name", "e2e", BATCH_COMMAND)["ids"]
    ]
    if len(ids) != BATCH:
        fail(f"submit returned {len(ids)} ids, expected {BATCH}: {ids}")
    partial_progress: set[str] = set()

    def batch_done() -> dict[str, dict[str, Any]] | None:
        tasks = c.tasks()
        for i in ids:
            if i in tasks and 0 < (tasks[i].get("progress") or 0) < 1:
                partial_progress.add(i)
        return tasks if all(i in tasks and tasks[i]["state"] in TERMINAL for i in ids) else None

    tasks, _ = wait_for(f"the {BATCH} tasks to end", batch_done, timeout=90, interval=0.2)
    batch_seconds = time.monotonic() - t_batch
    bad = {
        i: (tasks[i]["state"], tasks[i]["message"]) for i in ids if tasks[i]["state"] != "FINISHED"
    }
    if bad:
        fail(f"batch tasks not FINISHED: {bad}")
    not_full = {i: tasks[i]["progress"] for i in ids if tasks[i]["progress"] != 1.0}
    if not_full:
        fail(f"FINISHED tasks whose progress is not 1.0: {not_full}")
    used = {tasks[i]["slave_id"] for i in ids}
    if len(used) < 2:
        fail(f"all {BATCH} tasks ran on one slave ({used}); expected the scheduler to spread them")
    figures["batch of 6 (1.2 s each): submit -> all FINISHED"] = f"{batch_seconds:.1f} s"
    log(
        f"batch: {BATCH} FINISHED in {batch_seconds:.1f}s on {len(used)} slaves; "
        f"progress between 0 and 100% seen for {len(partial_progress)}/{BATCH} tasks while running"
    )

    # 3. Logs through the master.
    for i in ids:
        out = c.cli("logs", i).stdout
        if "PROGRESS 100" not in out or f"done-{i}" not in out.split():
            fail(
                f"cluster logs {i} lacks the task's output (PROGRESS 100, done-{i}): {out[:300]!r}"
            )
    log(f"cluster logs: all {BATCH} tasks' stdout served through the master")

    # 4. /vars.
    with urllib.request.urlopen(f"http://{MASTER}/vars", timeout=10) as resp:
        body = resp.read().decode()
    lines = [line for line in body.splitlines() if line.strip()]
    malformed = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9_.:/-]+ \S.*", line)]
    if not lines or malformed:
        fail(f"/vars is not `key value` lines: {malformed[:5] or body[:200]!r}")
    values = dict(line.split(" ", 1) for line in lines)
    if values.get("slaves_active") != str(SLAVES):
        fail(f"/vars slaves_active is {values.get('slaves_active')!r}, expected {SLAVES}")
    log(f"/vars: {len(lines)} `key value` lines, slaves_active {values['slaves_active']}")

    # 5. down (volume kept), up again: every task still there.
    log("docker compose down (keeping the volume), then up -d again")
    t_restart = time.monotonic()
    c.compose("down", "-t", "15", timeout=180)
    c.compose("up", "-d", "--scale", f"slave={SLAVES}", timeout=180)
    after, _ = wait_for("the restarted master to list the tasks", c.tasks, timeout=60)
    missing = [i for i in ids if i not in after]
    changed = {i: after[i]["state"] for i in ids if i in after and after[i]["state"] != "FINISHED"}
    if missing or changed:
        fail(f"after down/up: tasks missing {missing}, not FINISHED {changed}")
    hostnames = set(c.slave_containers())
    wait_for(
        f"{SLAVES} new slaves to register", lambda: c.active_slaves(SLAVES, hostnames), timeout=60
    )
    restart_seconds = time.monotonic() - t_restart
    figures["down + up -> tasks listed and 3 slaves back"] = f"{restart_seconds:.1f} s"
    log(
        f"after down/up: all {BATCH} tasks still FINISHED; {SLAVES} slaves back in "
        f"{restart_seconds:.1f}s"
    )

    # 6. docker stop the slave running a long task: the task is LOST (or re-queued).
    lost_seconds = lose_slave(c, "stop", retries=0)
    figures["docker stop slave -> task LOST/re-queued"] = f"{lost_seconds:.1f} s"

    # 7. docker kill (a crash) of the slave running a task with a retry: re-queued elsewhere.
    requeue_seconds = lose_slave(c, "kill", retries=1)
    figures["docker kill slave -> task re-queued on another slave"] = f"{requeue_seconds:.1f} s"


def lose_slave(c: Cluster, how: str, retries: int) -> float:
    """Run `sleep 300`, `docker <how>` its slave's container; seconds until the master reacts."""
    (task_id,) = c.cli_json(
        "submit", "--name", f"long-{how}", "--retries", str(retries), "sleep 300"
    )["ids"]
    task_id = str(task_id)

    def is_running() -> dict[str, Any] | None:
        t = c.task(task_id)
        return t if t["state"] == "RUNNING" else None

    running, _ = wait_for(f"task {task_id} (sleep 300) to run", is_running, timeout=30)
    slave_id = running["slave_id"]
    by_id = {s["id"]: s for s in c.slaves()}
    if slave_id not in by_id:
        fail(f"task {task_id} runs on slave {slave_id}, which `cluster slaves` does not list")
    hostname = by_id[slave_id]["hostname"]
    containers = c.slave_containers()
    if hostname not in containers:
        fail(
            f"slave {slave_id} has hostname {hostname}; no slave container has it: "
            f"{sorted(containers)}"
        )
    cid = containers[hostname]
    log(f"task {task_id} runs on slave {slave_id} (container {cid[:12]}); docker {how} it")
    run(["docker", how, *(["-t", "15"] if how == "stop" else []), cid], timeout=60)

    def reacted() -> dict[str, Any] | None:
        t = c.task(task_id)
        if t["state"] == "LOST" and retries == 0:
            return t
        if (
            retries
            and t["state"] in {"PENDING", "STAGING", "RUNNING"}
            and t["slave_id"] != slave_id
        ):
            return t
        if t["state"] in TERMINAL and t["state"] != "LOST":
            fail(
                f"task {task_id} became {t['state']} ({t['message']}) after docker {how} "
                "of its slave"
            )
        return None

    # The master's default slave timeout is 5 s (heartbeats every 1 s); 60 s bounds it.
    after, seconds = wait_for(
        f"task {task_id} to be LOST or re-queued after docker {how}",
        reacted,
        timeout=60,
        interval=0.2,
    )
    log(
        f"task {task_id}: {after['state']} on {after['slave_id'] or '-'} "
        f"(attempt {after['attempt']}, {after['message'] or 'no message'}) "
        f"{seconds:.1f}s after docker {how}"
    )
    if after["state"] != "LOST":  # leave nothing running on the remaining slaves
        c.cli("kill", task_id, check=False)
    return seconds


# -- main --------------------------------------------------------------------------------------


def not_run(message: str) -> NoReturn:
    ci = os.environ.get("CI", "").lower() == "true"
    say(f"compose-test {'FAILED (CI=true)' if ci else 'NOT RUN'}: {message}", err=True)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cluster",
        default=str(REPO / ".venv" / "bin" / "cluster"),
        help="the cluster CLI to drive (default: .venv/bin/cluster)",
    )
    parser.add_argument(
        "--project",
        default=f"{PROJECT_PREFIX}{os.getpid()}",
        help="compose project name (default: libproc-e2e-<pid>)",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    cli = args.cluster if os.path.exists(args.cluster) else shutil.which("cluster")
    if not cli:
        not_run(f"no cluster CLI at {args.cluster} (run `make install`)")
    if not shutil.which("docker"):
        not_run("no docker client (run scripts/docker-local.sh)")
    if (
        subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=30).returncode
        != 0
    ):
        not_run("dockerd does not answer `docker info` (run scripts/docker-local.sh)")
    if (
        subprocess.run(
            ["docker", "compose", "version"], check=False, capture_output=True, timeout=30
        ).returncode
        != 0
    ):
        not_run("no `docker compose` plugin (run scripts/docker-local.sh)")

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    c = Cluster(args.project, cli)
    figures: dict[str, str] = {}
    ok = False
    try:
        for stale in stale_projects():
            log(f"removing compose project {stale} left by an earlier interrupted run")
            Cluster(stale, cli).compose(
                "down", "-v", "-t", "5", "--remove-orphans", timeout=120, check=False
            )
        if port_in_use(MASTER):
            fail(
                f"{MASTER} is already in use (a `make run` cluster?); the compose file "
                "publishes the master there"
            )
        scenario(c, figures)
        size = run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE], timeout=30
        ).stdout.strip()
        figures["image size"] = f"{int(size) / 1e6:.0f} MB ({size} bytes)"
        ok = True
    except Failure as exc:
        say(f"compose-test FAILED: {exc}", err=True)
        try:
            logs = c.compose("logs", "--no-color", "--tail", "40", timeout=60, check=False)
            say("---- docker compose logs (last 40 lines per container) ----", err=True)
            say((logs.stdout + logs.stderr)[-12000:], err=True)
        except Failure as more:
            say(f"(no compose logs: {more})", err=True)
    except Exception:  # noqa: BLE001 -- a bug here, or an unexpected answer: still a failure, still torn down
        say(f"compose-test FAILED with an error:\n{traceback.format_exc()}", err=True)
    except Interrupted as exc:
        say(f"compose-test INTERRUPTED by {exc}; tearing down", err=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the teardown finish
        log(f"docker compose -p {c.project} down -v")
        try:
            c.compose("down", "-v", "-t", "5", "--remove-orphans", timeout=180)
        except Failure as exc:
            say(f"compose-test: teardown failed: {exc}", err=True)
            ok = False
        try:
            prune_dangling_images()
        except Failure as exc:
            say(f"compose-test: could not prune old images: {exc}", err=True)
    figures["total"] = f"{time.monotonic() - started:.1f} s"
    for name, value in figures.items():
        log(f"figure: {name}: {value}")
    if ok:
        log("PASS")
        return 0
    say("compose-test: FAIL", err=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
