"""`cluster`: run a master, slaves or a whole local cluster, and use it.

Names and options are a contract (DESIGN.md §3.4). Every failure the user can cause (a
master that is not reachable, an unknown task id, bad resources, a busy port) ends as one
`error: ...` line on stderr and exit code 1 (2 for a usage error), never a traceback: the
boundary is `main()`. Heavy modules (rich tables, aiohttp, SQLAlchemy) are imported inside
the commands, so `cluster --help` starts fast.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cli import server_commands
from cli.client import DEFAULT_MASTER, ClusterError
from cli.options import JsonOpt, MasterOpt, SecretOpt, fail, positive

try:  # typer >= 0.2x vendors click as typer._click; older releases depend on click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        exceptions as click_exceptions,
    )

if TYPE_CHECKING:
    from cli.client import MasterClient

__all__ = ["app", "main"]

app = typer.Typer(
    name="cluster",
    help="A small Mesos-like cluster built on libproc: a master schedules shell commands "
    "onto slaves.\n\nStart a local cluster with 'cluster up', then 'cluster submit'.",
    epilog="Quick start:\n\n"
    "  cluster up                                  # in one terminal\n\n"
    "  cluster submit --wait 'echo hello'          # in another\n\n"
    "  cluster tasks; cluster logs 1\n\n"
    "Client commands find the master with --master or CLUSTER_MASTER (default "
    f"{DEFAULT_MASTER}). 'cluster COMMAND --help' shows each command's options and examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

TERMINAL = ("FINISHED", "FAILED", "KILLED", "LOST")

server_commands.register(app)  # master, slave, up


def _client(master: str, secret: str | None, timeout: float = 10.0) -> MasterClient:
    from cli.client import MasterClient

    return MasterClient(master, secret, timeout=timeout)


def _is_tty() -> bool:
    from cli.render import stderr

    return bool(stderr.is_terminal)


# -- clients --------------------------------------------------------------------------------


@app.command(
    epilog="Examples:\n\n"
    "  cluster submit 'echo hello'\n\n"
    "  cluster submit --cpus 1 --mem 512 --name build 'make -j1 all'\n\n"
    "  cluster submit --count 5 --wait 'for i in $(seq 10); do echo PROGRESS "
    "$((i*10)); sleep 1; done'\n\n"
    "  cluster submit --json 'sleep 60' | jq -r '.ids[]'\n\n"
    "A task reports progress by printing 'PROGRESS <percent>' lines on stdout."
)
def submit(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND",
            show_default=False,
            help="Shell command to run (several words are joined with spaces, as ssh does).",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="A name to show \\[default: the task id]; with --count N the "
            "tasks are NAME-1 ... NAME-N.",
        ),
    ] = None,
    cpus: Annotated[
        float | None, typer.Option(show_default=False, help="CPUs the task needs \\[default: 0.1].")
    ] = None,
    mem: Annotated[
        float | None,
        typer.Option(show_default=False, help="Memory the task needs, MiB \\[default: 32]."),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", help="Submit this many copies of the task.")
    ] = 1,
    timeout: Annotated[
        float | None,
        typer.Option(show_default=False, help="Kill the task (FAILED) after this many seconds."),
    ] = None,
    retries: Annotated[
        int, typer.Option(help="Launch again up to this many times if it FAILS or is LOST.")
    ] = 0,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Show live progress until every task ends; exit 0 only if all FINISHED.",
        ),
    ] = False,
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Submit a shell command as a task (or --count N of them)."""
    text = " ".join(command)
    if not text.strip():
        fail("COMMAND is empty: give a shell command, e.g. cluster submit 'echo hello'")
    positive("--cpus", cpus)
    positive("--mem", mem)
    positive("--timeout", timeout)
    if not 1 <= count <= 10_000:
        fail(f"--count must be between 1 and 10000, got {count}")
    if retries < 0:
        fail(f"--retries must be 0 or more, got {retries}")
    specs: list[dict[str, Any]] = []
    for i in range(count):
        spec: dict[str, Any] = {"command": text, "retries": retries}
        if name:
            spec["name"] = name if count == 1 else f"{name}-{i + 1}"
        for key, value in (("cpus", cpus), ("mem", mem), ("timeout", timeout)):
            if value is not None:
                spec[key] = value
        specs.append(spec)
    client = _client(master, secret)
    ids = client.submit(specs)
    if not wait:
        if json_output:
            from cli.render import print_json

            print_json({"ids": ids})
        else:
            what = f"task {ids[0]}" if len(ids) == 1 else f"{len(ids)} tasks: {' '.join(ids)}"
            print(
                f"submitted {what}\n  follow: cluster wait {' '.join(ids[:10])}"
                + (" ..." if len(ids) > 10 else "")
            )
        return
    if not json_output:
        print(
            f"submitted {len(ids)} task(s): {' '.join(ids[:20])}"
            + (" ..." if len(ids) > 20 else ""),
            flush=True,
        )
    _wait_and_report(client, ids, json_output, None)


