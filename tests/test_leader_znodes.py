"""The pure parts of HA: `zk://` URLs, the leader znode format, the thread-to-loop channel.

(The election and detection themselves run against a real ZooKeeper in tests/ha/.)
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from master.election import LeaderContender
from protos.detector import LeaderDetector
from protos.leader_info import LABEL, MAX_DATA, LeaderInfo, LeaderInfoError, leader_member, members
from protos.zookeeper import DEFAULT_PORT, LoopChannel, ZkUrl, ZkUrlError, parse_zk_url

INFO = LeaderInfo("master@10.0.0.5:5050", "http://10.0.0.5:5050", id="m1", version="0.1.0")


@pytest.mark.parametrize("url, servers, path", [
    ("zk://127.0.0.1:2181/cluster", (("127.0.0.1", 2181),), "/cluster"),
    ("zk://zk1:2181,zk2:2182,zk3/a/b", (("zk1", 2181), ("zk2", 2182), ("zk3", DEFAULT_PORT)),
     "/a/b"),
    ("  ZK://[::1]:2181,[fe80::1]/mesos  ", (("[::1]", 2181), ("[fe80::1]", DEFAULT_PORT)),
     "/mesos"),
    ("zk://zk.example.com:65535/c-1_x.y", (("zk.example.com", 65535),), "/c-1_x.y"),
])
def test_good_zk_urls_parse_into_servers_and_path(
        url: str, servers: tuple[tuple[str, int], ...], path: str) -> None:
    parsed = parse_zk_url(url)
    assert parsed == ZkUrl(servers, path)
    assert parse_zk_url(str(parsed)) == parsed
    assert parsed.hosts == ",".join(f"{h}:{p}" for h, p in servers)


@pytest.mark.parametrize("url, reason", [
    ("127.0.0.1:2181/cluster", "does not start with zk://"),
    ("http://127.0.0.1:2181/cluster", "does not start with zk://"),
    ("zk://127.0.0.1:2181", "no /PATH"),
    ("zk:///cluster", "no server"),
    ("zk://127.0.0.1:2181/", "root"),
    ("zk://127.0.0.1:2181/cluster/", "ends with '/'"),
    ("zk://127.0.0.1:2181/a//b", "empty segment"),
    ("zk://127.0.0.1:2181/a/../b", "not allowed"),
    ("zk://127.0.0.1:2181/zookeeper/x", "reserved"),
    ("zk://127.0.0.1:2181/a b", "space"),
    ("zk://127.0.0.1:2181/a?x=1", "query"),
    ("zk://127.0.0.1:0/c", "not 1-65535"),
    ("zk://127.0.0.1:99999/c", "not 1-65535"),
    ("zk://127.0.0.1:21x/c", "not 1-65535"),
    ("zk://127.0.0.1:/c", "empty port"),
    ("zk://a:1,,b:2/c", "empty server"),
    ("zk://a:1,/c", "empty server"),
    ("zk://user:pw@a:1/c", "credentials"),
    ("zk://[::1/c", "no ']'"),
    ("zk://[::1]x/c", "expected ':PORT'"),
    ("zk://-bad-:1/c", "not a host name"),
    ("zk://a:1/" + "x" * 5000, "longer than"),
    ("zk://a:1/caf\u00e9", "may only hold"),
])
def test_bad_zk_urls_say_what_is_wrong_and_show_a_good_one(url: str, reason: str) -> None:
    with pytest.raises(ZkUrlError) as info:
        parse_zk_url(url)
    message = str(info.value)
    assert reason in message
    assert "zk://HOST:PORT[,HOST:PORT...]/PATH" in message and len(message) < 600


def test_a_non_string_url_is_refused_clearly() -> None:
    with pytest.raises(ZkUrlError, match="not a string"):
        parse_zk_url(None)  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_any_text_either_parses_or_raises_zk_url_error(text: str) -> None:
    try:
        parsed = parse_zk_url(text)
    except ZkUrlError:
        return
    assert parsed.path.startswith("/") and parsed.servers


def test_contender_and_detector_refuse_a_bad_url_before_connecting() -> None:
    with pytest.raises(ZkUrlError, match="no /PATH"):
        LeaderContender("zk://127.0.0.1:2181", INFO)
    with pytest.raises(ZkUrlError, match="does not start"):
        LeaderDetector("127.0.0.1:2181/cluster")
    with pytest.raises(ValueError, match="session_timeout"):
        LeaderDetector("zk://127.0.0.1:2181/c", session_timeout=0)


def test_leader_info_round_trips_through_its_znode_data() -> None:
    data = INFO.encode()
    assert json.loads(data) == {"pid": "master@10.0.0.5:5050", "http": "http://10.0.0.5:5050",
                                "id": "m1", "version": "0.1.0"}
    assert LeaderInfo.decode(data) == INFO
    assert INFO.upid.id == "master" and INFO.upid.port == 5050


def test_unknown_keys_are_ignored_for_newer_masters() -> None:
    data = json.dumps({"pid": INFO.pid, "http": INFO.http, "hostname": "m", "extra": [1]})
    assert LeaderInfo.decode(data.encode()) == LeaderInfo(INFO.pid, INFO.http)


@pytest.mark.parametrize("data, reason", [
    (None, "no data"),
    (b"", "no data"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"{not json", "not UTF-8 JSON"),
    (b"[1, 2]", "list, not an object"),
    (b'{"http": "http://a:1"}', "no pid"),
    (b'{"pid": "master@a:1"}', "no http"),
    (b'{"pid": 5, "http": "http://a:1"}', "must be strings"),
    (b'{"pid": "master@a", "http": "http://a:1"}', "pid"),
    (b'{"pid": "@a:1", "http": "http://a:1"}', "needs an id"),
    (b'{"pid": "master@a:0", "http": "http://a:1"}', "non-zero port"),
    (b'{"pid": "master@a:1", "http": "ftp://a:1"}', "http[s]://HOST:PORT"),
    (b'{"pid": "master@a:1", "http": "http://a"}', "http[s]://HOST:PORT"),
    (b'{"pid": "master@a:1", "http": "http://a:1/x?y"}', "only http[s]://HOST:PORT"),
    (b'{"pid": "master@a:1", "http": "http://a:99999"}', "http"),
    (b'{"pid": "master@a:1", "http": "http://a:1", "id": "a b"}', "id"),
    (b'{"pid": "master@a:1", "http": "http://a:1", "version": "x\\n"}', "version"),
    (b" " * (MAX_DATA + 1), "bytes (at most"),
])
def test_malformed_znode_data_is_refused_with_the_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(LeaderInfoError) as info:
        LeaderInfo.decode(data)
    assert reason in str(info.value)


@given(st.binary(max_size=200))
def test_any_bytes_either_decode_or_raise_leader_info_error(data: bytes) -> None:
    try:
        LeaderInfo.decode(data)
    except LeaderInfoError:
        pass


def test_the_leader_is_the_lowest_sequence_and_foreign_children_are_ignored() -> None:
    children = [f"{LABEL}_0000000012", "lock", f"{LABEL}_0000000003", "info_0000000001",
                f"{LABEL}_12", f"{LABEL}_0000000100", f"x{LABEL}_0000000000"]
    assert members(children) == [f"{LABEL}_0000000003", f"{LABEL}_0000000012",
                                 f"{LABEL}_0000000100"]
    assert leader_member(children) == f"{LABEL}_0000000003"
    assert leader_member(["lock"]) is None and leader_member([]) is None


async def test_loop_channel_delivers_in_order_from_other_threads() -> None:
    loop = asyncio.get_running_loop()
    channel: LoopChannel[int] = LoopChannel(loop, 0)
    seen: list[int] = []
    channel.add_callback(seen.append)
    iterated: list[int] = []

    async def consume() -> None:
        async for value in channel.subscribe():
            iterated.append(value)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)  # subscribed: it starts with the latest value, 0
    threads = [threading.Thread(target=lambda: [channel.publish(i) for i in range(1, 501)])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while len(seen) < 500:
        await asyncio.sleep(0.01)
    assert seen == list(range(1, 501)) and channel.latest == 500
    channel.publish(501)  # published before close(): still delivered
    channel.close()
    await asyncio.wait_for(consumer, 5)
    assert iterated == list(range(0, 502))
    channel.publish(7)  # after close: dropped
    await asyncio.sleep(0.01)
    assert seen[-1] == 501


def test_publishing_to_a_closed_loop_is_harmless() -> None:
    loop = asyncio.new_event_loop()
    channel: LoopChannel[int] = LoopChannel(loop, 0)
    loop.close()
    channel.publish(1)  # no exception: the owner is gone
