"""Attempts, usage and retries end to end: a real master and real slaves (OS processes),
driven through the `cluster` command as a user would."""

from __future__ import annotations

import json
from pathlib import Path

from cluster_harness import Cluster, cluster  # noqa: F401 - the fixture
from test_cli_support import assert_one_error_line, run_cli, run_json
from test_isolation_kernel import make_isolator

ECHO_AND_FAIL = "echo out-$TASK_ATTEMPT; echo err-$TASK_ATTEMPT >&2; exit 1"


def _master(cluster: Cluster) -> str:
    return f"127.0.0.1:{cluster.master_port}"


def test_retries_back_off_and_every_attempt_keeps_its_exit_code_and_output(
        cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=2)
    master = _master(cluster)
    [tid] = run_json("submit", "--retries", "2", "--retry-delay", "1", ECHO_AND_FAIL,
                     master=master)["ids"]
    waited = run_cli("wait", tid, "--timeout", "60", master=master, timeout=90)
    assert waited.returncode == 1, waited.stdout + waited.stderr  # it FAILED in the end

    task = run_json("task", tid, master=master)
    assert (task["state"], task["exit_code"], task["attempt"]) == ("FAILED", 1, 3)
    attempts = task["attempts"]
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in attempts] == [
        (1, "FAILED", 1), (2, "FAILED", 1), (3, "FAILED", 1)]
    for a in attempts:
        assert a["slave_id"] == task["slave_id"]  # the only slave: back to it
        assert a["launched_at"] <= a["started_at"] <= a["finished_at"], a
        assert a["usage"] is not None and a["usage"]["source"], a  # final figures
    # Spaced by the backoff: 1 s, then 2 s (the 3 attempts of the issue ran in 0.24 s).
    gaps = [attempts[i + 1]["launched_at"] - attempts[i]["finished_at"] for i in range(2)]
    assert 1.0 <= gaps[0] < 6.0 and 2.0 <= gaps[1] < 7.0, gaps
    listed = {t["id"]: t for t in run_json("tasks", master=master)["tasks"]}[tid]
    assert listed["attempts"] == 3 and listed["retry_delay"] == 1.0

    first = run_cli("logs", tid, "--attempt", "1", master=master)
    assert (first.returncode, first.stdout) == (0, "out-1\n"), first.stderr
    second = run_cli("logs", tid, "--attempt", "2", "--stderr", master=master)
    assert (second.returncode, second.stdout) == (0, "err-2\n"), second.stderr
    assert run_cli("logs", tid, master=master).stdout == "out-3\n"  # the latest by default
    assert run_cli("logs", tid, "--attempt", "1", "--tail", "1", master=master).stdout == (
        "out-1\n")
    missing = run_cli("logs", tid, "--attempt", "4", master=master)
    assert_one_error_line(missing, "there is no attempt 4")
    assert run_cli("logs", tid, "--attempt", "0", master=master).returncode == 2

    shown = run_cli("task", tid, master=master)
    text = " ".join(shown.stdout.split())
    assert shown.returncode == 0 and "ATTEMPT SLAVE STATE EXIT" in text, shown.stdout
    assert "3 (retries allowed: 2, 1s apart, doubling)" in text
    assert text.count("FAILED 1 ") >= 3 and "exited with code 1" in text
    assert "cpu-s" in text and "usage" in text


def test_a_task_waiting_for_its_retry_is_pending_and_says_until_when(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_slave(cpus=2)
    master = _master(cluster)
    [tid] = run_json("submit", "--retries", "1", "--retry-delay", "30", "exit 7",
                     master=master)["ids"]
    api = cluster.api
    task = api.wait_task(tid, lambda t: t["state"] == "PENDING" and t["attempt"] == 1,
                         timeout=20, what="the first attempt to fail")
    [attempt] = task["attempts"]
    assert (attempt["state"], attempt["exit_code"]) == ("FAILED", 7)
    assert 29.0 < task["retry_at"] - attempt["finished_at"] <= 30.0 + 1e-6
    assert task["pending_reason"].startswith("retry backoff: attempt 2 of 2 starts in")
    shown = " ".join(run_cli("task", tid, master=master).stdout.split())
    assert "waiting retry backoff: attempt 2 of 2 starts in" in shown, shown
    assert "after attempt 1 FAILED (exit code 7)" in shown and "retry at" in shown
    assert run_cli("kill", tid, master=master).returncode == 0  # no need to wait 30 s
    killed = api.wait_state(tid, "KILLED", timeout=10)
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in killed["attempts"]] == [
        (1, "FAILED", 7)]
    assert killed["retry_at"] is None and killed["pending_reason"] is None


def test_submit_refuses_a_bad_retry_delay_before_asking_the_master() -> None:
    result = run_cli("submit", "--retry-delay", "-1", "true", master="127.0.0.1:9")
    assert_one_error_line(result, "--retry-delay must be from 0 to 3600 seconds")
    assert result.returncode == 2


def test_each_slave_shows_how_it_isolates_tasks(cluster: Cluster) -> None:
    cluster.start_master()
    plain = cluster.start_slave(cpus=1, isolation="none")
    [s] = cluster.api.slaves()
    assert s["pid"].endswith(f":{plain.port}")
    assert (s["isolation"], s["cgroup_version"], s["cpu_limit"]) == ("none", None, "soft")
    assert s["task_pids_max"] == 1024
    listed = run_cli("slaves", master=_master(cluster))
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[-1] == "ISOLATION" and row.split()[-1] == "none"


def test_a_memory_limit_kill_shows_its_message_and_usage_in_the_attempt(
        cluster: Cluster, tmp_path: Path) -> None:
    make_isolator(tmp_path / "probe").close()  # NOT RUN / FAIL here when there are no cgroups
    cluster.start_master()
    cluster.start_slave(cpus=2, mem=1024, isolation="cgroups")
    [slave] = cluster.api.slaves()
    assert slave["isolation"] == "cgroups" and slave["cgroup_version"] in ("v1", "v2")
    tid = cluster.api.submit_one(
        "python3 -c 'x = b\"1\" * (300 * 1024 * 1024); print(len(x))'", mem=64)
    task = cluster.api.wait_state(tid, "FAILED", timeout=60)
    assert task["message"] == "memory limit exceeded (64 MiB)"
    [attempt] = task["attempts"]
    assert attempt["message"] == "memory limit exceeded (64 MiB)"
    usage = attempt["usage"]
    assert usage == task["usage"]
    assert usage["source"] == f"cgroups {slave['cgroup_version']}"
    assert 40.0 <= usage["mem_peak_mib"] <= 64.5, usage  # it reached its limit, not past
    assert usage["cpu_seconds"] > 0
    shown = run_cli("task", tid, master=_master(cluster)).stdout
    assert "memory limit exceeded (64 MiB)" in " ".join(shown.split())
    assert json.dumps(task, allow_nan=False)