def _wait_and_report(
    client: MasterClient, ids: list[str], json_output: bool, timeout: float | None
) -> NoReturn:
    from cli.watch import summarize, watch

    try:
        final = watch(
            client, ids, progress=_is_tty() and not json_output, quiet=json_output, timeout=timeout
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the tasks keep running: cluster wait {' '.join(ids[:10])}",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    if json_output:
        from cli.render import print_json

        print_json({"tasks": final})
    raise typer.Exit(summarize(final, json_output=json_output))


@app.command(
    epilog="Examples:\n\n  cluster tasks\n\n  cluster tasks --state running,pending\n\n"
    "  cluster tasks --json | jq '.tasks[] | select(.state==\"FAILED\") | .id'"
)
def tasks(
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            "-s",
            show_default=False,
            help="Only tasks in these states, comma-separated: "
            "PENDING,STAGING,RUNNING,FINISHED,FAILED,KILLED,LOST.",
        ),
    ] = None,
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """List tasks, oldest first."""
    states = ",".join(s.strip().upper() for s in state.split(",") if s.strip()) if state else None
    found = _client(master, secret).tasks(states)
    from cli.render import print_json, stdout, tasks_table

    if json_output:
        print_json({"tasks": found})
    elif not found:
        print(
            "no tasks"
            + (
                f" in state {states}"
                if states
                else "; submit one with: cluster submit 'echo hello'"
            )
        )
    else:
        stdout.print(tasks_table(found))


@app.command(epilog="Examples:\n\n  cluster task 7\n\n  cluster task 7 --json | jq .exit_code")
def task(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Show one task: state, progress, exit code, timing, where it ran."""
    found = _client(master, secret).task(task_id)
    from cli.render import print_json, stdout, task_details

    if json_output:
        print_json(found)
    else:
        stdout.print(task_details(found))


@app.command(
    epilog="Examples:\n\n  cluster slaves\n\n  cluster slaves --json | jq '.slaves | length'"
)
def slaves(
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """List the slaves the master knows: state, resources used and offered, tasks."""
    found = _client(master, secret).slaves()
    from cli.render import print_json, slaves_table, stdout

    if json_output:
        print_json({"slaves": found})
    elif not found:
        print("no slaves registered; start one with: cluster slave --master HOST:PORT")
    else:
        stdout.print(slaves_table(found))


@app.command(epilog="Examples:\n\n  cluster kill 7\n\n  cluster kill 7 8 9")
def kill(
    task_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Task id(s) to kill.")],
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Kill tasks: SIGTERM to the command's process group, SIGKILL after a grace period."""
    client = _client(master, secret)
    errors = []
    for tid in task_ids:
        try:
            answer = client.kill(tid)
        except ClusterError as exc:
            if len(task_ids) == 1:
                raise
            errors.append(f"{tid}: {exc}")
            continue
        if answer.get("state") == "KILLED":
            print(f"task {tid} KILLED")
        else:
            print(f"task {tid}: kill sent to its slave (cluster wait {tid} to see it end)")
    if errors:
        fail("could not kill " + "; ".join(errors))


@app.command(
    epilog="Examples:\n\n  cluster logs 7\n\n  cluster logs 7 -f\n\n"
    "  cluster logs 7 --stderr | tail"
)
def logs(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until the task ends.")
    ] = False,
    stderr_stream: Annotated[
        bool, typer.Option("--stderr", help="Show the task's stderr instead of its stdout.")
    ] = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Print a task's stdout (or --stderr), read through the master from its slave."""
    client = _client(master, secret)
    stream = "stderr" if stderr_stream else "stdout"
    out = sys.stdout.buffer
    offset = 0
    while True:
        try:
            chunk = client.logs(task_id, stream, offset)
        except ClusterError as exc:
            if not follow or exc.status != 404:
                raise
            current = client.task(task_id)  # an unknown id raises here
            if current.get("state") in TERMINAL:
                raise ClusterError(
                    f"task {task_id} is {current.get('state')} and left no logs: {exc}"
                ) from None
            time.sleep(0.5)  # not placed on a slave yet
            continue
        if chunk.data:
            out.write(chunk.data)
            out.flush()
        offset = chunk.next_offset
        if chunk.eof:
            return
        if not chunk.data:
            if not follow:
                return
            time.sleep(0.5)


@app.command(
    epilog="Examples:\n\n  cluster wait 7\n\n  cluster wait 7 8 9 --timeout 600\n\n"
    "  cluster submit --json 'make test' | jq -r '.ids[]' | xargs cluster wait"
)
def wait(
    task_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Task id(s).")],
    timeout: Annotated[
        float | None,
        typer.Option(
            show_default=False,
            help="Give up after this many seconds (exit 1); the tasks keep running.",
        ),
    ] = None,
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Wait until the tasks end; exit 0 only if every one FINISHED."""
    positive("--timeout", timeout)
    ids = list(dict.fromkeys(task_ids))
    _wait_and_report(_client(master, secret), ids, json_output, timeout)


# -- the boundary ---------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `cluster` script: every error becomes one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="cluster", standalone_mode=False)
    except ClusterError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr, flush=True)
        code = 1
    except click_exceptions.NoArgsIsHelpError as exc:
        help_text = exc.format_message()  # rich help already printed itself: this is ""
        if help_text.strip():
            print(help_text, flush=True)
        code = 0
    except click_exceptions.ClickException as exc:
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        print(f"error: {_one_line(exc.format_message())}{hint}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `cluster logs 7 | head`: the reader left; stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as exc:  # a bug of ours: still one line, unless CLUSTER_DEBUG is set
        if os.environ.get("CLUSTER_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))} (this is a bug; "
            "run with CLUSTER_DEBUG=1 for the traceback)",
            file=sys.stderr,
            flush=True,
        )
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
