"""Options and checks shared by the `cluster` commands (typer annotations, no heavy imports)."""

from __future__ import annotations

import math
from typing import Annotated, NoReturn

import typer

from cli.client import ClusterError

__all__ = [
    "AdvertiseHostOpt",
    "AdvertisePortOpt",
    "HostOpt",
    "JsonOpt",
    "MasterOpt",
    "SecretOpt",
    "VerboseOpt",
    "env_option",
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
        help="The master to talk to.",
    ),
]
SecretOpt = Annotated[
    str | None,
    typer.Option(
        "--secret",
        envvar="CLUSTER_SECRET",
        show_default=False,
        help="Shared secret, sent as 'Authorization: Bearer' (needed when the master has one).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts, not a table.")]
VerboseOpt = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        envvar="CLUSTER_VERBOSE",
        help="Log more: -v INFO, -vv DEBUG (one logfmt line per record, on stderr).",
    ),
]


def env_option(envvar: str, help: str, **kwargs: object) -> typer.models.OptionInfo:
    """An option read from `envvar` too, whose help text states its own default."""
    option: typer.models.OptionInfo = typer.Option(
        envvar=envvar, show_default=False, help=help, **kwargs  # type: ignore[arg-type]
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


def positive(name: str, value: float | None) -> None:
    """A resource or duration given on the command line must be a finite number > 0."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        fail(f"{name} must be a number greater than 0, got {value:g}")
