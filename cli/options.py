"""Options and checks shared by the `cluster` commands (typer annotations, no heavy imports).

Exit codes (the same for every command): 0 success; 1 an error (the master unreachable, a task
that did not finish, ...); 2 a usage error: an unknown option or a value the command refuses
(click's convention, for a bad number or a bad `--cpus` alike); 124 `wait --timeout` ran out
(as coreutils' timeout); 130 interrupted.
"""

from __future__ import annotations

import math
import shlex
from typing import Annotated, NoReturn

import typer

from cli.client import DEFAULT_MASTER, ClusterError

try:  # typer >= 0.2x vendors click as typer._click; older releases depend on click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        exceptions as click_exceptions,
    )

__all__ = [
    "EXIT_TIMEOUT",
    "AdvertiseHostOpt",
    "AdvertisePortOpt",
    "HostOpt",
    "JsonOpt",
    "MasterOpt",
    "SecretOpt",
    "VerboseOpt",
    "again",
    "bad_value",
    "click_exceptions",
    "env_option",
    "examples",
    "fail",
    "listen_port",
    "positive",
]

MasterOpt = Annotated[
    str,
    typer.Option(
        "--master",
        "-m",
        envvar="CLUSTER_MASTER",
        metavar="HOST:PORT",
        show_default=True,
        help="The master to talk to; zk://HOST:PORT/PATH for the leader of several masters "
        "(found in ZooKeeper, followed when it changes).",
    ),
]
EXIT_TIMEOUT = 124  # `wait --timeout` ran out before the tasks ended


def _secret(help: str) -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(
        "--secret", envvar="CLUSTER_SECRET", metavar="SECRET", show_default=False, help=help
    )
    return option


SecretOpt = Annotated[
    str | None,
    _secret("Shared secret, sent as 'Authorization: Bearer' (needed when the master has one)."),
]
MasterSecretOpt = Annotated[
    str | None,
    _secret(
        "Require this secret of slaves registering and of clients that submit or kill "
        "(give the same one to every slave and client)."
    ),
]
SlaveSecretOpt = Annotated[
    str | None,
    _secret("The cluster's secret, sent when registering (needed when the master has one)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts, not a table.")]
VerboseOpt = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        envvar="CLUSTER_VERBOSE",
        show_default=False,
        help="Log more: -v INFO, -vv DEBUG (one logfmt line per record, on stderr).",
    ),
]


def env_option(envvar: str, help: str, **kwargs: object) -> typer.models.OptionInfo:
    """An option read from `envvar` too, whose help text states its own default."""
    option: typer.models.OptionInfo = typer.Option(
        envvar=envvar,
        show_default=False,
        help=help,
        **kwargs,  # type: ignore[arg-type]
    )
    return option


def listen_port(default: int) -> typer.models.OptionInfo:
    """`--port` of a server command that listens on `default` unless told otherwise."""
    return env_option(
        "CLUSTER_PORT",
        f"Port to listen on, 0 for any free one \\[default: LIBPROCESS_PORT, else {default}].",
        min=0,
        max=65535,
    )


HostOpt = Annotated[
    str | None,
    env_option("CLUSTER_HOST", "Address to bind \\[default: LIBPROCESS_IP, else 127.0.0.1]."),
]
AdvertiseHostOpt = Annotated[
    str | None,
    env_option(
        "CLUSTER_ADVERTISE_HOST",
        "Host (IP or name) the other cluster processes use to reach this one "
        "\\[default: LIBPROCESS_ADVERTISE_IP, else the bound address].",
    ),
]
AdvertisePortOpt = Annotated[
    int | None,
    env_option(
        "CLUSTER_ADVERTISE_PORT",
        "Port the other cluster processes use to reach this one \\[default: the bound port].",
        min=1,
        max=65535,
    ),
]


def fail(message: str) -> NoReturn:
    """Stop the command: main() prints `error: <message>` and exits 1."""
    raise ClusterError(message)


def bad_value(message: str) -> NoReturn:
    """A value the command refuses: a usage error, `error: <message> (see '... --help')`,
    exit 2, like an option click itself cannot parse."""
    raise click_exceptions.UsageError(message)


def positive(name: str, value: float | None) -> None:
    """A resource or duration given on the command line must be a finite number > 0."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        bad_value(f"{name} must be a number greater than 0, got {value:g}")


def again(master: str) -> str:
    """The options to repeat in a hint the user may paste (`cluster wait 3{again(m)}`), so it
    reaches the same master: `--master` unless it is the default. Never the secret."""
    if master.strip() == DEFAULT_MASTER:
        return ""
    return f" --master {shlex.quote(master.strip())}"


def examples(*items: str | tuple[str, str], note: str = "") -> str:
    """A command's epilog: 'Examples:' and one example a line, comments aligned, the same
    layout for every command (each line is its own paragraph for typer's rich help)."""
    rows = [(item, "") if isinstance(item, str) else item for item in items]
    width = max(len(cmd) for cmd, comment in rows if comment) if any(c for _, c in rows) else 0
    lines = [
        f"  {cmd.ljust(width)}  # {comment}" if comment else f"  {cmd}" for cmd, comment in rows
    ]
    # The leading newline keeps the indentation: click cleans epilogs with inspect.cleandoc,
    # which measures the margin from the second line on ("Examples:" sets it to 0 there).
    text = "\nExamples:\n\n" + "\n\n".join(lines) + (f"\n\n{note}" if note else "")
    return text.replace("[", "\\[")  # rich markup: a '[' is literal here


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration(text: str) -> float:
    """A `--gc-delay`-style duration: `90s`, `30m`, `12h`, `1d`, `2w`, `1.5h`, or plain
    seconds; typer's parser, so a bad one is a usage error (exit 2) saying what is wrong."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION_UNITS else "s"
    number = value[:-1] if value[-1:] in _DURATION_UNITS else value
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or seconds > 100 * 365 * 86400:
        raise typer.BadParameter(
            f"{text!r} is not a duration; write a number with s, m, h, d or w (90s, 30m, "
            "12h, 1d, 2w), 0 or more and at most 100 years"
        )
    return seconds


def percentage(text: str) -> float:
    """`90%` or `90` (percent, 1 to 100) as a fraction (0.9); typer's parser."""
    value = text.strip().removesuffix("%").strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 1 <= number <= 100):
        hint = f"; did you mean {number * 100:g}%?" if 0 < number < 1 else ""
        raise typer.BadParameter(f"{text!r} is not a percentage from 1% to 100%{hint}")
    return number / 100
