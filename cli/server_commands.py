"""`cluster master`, `cluster slave`, `cluster up`: the typer faces of cli/servers.py and
cli/up.py. Registered on the app by cli/main.py; the work is imported only when run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.client import DEFAULT_MASTER
from cli.options import (
    AdvertiseHostOpt,
    AdvertisePortOpt,
    HostOpt,
    MasterOpt,
    MasterSecretOpt,
    SlaveSecretOpt,
    VerboseOpt,
    duration,
    env_option,
    examples,
    listen_port,
    percentage,
    positive,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add master, slave and up to `app`, in that order."""
    app.command(epilog=MASTER_EXAMPLES)(master)
    app.command(epilog=SLAVE_EXAMPLES)(slave)
    app.command(epilog=UP_EXAMPLES)(up)


MASTER_EXAMPLES = examples(
    ("cluster master", "127.0.0.1:5050, ./cluster.db"),
    ("cluster master --host 0.0.0.0 --secret s3cret --db /var/lib/cluster.db", "for a network"),
    ("CLUSTER_PORT=6000 cluster master -v", "INFO logs on stderr"),
    ("cluster master --zk zk://10.0.0.2:2181/cluster --db postgresql+psycopg://u:p@db/cluster "
     "--host 0.0.0.0 --advertise-host 10.0.0.5 --secret s3cret", "one of several masters"),
)


def master(
    host: HostOpt = None,
    port: Annotated[int | None, listen_port(5050)] = None,
    db: Annotated[
        str, typer.Option(envvar="CLUSTER_DB", help="SQLite file, or any SQLAlchemy URL.")
    ] = "cluster.db",
    zk: Annotated[
        str | None,
        env_option(
            "CLUSTER_ZK",
            "Contend for leadership with the other masters under this ZooKeeper path, "
            "zk://HOST:PORT\\[,HOST:PORT...]/PATH (give them all one --db, e.g. PostgreSQL) "
            "\\[default: lead alone].",
            metavar="URL",
        ),
    ] = None,
    zk_session_timeout: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=600.0,
            help="Seconds ZooKeeper waits before it takes leadership from a silent master.",
        ),
    ] = 5.0,
    advertise_host: AdvertiseHostOpt = None,
    advertise_port: AdvertisePortOpt = None,
    secret: MasterSecretOpt = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            min=0.01, show_default=False, help="Seconds between pings to each slave \\[default: 1]."
        ),
    ] = None,
    slave_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            show_default=False,
            help="A slave silent this long is lost and its tasks LOST \\[default: 5].",
        ),
    ] = None,
    max_completed_tasks: Annotated[
        int,
        typer.Option(
            envvar="CLUSTER_MAX_COMPLETED_TASKS",
            min=0,
            help="Ended tasks kept in memory; older ones are read from the database.",
        ),
    ] = 10_000,
    task_retention: Annotated[
        float | None,
        typer.Option(
            parser=duration,
            metavar="DURATION",
            envvar="CLUSTER_TASK_RETENTION",
            show_default=False,
            help="Delete tasks that ended longer ago than this (90m, 12h, 7d, 2w) from the "
            r"database, in the background \[default: keep them].",
        ),
    ] = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Run the master: accepts tasks, schedules them onto slaves, stores state in SQLite.

    With --zk, one of several masters: the one ZooKeeper elects leads, the others redirect
    every request to it (307) and take over when it goes."""
    from cli.servers import bind_host, bind_port, serve_master

    serve_master(
        host=bind_host(host),
        port=bind_port(port, 5050),
        db=db,
        zk=zk or None,
        zk_session_timeout=zk_session_timeout,
        advertise_host=advertise_host or None,
        advertise_port=advertise_port,
        secret=secret or None,
        verbose=verbose,
        heartbeat_interval=heartbeat_interval,
        slave_timeout=slave_timeout,
        max_completed_tasks=max_completed_tasks,
        task_retention=task_retention,
    )


SLAVE_EXAMPLES = examples(
    ("cluster slave --master 127.0.0.1:5050", "sandboxes in ./slave-work"),
    "cluster slave --master 10.0.0.5:5050 --host 0.0.0.0 --advertise-host 10.0.0.7 "
    "--cpus 8 --mem 16000",
    ("CLUSTER_MASTER=master:5050 CLUSTER_WORK_DIR=/work cluster slave", "from the environment"),
    ("cluster slave --master 127.0.0.1:5050 --isolation cgroups --cpu-limit hard "
     "--task-pids-max 256", "enforce cpus, mem and a process limit"),
    ("cluster slave --master 127.0.0.1:5050 --gc-delay 2h --gc-disk-watermark 80%",
     "collect sooner"),
    note="A task's files are in WORK_DIR/sandboxes/<task id>@<attempt>/ (stdout, stderr) "
    "until --gc-delay after it ended; WORK_DIR/slave.json names the slave id that "
    "'cluster slaves' shows.",
)


def slave(
    master: MasterOpt = DEFAULT_MASTER,
    host: HostOpt = None,
    port: Annotated[int | None, listen_port(5051)] = None,
    cpus: Annotated[
        float | None, env_option("CLUSTER_CPUS", "CPUs to offer \\[default: this machine's count].")
    ] = None,
    mem: Annotated[
        float | None,
        env_option("CLUSTER_MEM", "Memory to offer, MiB \\[default: this machine's, less 1 GiB]."),
    ] = None,
    work_dir: Annotated[
        str, typer.Option(envvar="CLUSTER_WORK_DIR", help="Where task sandboxes and logs go.")
    ] = "slave-work",
    advertise_host: AdvertiseHostOpt = None,
    advertise_port: AdvertisePortOpt = None,
    secret: SlaveSecretOpt = None,
    progress_interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between progress reports to the master.")
    ] = 1.0,
    isolation: Annotated[
        str,
        typer.Option(
            envvar="CLUSTER_ISOLATION",
            help="auto: cgroups when this slave can create them, else none (one warning); "
            "cgroups: fail without them; none: cpus and mem are bookkeeping only.",
        ),
    ] = "auto",
    cpu_limit: Annotated[
        str,
        typer.Option(
            help="soft: CPU shares in proportion to cpus (idle CPU is used); "
            "hard: a CFS quota of cpus x 100 ms per 100 ms.",
        ),
    ] = "soft",
    task_pids_max: Annotated[
        int,
        typer.Option(min=0, help="Processes one task may have at once (0: no limit)."),
    ] = 1024,
    gc_delay: Annotated[
        float,
        typer.Option(
            parser=duration,
            metavar="DURATION",
            help="Delete an ended task's sandbox (its stdout, stderr, files) this long after "
            "it ended: 90s, 30m, 12h, 1d, 2w.",
        ),
    ] = "1d",  # type: ignore[assignment]
    gc_disk_watermark: Annotated[
        float,
        typer.Option(
            parser=percentage,
            metavar="PERCENT",
            help="While the work dir's disk (blocks or inodes) is fuller than this, delete "
            "ended sandboxes sooner, oldest first.",
        ),
    ] = "90%",  # type: ignore[assignment]
    gc_interval: Annotated[
        float,
        typer.Option(
            parser=duration,
            metavar="DURATION",
            help="How often the disk is checked against --gc-disk-watermark.",
        ),
    ] = "1m",  # type: ignore[assignment]
    verbose: VerboseOpt = 0,
) -> None:
    """Run a slave: registers with the master and runs the tasks it is given."""
    from cli.servers import bind_host, bind_port, detect_resources, serve_slave

    detected_cpus, detected_mem = detect_resources()
    positive("--cpus", cpus)
    positive("--mem", mem)
    choice("--isolation", isolation, ("auto", "cgroups", "none"))
    choice("--cpu-limit", cpu_limit, ("soft", "hard"))
    serve_slave(
        master=master,
        host=bind_host(host),
        port=bind_port(port, 5051),
        cpus=cpus if cpus is not None else detected_cpus,
        mem=mem if mem is not None else detected_mem,
        work_dir=work_dir,
        advertise_host=advertise_host or None,
        advertise_port=advertise_port,
        secret=secret or None,
        verbose=verbose,
        progress_interval=progress_interval,
        isolation=isolation,
        cpu_limit=cpu_limit,
        task_pids_max=task_pids_max,
        gc_delay=gc_delay,
        gc_disk_watermark=gc_disk_watermark,
        gc_interval=max(gc_interval, 0.1),
    )


def choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    """A bad choice is one clear line and exit code 2, as typer's own usage errors."""
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}",
                                 param_hint=flag)


