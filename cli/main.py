"""`cluster`: run a master, slaves or a whole local cluster, and use it.

Names and options are a contract (DESIGN.md §3.4). Every failure the user can cause (a
master that is not reachable, an unknown task id, bad resources, a busy port) ends as one
`error: ...` line on stderr and exit code 1 (2 for a usage error or a refused value, 124 when
`wait --timeout` runs out; see cli/options.py), never a traceback: the boundary is `main()`.
Hints printed for pasting (`cluster wait 3`) repeat `--master` when it is not the default.
Heavy modules (rich tables, aiohttp, SQLAlchemy) are imported inside the commands, so
`cluster --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cli import server_commands
from cli.client import DEFAULT_MASTER, ClusterError
from cli.options import (
    JsonOpt,
    MasterOpt,
    SecretOpt,
    again,
    bad_value,
    click_exceptions,
    examples,
    fail,
    positive,
)

if TYPE_CHECKING:
    from cli.client import MasterClient

__all__ = ["app", "main"]

app = typer.Typer(
    name="cluster",
    help="A small Mesos-like cluster built on libproc: a master schedules shell commands "
    "onto slaves.\n\nStart a local cluster with 'cluster up', then 'cluster submit'.",
    epilog=examples(
        ("cluster up", "in one terminal: a master and 2 slaves"),
        ("cluster submit --wait 'echo hello'", "in another"),
        "cluster tasks; cluster logs 1",
        note="Client commands find the master with --master or CLUSTER_MASTER (default "
        f"{DEFAULT_MASTER}). 'cluster COMMAND --help' shows each command's options and examples.",
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

server_commands.register(app)  # master, slave, up


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("libproc-cluster")
        except metadata.PackageNotFoundError:  # run from a source tree that is not installed
            version = "unknown (not installed)"
        print(f"cluster {version}")
        raise typer.Exit(0)


@app.callback()
def _top(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_version, help="Print the version."),
    ] = False,
) -> None:
    """The `cluster` command (its help is the app's)."""


def _plain_flags() -> None:
    """typer 0.2x shows a type beside every parameter (`--wait <bool>`, `-v <int>`, `COMMAND
    <list[str]>`); a flag takes no value and an argument is named already: show none."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - another typer
        return
    for cls, quiet in ((TyperOption, lambda p: p.is_flag or p.count), (TyperArgument, None)):
        shown = getattr(cls, "display_type_rich", None)
        if shown is None:  # pragma: no cover - another typer
            continue

        def display_type_rich(self: Any, ctx: Any, _shown: Any = shown, _quiet: Any = quiet) -> Any:
            if _quiet is None or _quiet(self):
                return None
            return _shown(self, ctx)

        cls.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()


def _client(master: str, secret: str | None, timeout: float = 10.0) -> MasterClient:
    from cli.client import MasterClient

    return MasterClient(master, secret, timeout=timeout)


def _is_tty() -> bool:
    from cli.render import stderr

    return bool(stderr.is_terminal)


# -- clients --------------------------------------------------------------------------------


@app.command(
    epilog=examples(
        ("cluster submit 'echo hello'", "one task"),
        ("cluster submit --cpus 1 --mem 512 --name build 'make -j1 all'", "resources, a name"),
        "cluster submit --count 5 --wait 'for i in $(seq 10); do echo PROGRESS $((i*10)); "
        "sleep 1; done'",
        ("cluster submit --json 'sleep 60' | jq -r '.ids[]'", "for scripts"),
        note="A task reports progress by printing 'PROGRESS <percent>' lines on stdout. "
        "With --wait: exit 0 if every task FINISHED, 1 if one did not, 130 on Ctrl-C.",
    )
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
    retry_delay: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            show_default=False,
            help="Wait this long before the first retry, twice as long before each next "
            "one, at most 60 s (or this, if longer) \\[default: 1].",
        ),
    ] = None,
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
        bad_value("COMMAND is empty: give a shell command, e.g. cluster submit 'echo hello'")
    positive("--cpus", cpus)
    positive("--mem", mem)
    positive("--timeout", timeout)
    if not 1 <= count <= 10_000:
        bad_value(f"--count must be between 1 and 10000, got {count}")
    if retries < 0:
        bad_value(f"--retries must be 0 or more, got {retries}")
    if retry_delay is not None and not 0 <= retry_delay <= 3600:  # NaN fails too
        bad_value(f"--retry-delay must be from 0 to 3600 seconds, got {retry_delay:g}")
    specs: list[dict[str, Any]] = []
    for i in range(count):
        spec: dict[str, Any] = {"command": text, "retries": retries}
        if name:
            spec["name"] = name if count == 1 else f"{name}-{i + 1}"
        for key, value in (("cpus", cpus), ("mem", mem), ("timeout", timeout),
                           ("retry_delay", retry_delay)):
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
                f"submitted {what}\n  follow: cluster wait{again(master)} {' '.join(ids[:10])}"
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
            "\ninterrupted; the tasks keep running: "
            f"cluster wait{again(client.master)} {' '.join(ids[:10])}"
            + (" ..." if len(ids) > 10 else ""),
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    if json_output:
        from cli.render import print_json

        print_json({"tasks": final})
    raise typer.Exit(summarize(final, json_output=json_output, master=client.master))


@app.command(
    epilog=examples(
        ("cluster tasks", "the newest 50, and how many more there are"),
        "cluster tasks --state running,pending",
        ("cluster tasks --name build --limit 200", "names starting with 'build'"),
        ("cluster tasks --all", "every task, oldest first"),
        ("cluster tasks --json | jq '.tasks[] | select(.state==\"FAILED\") | .id'", "for scripts"),
    )
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
    name: Annotated[
        str | None,
        typer.Option(show_default=False, help="Only tasks whose name starts with this."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-l", help="Show the newest N tasks (1 to 10000).")
    ] = 50,
    all_tasks: Annotated[
        bool, typer.Option("--all", "-a", help="Show every task (however many there are).")
    ] = False,
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """List tasks, oldest first: the newest 50 (--limit N), or --all of them."""
    if not 1 <= limit <= 10_000:
        bad_value(f"--limit must be between 1 and 10000, got {limit}")
    states = ",".join(s.strip().upper() for s in state.split(",") if s.strip()) if state else None
    client = _client(master, secret)
    if all_tasks:
        found = client.tasks(states, name)
        total = len(found)
    else:
        page = client.task_page(limit=limit, states=states, name=name, order="desc")
        found, total = list(reversed(page["tasks"])), int(page["total"])
    from cli.render import print_json, print_table, tasks_table

    if json_output:
        print_json({"tasks": found, "total": total})
    elif not found:
        what = _which(states, name)
        print(
            f"no tasks {what}"
            if what
            else f"no tasks; submit one with: cluster submit{again(master)} 'echo hello'"
        )
    else:
        print_table(tasks_table(found))
        more = total - len(found)
        if more > 0:
            print(f"... {more} more (older); cluster tasks --limit N or --all shows them")


def _which(states: str | None, name: str | None) -> str:
    """`in state A,B and named PREFIX*`, for messages about a filter."""
    parts = [f"in state {states}" if states else "", f"named {name}*" if name else ""]
    return " and ".join(p for p in parts if p)


@app.command(
    epilog=examples("cluster task 7", ("cluster task 7 --json | jq .exit_code", "for scripts"))
)
def task(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Show one task: state, progress, exit code, timing, usage, where each attempt ran
    (or why it waits)."""
    client = _client(master, secret)
    found = client.task(task_id)
    from cli.render import print_json, stdout, task_details

    if json_output:
        print_json(found)
        return
    waiting = str(found.get("pending_reason") or "")  # the master's: a retry's backoff
    if found.get("state") == "PENDING" and not waiting:
        from cli.watch import why_pending

        waiting = why_pending(client, found)
    stdout.print(task_details(found, waiting=waiting))


@app.command(
    epilog=examples(
        "cluster slaves", ("cluster slaves --json | jq '.slaves | length'", "for scripts")
    )
)
def slaves(
    json_output: JsonOpt = False,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """List the slaves the master knows: state, resources used and offered, tasks."""
    found = _client(master, secret).slaves()
    from cli.render import print_json, print_table, slaves_table

    if json_output:
        print_json({"slaves": found})
    elif not found:
        print(f"no slaves registered; start one with: cluster slave --master {master}")
    else:
        print_table(slaves_table(found))


@app.command(
    epilog=examples(
        "cluster kill 7",
        ("cluster kill 7 8 9", "several at once"),
        ("cluster kill --state PENDING", "every task still waiting"),
        ("cluster kill --name build-", "every live task whose name starts with 'build-'"),
    )
)
def kill(
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="ID...", show_default=False, help="Task id(s) to kill."),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            "-s",
            show_default=False,
            help="Kill every task in these states (comma-separated), e.g. PENDING.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(show_default=False, help="Kill every live task whose name starts with this."),
    ] = None,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Kill tasks: SIGTERM to the command's process group, SIGKILL after a grace period."""
    if task_ids and (state or name):
        bad_value("give task ids or --state/--name, not both")
    if not task_ids and not (state or name):
        bad_value("name the tasks to kill: IDs, --state STATES or --name PREFIX")
    if not task_ids:
        states = [s.strip().upper() for s in (state or "").split(",") if s.strip()]
        n = _client(master, secret).kill_many(states=states or None, name=name)
        print(f"killed {n} task(s) {_which(','.join(states), name)}" + (
            " (those on slaves end when their slave reports it)" if n else ""))
        return
    client = _client(master, secret)
    errors = []
    task_ids = list(dict.fromkeys(task_ids))  # each once
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
            print(
                f"task {tid}: kill sent to its slave (cluster wait{again(master)} {tid} to "
                "see it end)"
            )
    if errors:
        done = len(task_ids) - len(errors)
        fail(
            f"could not kill {len(errors)} of {len(task_ids)} task(s) ({done} killed or "
            "being killed): " + "; ".join(errors)
        )


@app.command(
    epilog=examples(
        "cluster logs 7",
        ("cluster logs 7 -f", "follow until the task ends"),
        ("cluster logs 7 --stderr --tail 20", "the last 20 lines of stderr"),
        ("cluster logs 7 --attempt 1", "the output of its first attempt (after a retry)"),
    )
)
def logs(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until the task ends.")
    ] = False,
    stderr_stream: Annotated[
        bool, typer.Option("--stderr", help="Show the task's stderr instead of its stdout.")
    ] = False,
    tail: Annotated[
        int | None,
        typer.Option(
            "--tail",
            "-n",
            metavar="N",
            show_default=False,
            help="Only the last N lines (then follow, with -f).",
        ),
    ] = None,
    attempt: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            show_default=False,
            help="Read attempt K (1 is the first) \\[default: the latest].",
        ),
    ] = None,
    master: MasterOpt = DEFAULT_MASTER,
    secret: SecretOpt = None,
) -> None:
    """Print a task's stdout (or --stderr), read through the master from its slave."""
    if tail is not None and tail < 0:
        bad_value(f"--tail must be 0 or more, got {tail}")
    if attempt is not None and attempt < 1:
        bad_value(f"--attempt must be 1 or more (attempts count from 1), got {attempt}")
    from cli.logs import print_log

    stream = "stderr" if stderr_stream else "stdout"
    print_log(_client(master, secret), task_id, stream, sys.stdout.buffer, follow=follow,
              tail=tail, attempt=attempt)


@app.command(
    epilog=examples(
        "cluster wait 7",
        ("cluster wait 7 8 9 --timeout 600", "exit 124 if they have not ended by then"),
        "cluster submit --json 'make test' | jq -r '.ids[]' | xargs cluster wait",
        note="Exit 0 if every task FINISHED, 1 if one did not, 124 when --timeout ran out "
        "(the tasks keep running), 130 on Ctrl-C.",
    )
)
def wait(
    task_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Task id(s).")],
    timeout: Annotated[
        float | None,
        typer.Option(
            show_default=False,
            help="Give up after this many seconds (exit 124); the tasks keep running.",
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
        code = getattr(exc, "exit_code", 1)
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
