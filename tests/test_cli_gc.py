"""Through the real `cluster` commands (a master and a slave, each its own OS process, on
loopback): `--gc-delay` removes an ended task's sandbox, `cluster logs` then says so in one
line, and the slave's `/vars` and `/metrics` count it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from test_cli_support import (
    CLUSTER,
    Running,
    assert_one_error_line,
    clean_env,
    free_port,
    run_cli,
    spawn,
    stop,
    wait_until,
)


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_logs_of_a_collected_task_say_so_in_one_line(tmp_path: Path) -> None:
    port, slave_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    master = spawn([*CLUSTER, "master", "--port", str(port), "--db", str(tmp_path / "c.db")],
                   clean_env())
    slave: Running | None = None
    try:
        slave = spawn([*CLUSTER, "slave", "--master", address, "--port", str(slave_port),
                       "--work-dir", str(tmp_path / "work"), "--isolation", "none",
                       "--gc-delay", "3s", "--gc-interval", "1s"], clean_env())
        wait_until(lambda: '"pid"' in run_cli("slaves", "--json", master=address).stdout,
                   30, "the slave to register")
        done = run_cli("submit", "echo hello from the sandbox", "--wait", master=address,
                       timeout=60)
        assert done.returncode == 0, done.stderr
        logs = run_cli("logs", "1", master=address)
        assert (logs.returncode, logs.stdout) == (0, "hello from the sandbox\n")
        sandbox = tmp_path / "work" / "sandboxes" / "1@1"
        wait_until(lambda: not sandbox.exists(), 30, "the sandbox to be collected")
        for args in (("logs", "1"), ("logs", "1", "-f"), ("logs", "1", "--stderr")):
            line = assert_one_error_line(run_cli(*args, master=address),
                                         "garbage-collected", "--gc-delay", "3s")
            assert "task '1' attempt 1" in line
        # the master passes the slave's answer on as it is: 410 with the reason
        status, ctype, body = _get(f"http://{address}/master/tasks/1/logs")
        assert status == 410 and ctype.startswith("application/json")
        assert json.loads(body)["collected"] is True
        base = f"http://127.0.0.1:{slave_port}"
        status, _, text = _get(f"{base}/slave(1)/vars")
        fields = dict(line.split(" ", 1) for line in text.splitlines())
        assert fields["gc_sandboxes_collected"] == "1" and fields["gc_delay_secs"] == "3"
        status, ctype, text = _get(f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        [sample] = [s for s in families["slave_gc_sandboxes_collected"].samples
                    if s.name.endswith("_total") and s.labels.get("reason") == "delay"]
        assert sample.value == 1
    finally:
        if slave is not None:
            stop(slave)
        stop(master)


def test_bad_gc_options_are_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    for args, words in (
        (("--gc-delay", "soon"), ("--gc-delay", "not a duration")),
        (("--gc-delay", "-5m"), ("--gc-delay", "0 or more")),
        (("--gc-disk-watermark", "0.9"), ("--gc-disk-watermark", "did you mean 90%")),
        (("--gc-disk-watermark", "120%"), ("--gc-disk-watermark", "1% to 100%")),
    ):
        result = run_cli("slave", "--master", "127.0.0.1:1", "--work-dir",
                         str(tmp_path / "w"), *args)
        assert result.returncode == 2, result
        assert_one_error_line(result, *words)
