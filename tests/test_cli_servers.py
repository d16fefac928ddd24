"""`cluster master` and `cluster slave` configured by environment variables alone, as
docker-compose.yml configures them; flags beat CLUSTER_*, which beat LIBPROCESS_*."""

from __future__ import annotations

from pathlib import Path

from test_cli_support import (
    CLUSTER,
    Running,
    clean_env,
    free_port,
    run_json,
    spawn,
    stop,
    wait_until,
)


def _listening(proc: Running) -> bool:
    assert proc.proc.poll() is None, (proc.stdout_text(), proc.stderr_text())
    return "listening" in proc.stdout_text() or "registering" in proc.stdout_text()


def test_servers_read_every_option_from_the_environment(tmp_path: Path) -> None:
    port, slave_port = free_port(), free_port()
    db = tmp_path / "env.db"
    master = spawn(
        [*CLUSTER, "master"],
        clean_env(CLUSTER_HOST="127.0.0.1", CLUSTER_PORT=str(port), CLUSTER_DB=str(db),
                  CLUSTER_ADVERTISE_HOST="127.0.0.1", LIBPROCESS_PORT=str(free_port())),
    )  # fmt: skip
    slave = None
    try:
        wait_until(lambda: _listening(master), 30, "the master to listen")
        assert (
            f"listening on 127.0.0.1:{port}" in master.stdout_text()
        )  # CLUSTER_ beats LIBPROCESS_
        slave = spawn(
            [*CLUSTER, "slave"],
            clean_env(CLUSTER_MASTER=f"127.0.0.1:{port}", CLUSTER_HOST="127.0.0.1",
                      LIBPROCESS_PORT=str(slave_port), CLUSTER_CPUS="3", CLUSTER_MEM="300",
                      CLUSTER_WORK_DIR=str(tmp_path / "work"),
                      CLUSTER_ADVERTISE_HOST="127.0.0.1"),
        )  # fmt: skip
        address = f"127.0.0.1:{port}"

        def one_slave() -> list[dict[str, object]]:
            found: list[dict[str, object]] = run_json("slaves", master=address)["slaves"]
            return found

        [info] = wait_until(one_slave, 30, "the slave to register")
        assert info["pid"] == f"slave(1)@127.0.0.1:{slave_port}"  # LIBPROCESS_PORT, no flag
        assert (info["cpus"], info["mem"]) == (3.0, 300.0)
        assert db.is_file()
        assert (tmp_path / "work" / "slave.json").is_file()
    finally:
        if slave is not None:
            stop(slave)
        stop(master)