UP_EXAMPLES = examples(
    ("cluster up", "master on 127.0.0.1:5050 + 2 slaves"),
    ("cluster up --slaves 4 --port 6000 --work-dir /tmp/mycluster", "more, elsewhere"),
    ("cluster up -v", "every process logs to this terminal"),
    note="WORK_DIR/slaves/<slave id> links to each slave's directory (slave-1, ...), whose "
    "sandboxes/<task id>@<attempt>/ hold a task's stdout and stderr.",
)


def up(
    slaves: Annotated[int, typer.Option(min=0, max=64, help="How many slaves to start.")] = 2,
    port: Annotated[
        int,
        typer.Option(
            envvar="CLUSTER_PORT", min=0, max=65535, help="The master's port (0: any free one)."
        ),
    ] = 5050,
    host: Annotated[
        str, typer.Option(envvar="CLUSTER_HOST", help="Address the master binds.")
    ] = "127.0.0.1",
    work_dir: Annotated[
        Path,
        typer.Option(
            envvar="CLUSTER_WORK_DIR",
            file_okay=False,
            help="Holds the database, each slave's sandboxes and the logs.",
        ),
    ] = Path(".cluster"),
    db: Annotated[
        str | None,
        env_option("CLUSTER_DB", "SQLite file or SQLAlchemy URL \\[default: WORK_DIR/cluster.db]."),
    ] = None,
    cpus: Annotated[
        float | None,
        env_option(
            "CLUSTER_CPUS",
            "CPUs each slave offers \\[default: this machine's, shared among the slaves].",
        ),
    ] = None,
    mem: Annotated[
        float | None,
        env_option(
            "CLUSTER_MEM",
            "MiB each slave offers \\[default: this machine's, shared among the slaves].",
        ),
    ] = None,
    secret: MasterSecretOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Start a master and N slaves on this machine, each its own process; Ctrl-C stops all."""
    from cli.servers import detect_resources, warn_if_exposed
    from cli.up import UpConfig, run_up

    positive("--cpus", cpus)
    positive("--mem", mem)
    all_cpus, all_mem = detect_resources()
    share = max(slaves, 1)
    warn_if_exposed("master", host, port, secret)
    code = run_up(
        UpConfig(
            slaves=slaves,
            host=host,
            port=port,
            work_dir=work_dir,
            db=db,
            cpus=cpus if cpus is not None else max(1.0, float(int(all_cpus / share))),
            mem=mem if mem is not None else max(256.0, float(int(all_mem / share))),
            secret=secret or None,
            verbose=verbose,
        )
    )
    raise typer.Exit(code)
