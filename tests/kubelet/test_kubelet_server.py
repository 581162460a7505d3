"""The kubelet API over real TLS on loopback: logs, errors, the other endpoints."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import aiohttp
import attrs
import pytest
from kubelet_support import FakeBackend, StartServer, line, logs_url, make_pod, url
from structlog.testing import capture_logs

from vkpy import DeviceUnreachable, LogLine, LogOptions, LogsNotAvailable
from vkpy.kubelet import KubeletServer
from vkpy.kubelet.logformat import render_line

UTC = datetime.UTC


async def test_logs_plain(server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession) -> None:
    async with client.get(logs_url(server)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain"
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == b"hello\nworld\n"
    assert backend.calls == [("default/web", "app", LogOptions())]
    assert backend.closed.is_set()


async def test_logs_of_an_init_container(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, container="setup")) as response:
        assert response.status == 200
    assert backend.calls[0][1] == "setup"


async def test_logs_with_timestamps(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, "timestamps=true")) as response:
        assert await response.text() == (
            "2026-11-28T08:00:00.123456000Z hello\n2026-11-28T08:00:01.123456000Z world\n"
        )
    assert backend.calls[0][2] == LogOptions(timestamps=True)


async def test_limit_bytes_cuts_the_stream(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, "limitBytes=8")) as response:
        assert await response.read() == b"hello\nwo"
    async with client.get(logs_url(server, "limitBytes=33&timestamps=true")) as response:
        # The timestamps count: the kubelet limits what it writes.
        assert await response.read() == b"2026-11-28T08:00:00.123456000Z he"
    assert backend.calls[0][2].limit_bytes == 8


async def test_limit_bytes_ends_a_follow_stream(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, "follow=true&limitBytes=3")) as response:
        assert await asyncio.wait_for(response.read(), 5) == b"hel"
    await asyncio.wait_for(backend.closed.wait(), 5)


async def test_tail_since_and_previous_reach_the_backend(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    before = datetime.datetime.now(UTC)
    async with client.get(logs_url(server, "tailLines=5&sinceSeconds=60&previous=true")) as response:
        assert response.status == 200
    after = datetime.datetime.now(UTC)
    options = backend.calls[0][2]
    assert options.tail_lines == 5
    assert options.previous is True
    assert options.since is not None
    minute = datetime.timedelta(seconds=60)
    assert before - minute <= options.since <= after - minute


async def test_since_time_reaches_the_backend_in_utc(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, "sinceTime=2026-11-28T09:00:00.5%2B01:00")) as response:
        assert response.status == 200
    assert backend.calls[0][2].since == datetime.datetime(2026, 11, 28, 8, 0, 0, 500000, tzinfo=UTC)


async def test_follow_delivers_lines_while_the_generator_runs(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.late_lines = [line("later\n", 5)]
    backend.follow_forever = False
    async with client.get(logs_url(server, "follow=true")) as response:
        assert response.status == 200
        assert await asyncio.wait_for(response.content.readline(), 5) == b"hello\n"
        assert await asyncio.wait_for(response.content.readline(), 5) == b"world\n"
        # The generator is parked on the gate: the lines came out before it finished.
        assert not backend.closed.is_set()
        backend.gate.set()
        assert await asyncio.wait_for(response.read(), 5) == b"later\n"
    assert backend.closed.is_set()
    assert backend.calls[0][2] == LogOptions(follow=True)


async def test_silent_follow_stream_answers_after_the_grace(
    start_server: StartServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.lines = []
    server = await start_server(backend, first_line_grace=0.1)
    async with client.get(logs_url(server, "follow=1")) as response:
        assert response.status == 200
        backend.late_lines = [line("finally\n")]
        backend.gate.set()
        assert await asyncio.wait_for(response.content.readline(), 5) == b"finally\n"


async def test_client_disconnect_closes_the_generator(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    response = await client.get(logs_url(server, "follow=true"))
    assert await asyncio.wait_for(response.content.readline(), 5) == b"hello\n"
    assert not backend.closed.is_set()
    response.close()  # drops the connection under the stream
    await asyncio.wait_for(backend.closed.wait(), 5)
    async with client.get(url(server, "/metrics")) as metrics:
        assert "vkpy_kubelet_log_streams 0\n" in await metrics.text()


async def test_stopping_the_server_closes_open_streams(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    response = await client.get(logs_url(server, "follow=true"))
    assert await asyncio.wait_for(response.content.readline(), 5) == b"hello\n"
    # Quickly: an endless follow stream is cut, not waited for.
    await asyncio.wait_for(server.stop(), 1.5)
    assert backend.closed.is_set()
    response.close()


async def test_stream_parameter_picks_one_stream(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.lines = [line("out\n"), line("err\n", stream="stderr"), line("out again\n")]
    async with client.get(logs_url(server, "stream=Stderr")) as response:
        assert await response.read() == b"err\n"
    async with client.get(logs_url(server, "stream=Stdout&limitBytes=6")) as response:
        assert await response.read() == b"out\nou"
    async with client.get(logs_url(server, "stream=All")) as response:
        assert await response.read() == b"out\nerr\nout again\n"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("tailLines=-1", "tailLines: must be greater than or equal to 0, got -1"),
        ("follow=maybe", 'follow: must be a boolean (true or false), got "maybe"'),
        ("limitBytes=0", "limitBytes: must be greater than 0, got 0"),
        ("sinceSeconds=soon", 'sinceSeconds: must be an integer, got "soon"'),
        ("sinceTime=yesterday", "sinceTime: must be an RFC 3339 time"),
        ("sinceSeconds=5&sinceTime=2026-11-28T08:00:00Z", "sinceSeconds, sinceTime: at most one"),
        ("stream=Both", "stream: must be one of All, Stdout, Stderr"),
        ("stream=Stdout&tailLines=3", "stream: Stdout cannot be combined with tailLines"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession, query: str, message: str
) -> None:
    async with client.get(logs_url(server, query)) as response:
        assert response.status == 400
        assert (await response.text()).startswith(message)
    assert backend.calls == []


async def test_unknown_parameters_are_ignored(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, "insecureSkipTLSVerifyBackend=true&x=y")) as response:
        assert response.status == 200
    assert backend.calls[0][2] == LogOptions()


async def test_unknown_pod_is_404(server: KubeletServer, client: aiohttp.ClientSession) -> None:
    async with client.get(logs_url(server, pod="default/nope")) as response:
        assert response.status == 404
        assert await response.text() == 'pod "default/nope" not found on this node\n'
    async with client.get(logs_url(server, pod="other/web")) as response:
        assert await response.text() == 'pod "other/web" not found on this node\n'


async def test_unknown_container_is_404(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server, container="db")) as response:
        assert response.status == 404
        assert await response.text() == 'container "db" not found in pod "default/web"\n'
    assert backend.calls == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (LogsNotAvailable('previous terminated container "app" not found'), 400),
        (DeviceUnreachable("ssh: timed out"), 500),
    ],
)
async def test_backend_errors_before_the_first_line(
    server: KubeletServer,
    backend: FakeBackend,
    client: aiohttp.ClientSession,
    error: Exception,
    status: int,
) -> None:
    backend.lines = []
    backend.fail = error
    async with client.get(logs_url(server)) as response:
        assert response.status == status
        assert await response.text() == f"{error}\n"
    backend.fail = None
    backend.fail_on_call = error
    async with client.get(logs_url(server, "follow=true")) as response:
        assert response.status == status
        assert await response.text() == f"{error}\n"


async def test_a_slow_failure_still_gets_its_status_without_follow(
    start_server: StartServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.lines = []
    backend.fail = DeviceUnreachable("device went away")
    backend.fail_delay = 0.3
    server = await start_server(backend, first_line_grace=0.05)
    async with client.get(logs_url(server)) as response:
        assert response.status == 500


async def test_a_failure_after_the_first_line_ends_the_stream(
    start_server: StartServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.fail = DeviceUnreachable("link lost")
    server = await start_server(backend, first_line_grace=0.05)
    with capture_logs() as logs:
        async with client.get(logs_url(server, "follow=true")) as response:
            assert response.status == 200
            assert await asyncio.wait_for(response.read(), 5) == b"hello\nworld\n"
    failures = [entry for entry in logs if entry["event"] == "kubelet.logs_failed"]
    assert failures[0]["error"] == "link lost"
    assert failures[0]["pod"] == "default/web"


async def test_a_failure_after_the_grace_ends_a_silent_stream(
    start_server: StartServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.lines = []
    backend.fail = LogsNotAvailable("gone")
    backend.fail_delay = 0.3
    server = await start_server(backend, first_line_grace=0.05)
    async with client.get(logs_url(server, "follow=true")) as response:
        assert response.status == 200
        assert await asyncio.wait_for(response.read(), 5) == b""


async def test_an_unexpected_backend_error_is_500(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.lines = []
    backend.fail = RuntimeError("bug in the core")
    with capture_logs() as logs:
        async with client.get(logs_url(server)) as response:
            assert response.status == 500
            assert "bug" not in await response.text()
    assert any(entry["event"] == "kubelet.handler_failed" for entry in logs)
    assert backend.closed.is_set()


async def test_pods_is_a_v1_pod_list(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    backend.pods.append(make_pod("kube-system", "agent"))
    async with client.get(url(server, "/pods")) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["kind"] == "PodList"
    assert body["apiVersion"] == "v1"
    assert body["metadata"] == {}
    assert [item["metadata"]["name"] for item in body["items"]] == ["web", "agent"]


async def test_healthz(server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession) -> None:
    async with client.get(url(server, "/healthz")) as response:
        assert (response.status, await response.text()) == (200, "ok\n")
    backend.is_healthy = False
    async with client.get(url(server, "/healthz")) as response:
        assert response.status == 500


async def test_metrics(server: KubeletServer, client: aiohttp.ClientSession) -> None:
    async with client.get(logs_url(server)) as response:
        await response.read()
    async with client.get(logs_url(server, pod="default/nope")) as response:
        await response.read()
    async with client.get(url(server, "/no/such/thing")) as response:
        await response.read()
    async with client.get(url(server, "/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    assert 'vkpy_kubelet_requests_total{route="containerLogs",code="200"} 1\n' in text
    assert 'vkpy_kubelet_requests_total{route="containerLogs",code="404"} 1\n' in text
    assert 'vkpy_kubelet_requests_total{route="other",code="404"} 1\n' in text
    assert "vkpy_kubelet_log_bytes_total 12\n" in text


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/exec/default/web/app?command=sh&stdin=true", "exec"),
        ("POST", "/exec/default/web/app", "exec"),
        ("POST", "/attach/default/web/app", "attach"),
        ("GET", "/portForward/default/web", "portForward"),
        ("POST", "/run/default/web/uid/app", "run"),
    ],
)
async def test_exec_and_friends_are_501(
    server: KubeletServer, client: aiohttp.ClientSession, method: str, path: str, kind: str
) -> None:
    async with client.request(method, url(server, path)) as response:
        assert response.status == 501
        assert await response.text() == f"vkpy does not support {kind}: devices have no container runtime\n"


@pytest.mark.parametrize("path", ["/", "/stats/summary", "/containerLogs/default/web", "/configz"])
async def test_anything_else_is_404(server: KubeletServer, client: aiohttp.ClientSession, path: str) -> None:
    async with client.get(url(server, path)) as response:
        assert response.status == 404


async def test_requests_are_logged(server: KubeletServer, client: aiohttp.ClientSession) -> None:
    with capture_logs() as logs:
        async with client.get(logs_url(server, "tailLines=1")) as response:
            await response.read()
    entry = next(entry for entry in logs if entry["event"] == "kubelet.request")
    assert entry["method"] == "GET"
    assert entry["path"] == "/containerLogs/default/web/app"
    assert entry["query"] == "tailLines=1"
    assert entry["status"] == 200
    assert entry["peer_cn"] == "kube-apiserver-kubelet-client"
    assert entry["remote"] == "127.0.0.1"
    assert 0 <= entry["duration"] < 10
    assert entry["log_level"] == "info"


# --- lines gathered into chunks ----------------------------------------------------------------


@attrs.define
class BurstBackend(FakeBackend):
    """Yields ``count`` numbered lines, giving the event loop a turn (as a file read does) after every
    ``burst`` of them, then follows like FakeBackend."""

    count: int = 5000
    burst: int | None = None

    async def _generate(self, options: LogOptions) -> AsyncIterator[LogLine]:
        try:
            for index in range(self.count):
                if self.burst is not None and index and index % self.burst == 0:
                    await asyncio.sleep(0)
                yield numbered(index)
            if self.fail is not None:
                raise self.fail
            if options.follow:
                await self.gate.wait()
                for item in self.late_lines:
                    yield item
                await asyncio.Event().wait()
        finally:
            self.closed.set()


def numbered(index: int) -> LogLine:
    # 100 bytes each, the stream alternating, the time a microsecond apart.
    text = f"line {index:07d} ".ljust(99, "x") + "\n"
    return line(text, index / 1e6, "stderr" if index % 2 else "stdout")


def expected(count: int, stream: str | None = None, timestamps: bool = False) -> bytes:
    return b"".join(
        render_line(numbered(index), timestamps)
        for index in range(count)
        if stream is None or numbered(index).stream == stream
    )


async def read_chunks(response: aiohttp.ClientResponse) -> list[bytes]:
    """The body as the HTTP chunks the server wrote."""
    chunks, current = [], b""
    async for data, end_of_chunk in response.content.iter_chunks():
        current += data
        if end_of_chunk and current:
            chunks.append(current)
            current = b""
    if current:
        chunks.append(current)
    return chunks


async def test_lines_ready_together_go_out_in_one_chunk(
    server: KubeletServer, backend: FakeBackend, client: aiohttp.ClientSession
) -> None:
    async with client.get(logs_url(server)) as response:
        assert await read_chunks(response) == [b"hello\nworld\n"]


async def test_many_lines_arrive_complete_in_order_in_big_chunks(
    start_server: StartServer, client: aiohttp.ClientSession
) -> None:
    backend = BurstBackend(count=5000)
    server = await start_server(backend)
    async with client.get(logs_url(server)) as response:
        chunks = await read_chunks(response)
    assert b"".join(chunks) == expected(5000)
    # 500 kB ready at once: chunks of 64 KiB (give or take the line that fills one), not 5000.
    assert len(chunks) == 8
    assert all(64 * 1024 <= len(chunk) < 64 * 1024 + 100 for chunk in chunks[:-1])
    async with client.get(url(server, "/metrics")) as metrics:
        assert "vkpy_kubelet_log_bytes_total 500000\n" in await metrics.text()


async def test_a_source_that_waits_flushes_what_it_gave(
    start_server: StartServer, client: aiohttp.ClientSession
) -> None:
    backend = BurstBackend(count=1000, burst=7)
    server = await start_server(backend)
    async with client.get(logs_url(server, "timestamps=true")) as response:
        chunks = await read_chunks(response)
    assert b"".join(chunks) == expected(1000, timestamps=True)
    # Each wait of the source sends what it gave so far (or with what it gives at once after the
    # wait): chunks end where the source waited, never in the middle of a burst.
    assert len(chunks) >= 1000 // 14
    assert all(chunk.count(b"\n") % 7 == 0 for chunk in chunks[:-1])


async def test_follow_delivers_a_lone_line_while_the_source_waits(
    start_server: StartServer, client: aiohttp.ClientSession
) -> None:
    backend = BurstBackend(count=3)
    server = await start_server(backend, first_line_grace=0.05)
    async with client.get(logs_url(server, "follow=true")) as response:
        assert await asyncio.wait_for(response.content.readexactly(300), 5) == expected(3)
        backend.late_lines = [line("one more\n")]
        backend.gate.set()
        # The source now waits forever: the line must not wait for a full chunk or the end.
        assert await asyncio.wait_for(response.content.readline(), 5) == b"one more\n"
        assert not backend.closed.is_set()
    await asyncio.wait_for(backend.closed.wait(), 5)


@pytest.mark.parametrize("limit", [1, 99, 100, 65535, 65536, 65537, 123457, 499999])
async def test_limit_bytes_is_exact_across_chunks(
    start_server: StartServer, client: aiohttp.ClientSession, limit: int
) -> None:
    backend = BurstBackend(count=5000, burst=333)
    server = await start_server(backend)
    async with client.get(logs_url(server, f"limitBytes={limit}")) as response:
        assert await response.read() == expected(5000)[:limit]
    async with client.get(logs_url(server, f"limitBytes={limit}&timestamps=true&follow=true")) as response:
        assert await asyncio.wait_for(response.read(), 5) == expected(5000, timestamps=True)[:limit]
    await asyncio.wait_for(backend.closed.wait(), 5)
    async with client.get(url(server, "/metrics")) as metrics:
        assert f"vkpy_kubelet_log_bytes_total {2 * limit}\n" in await metrics.text()


async def test_stream_filter_with_many_lines(
    start_server: StartServer, client: aiohttp.ClientSession
) -> None:
    backend = BurstBackend(count=3000, burst=500)
    server = await start_server(backend)
    async with client.get(logs_url(server, "stream=Stderr")) as response:
        assert await response.read() == expected(3000, stream="stderr")
    async with client.get(logs_url(server, "stream=Stdout&limitBytes=100050")) as response:
        assert await response.read() == expected(3000, stream="stdout")[:100050]


async def test_a_client_gone_mid_stream_closes_the_source(
    start_server: StartServer, client: aiohttp.ClientSession
) -> None:
    backend = BurstBackend(count=20000, burst=100)
    server = await start_server(backend)
    response = await client.get(logs_url(server, "follow=true"))
    assert await asyncio.wait_for(response.content.readexactly(1000), 5) == expected(10)
    response.close()
    await asyncio.wait_for(backend.closed.wait(), 5)
    async with client.get(url(server, "/metrics")) as metrics:
        assert "vkpy_kubelet_log_streams 0\n" in await metrics.text()


async def test_a_failure_after_many_lines_sends_them_first(
    start_server: StartServer, client: aiohttp.ClientSession
) -> None:
    backend = BurstBackend(count=2000)
    backend.fail = DeviceUnreachable("link lost")
    server = await start_server(backend)
    with capture_logs() as logs:
        async with client.get(logs_url(server)) as response:
            assert response.status == 200
            assert await response.read() == expected(2000)
    assert [entry["error"] for entry in logs if entry["event"] == "kubelet.logs_failed"] == ["link lost"]
