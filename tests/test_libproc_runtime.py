"""Start-up of the runtime: addresses from arguments and LIBPROCESS_* variables, run(), stop()."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

import libproc
from libproc import UPID, Clock

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "LIBPROCESS_IP",
        "LIBPROCESS_PORT",
        "LIBPROCESS_ADVERTISE_IP",
        "LIBPROCESS_ADVERTISE_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    Clock.reset()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_start_binds_a_random_port_and_returns_the_address() -> None:
    address = await libproc.start(host="127.0.0.1", port=0)
    try:
        assert address.id == "" and address.host == "127.0.0.1" and address.port > 0
        assert libproc.address() == address
        with socket.create_connection(address.address, timeout=2):
            pass  # it listens
    finally:
        await libproc.stop()


async def test_start_twice_is_refused_and_stop_allows_a_restart() -> None:
    await libproc.start(host="127.0.0.1", port=0)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await libproc.start(host="127.0.0.1", port=0)
    finally:
        await libproc.stop()
    await libproc.stop()  # a second stop is harmless
    with pytest.raises(libproc.NotRunningError):
        libproc.address()
    await libproc.start(host="127.0.0.1", port=0)
    await libproc.stop()


async def test_libprocess_environment_variables_set_bind_and_advertised_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("LIBPROCESS_IP", "127.0.0.1")
    monkeypatch.setenv("LIBPROCESS_PORT", str(port))
    monkeypatch.setenv("LIBPROCESS_ADVERTISE_IP", "10.9.8.7")
    monkeypatch.setenv("LIBPROCESS_ADVERTISE_PORT", "6000")
    address = await libproc.start()
    try:
        assert address == UPID("", "10.9.8.7", 6000)
        pid = libproc.spawn(libproc.Process("env-test"))
        assert pid == UPID("env-test", "10.9.8.7", 6000)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # bound where LIBPROCESS_IP/PORT said
    finally:
        await libproc.stop()


async def test_a_bad_libprocess_port_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBPROCESS_PORT", "http")
    with pytest.raises(ValueError, match="LIBPROCESS_PORT='http' is not a port number"):
        await libproc.start(host="127.0.0.1")
    assert not libproc.runtime.is_running()


async def test_bound_to_all_interfaces_advertises_a_real_ip() -> None:
    address = await libproc.start(host="0.0.0.0", port=0)
    try:
        assert address.host != "0.0.0.0"
        socket.inet_aton(address.host)  # an IP literal, as libprocess advertises
    finally:
        await libproc.stop()


async def test_messages_to_our_own_advertised_address_stay_local() -> None:
    await libproc.start(host="127.0.0.1", port=0, advertise_host="10.1.2.3", advertise_port=7)
    try:
        got: list[bytes] = []
        a, b = libproc.Process("a"), libproc.Process("b")
        libproc.spawn(a)
        libproc.spawn(b)
        b.install("hi", lambda s, body: got.append(body))
        a.send(UPID("b", "10.1.2.3", 7), "hi", b"local")  # unreachable over the network
        await Clock.settle()
        assert got == [b"local"]
    finally:
        await libproc.stop()


def test_run_starts_and_stops_around_main() -> None:
    code = (
        "import libproc\n"
        "async def main():\n"
        "    pid = libproc.spawn(libproc.Process('x'))\n"
        "    return str(pid)\n"
        "print(libproc.run(main(), host='127.0.0.1', port=0))\n"
        "print(libproc.runtime.is_running())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=20, check=False
    )
    lines = out.stdout.decode().split()
    assert out.returncode == 0, out.stderr.decode()
    assert UPID.parse(lines[0]).id == "x"
    assert lines[1] == "False"
