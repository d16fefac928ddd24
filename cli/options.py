"""Options and checks shared by the `cluster` commands (typer annotations, no heavy imports)."""

from __future__ import annotations

import math
from typing import Annotated, NoReturn

import typer

from cli.client import ClusterError

__all__ = ["JsonOpt", "MasterOpt", "SecretOpt", "VerboseOpt", "fail", "positive"]

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


def fail(message: str) -> NoReturn:
    """Stop the command: main() prints `error: <message>` and exits 1."""
    raise ClusterError(message)


def positive(name: str, value: float | None) -> None:
    """A resource or duration given on the command line must be a finite number > 0."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        fail(f"{name} must be a number greater than 0, got {value:g}")
