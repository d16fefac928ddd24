"""docker-compose.yml without Docker: parse it, check what `docker compose up --scale slave=N`
relies on, then run each service's command with its environment as local processes on
127.0.0.1 (service hostnames -> 127.0.0.1, each process its own free port, volumes -> tmp
directories) and run a task through the CLI.

No YAML library is a dependency, so `parse_yaml` reads the plain subset the compose file
keeps to (its header says so): block mappings and lists, one-line scalars, JSON-style flow
lists. When PyYAML happens to be installed, the two parsers must agree.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from test_cli_support import (
    CLUSTER,
    Running,
    clean_env,
    free_port,
    run_cli,
    run_json,
    spawn,
    stop,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


# -- a parser for the compose file's YAML subset ---------------------------------------------


def _strip_comment(line: str) -> str:
    quote = None
    escaped = False
    for i, ch in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        assert text.endswith("'"), text
        return text[1:-1].replace("''", "'")
    if text in ("", "null", "~"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    assert not text.startswith(("&", "*", "|", ">", "{")), f"outside the subset: {text}"
    return text


def _split_key(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+):(?:\s+(.*))?", text)
    assert match, f"not a 'key: value' line: {text!r}"
    return match.group(1), match.group(2) or ""


def parse_yaml(source: str) -> Any:
    lines = [
        (len(raw) - len(raw.lstrip(" ")), raw.strip())
        for raw in (_strip_comment(line) for line in source.splitlines())
        if raw.strip()
    ]
    assert not any("\t" in text for _, text in lines)

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                items.append(_scalar(lines[i][1][1:]))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            key, rest = _split_key(lines[i][1])
            assert key not in mapping, f"duplicate key {key}"
            i += 1
            if rest:
                mapping[key] = _scalar(rest)
            elif i < len(lines) and lines[i][0] > indent:
                mapping[key], i = block(i, lines[i][0])
            else:
                mapping[key] = None
        return mapping, i

    value, end = block(0, 0)
    assert end == len(lines), f"unparsed line: {lines[end][1]!r}"
    return value


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, $VAR; `$$` is a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        default = match.group(2)
        got = env.get(name, "")
        return got if got or default is None else default

    return re.sub(
        r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = parse_yaml(COMPOSE.read_text())
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        assert yaml.safe_load(COMPOSE.read_text()) == parsed
    services: dict[str, Any] = interpolate(parsed, {})
    return services


# -- what the file must say -------------------------------------------------------------------


def test_parser_reads_the_subset() -> None:
    text = (
        "a:\n  b: \"x # not a comment\"  # a comment\n  c:\n    - 1\n    - 'it''s'\n"
        '  d: ["sh", "-c", "echo $$HOME"]\n  e: true\nf:\n'
    )
    assert parse_yaml(text) == {
        "a": {
            "b": "x # not a comment",
            "c": [1, "it's"],
            "d": ["sh", "-c", "echo $$HOME"],
            "e": True,
        },
        "f": None,
    }
    assert interpolate("${A:-1} ${B:-2} $$X $A", {"A": "a"}) == "a 2 $X a"


def test_compose_has_a_master_on_5050_with_a_volume_and_scalable_slaves(
    compose: dict[str, Any],
) -> None:
    master, slave = compose["services"]["master"], compose["services"]["slave"]
    assert master["init"] is True and slave["init"] is True
    assert [p.rsplit(":", 2)[1:] for p in master["ports"]] == [["5050", "5050"]]
    menv = master["environment"]
    assert menv["CLUSTER_HOST"] == "0.0.0.0" and menv["CLUSTER_ADVERTISE_HOST"] == "master"
    [volume] = master["volumes"]
    name, target = volume.split(":")
    assert name in compose["volumes"]  # a named volume, not a bind mount
    assert menv["CLUSTER_DB"].startswith(target + "/")
    senv = slave["environment"]
    assert senv["CLUSTER_HOST"] == "0.0.0.0"
    assert senv["CLUSTER_MASTER"] == f"master:{menv['CLUSTER_PORT']}"
    # `--scale slave=N` needs no fixed host port and no fixed container name.
    assert "ports" not in slave and "container_name" not in slave
    assert "hostname" in " ".join(slave["command"])  # advertises its container hostname


def test_dockerfile_installs_the_package_as_the_readme_does() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", dockerfile, re.MULTILINE)
    assert "pip install ." in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# -- the services, run locally ----------------------------------------------------------------


def _service_env(
    service: dict[str, Any], tmp: Path, volumes: dict[str, Path], port: int, master_port: int
) -> dict[str, str]:
    env = clean_env()
    env["PATH"] = f"{Path(CLUSTER[0]).parent}{os.pathsep}{env.get('PATH', '')}"
    for key, value in (service.get("environment") or {}).items():
        text = "" if value is None else str(value)
        text = (
            re.sub(r"^(master|slave)(:\d+)?$", f"127.0.0.1:{master_port}", text)
            if key == "CLUSTER_MASTER"
            else text
        )
        for target, local in volumes.items():
            if text.startswith(target + "/"):
                text = str(local) + text[len(target) :]
        env[key] = text
    # On this machine: loopback only, a free port each, and 127.0.0.1 for every hostname.
    env.update(CLUSTER_HOST="127.0.0.1", CLUSTER_PORT=str(port), CLUSTER_ADVERTISE_HOST="127.0.0.1")
    return env


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    argv = command if isinstance(command, list) else command.split()
    if argv[0] == "cluster":
        return [*CLUSTER, *argv[1:]]
    return list(argv)  # e.g. sh -c '... exec cluster slave': PATH finds our `cluster`


def test_compose_services_run_locally_and_finish_a_task(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    services = compose["services"]
    volumes = {}
    for spec in services["master"].get("volumes", []):
        name, target = spec.split(":")[:2]
        volumes[target] = tmp_path / name
        volumes[target].mkdir()
    master_port = free_port()
    procs: list[Running] = []
    try:
        master_env = _service_env(services["master"], tmp_path, volumes, master_port, master_port)
        procs.append(spawn(_argv(services["master"]), master_env))
        for replica in (1, 2):  # docker compose up --scale slave=2
            env = _service_env(services["slave"], tmp_path, volumes, free_port(), master_port)
            env["CLUSTER_WORK_DIR"] = str(tmp_path / f"slave-{replica}")
            procs.append(spawn(_argv(services["slave"]), env))
        address = f"127.0.0.1:{master_port}"

        def registered() -> bool:
            for p in procs:
                assert p.proc.poll() is None, (p.stdout_text(), p.stderr_text())
            result = run_cli("slaves", "--json", master=address)
            return (
                result.returncode == 0
                and [s["state"] for s in json.loads(result.stdout)["slaves"]] == ["active"] * 2
            )

        wait_until(registered, 40, "both slaves to register", interval=0.3)
        slaves = run_json("slaves", master=address)["slaves"]
        assert all(s["pid"].split("@")[1].startswith("127.0.0.1:") for s in slaves)
        result = run_cli(
            "submit", "--wait", "--name", "compose", "echo from-compose", master=address
        )
        assert result.returncode == 0, result.stderr
        [task] = run_json("tasks", master=address)["tasks"]
        assert task["state"] == "FINISHED"
        assert run_cli("logs", task["id"], master=address).stdout == "from-compose\n"
        db = Path(master_env["CLUSTER_DB"])
        assert db.is_file() and db.parent in volumes.values()  # the database is on the volume
    finally:
        for p in reversed(procs):
            stop(p)
    for p in procs:
        assert "Traceback" not in p.stderr_text(), p.stderr_text()
