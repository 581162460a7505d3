"""The usb transport in-process: the vkpy protocol over bulk transfers to the reference device,
through the real pyusb and the real ProtocolTransport, with frames on packet boundaries, stalls,
timeouts, unplug and replug (pods adopted) and a power cycle (pods lost)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from usb_helpers import PRODUCT_ID, VENDOR_ID, MakeDevice, RecordingNode, eventually, make_pod, until
from vkpy_usb import DeviceTarget, PipeSettings, UsbOptions, UsbTransport, open_usb_stream
from vkpy_usb.testing import EmulatedBackend, EmulatedDevice, ReferenceDevice

from vkpy import DeviceUnreachable, LogOptions, Running, Terminated
from vkpy.protocol import DeviceClient, NoSuchPod, RequestTimeout, Status, encode_frame, encode_request


def options(**overrides: Any) -> UsbOptions:
    values: dict[str, Any] = {
        "vendor_id": VENDOR_ID,
        "product_id": PRODUCT_ID,
        "reconnect_initial": 0.1,
        "reconnect_max": 0.3,
        "startup_wait": 5.0,
        "read_timeout": 0.05,
        **overrides,
    }
    return UsbOptions(**values)


class Node:
    """A transport started on a recording node, stopped at the end."""

    def __init__(self, transport: UsbTransport, node: RecordingNode) -> None:
        self.transport = transport
        self.node = node

    async def logs(self, pod: Any) -> bytes:
        lines = self.transport.get_container_logs(self.node, pod, "main", LogOptions())
        return b"".join([line.data async for line in lines])

    async def state(self, pod: Any) -> Any:
        report = await self.transport.get_pod_status(self.node, pod)
        return None if report is None else report.containers.get("main")


@pytest.fixture
async def start_node(usb_backend: EmulatedBackend) -> AsyncIterator[Any]:
    started: list[Node] = []

    async def start(**overrides: Any) -> Node:
        node = RecordingNode()
        transport = UsbTransport(node, options(**overrides), backend=usb_backend)
        node.transport = transport
        await transport.node_start(node)
        started.append(Node(transport, node))
        return started[-1]

    yield start
    for item in started:
        await item.transport.node_stop(item.node)


async def test_pods_logs_and_delete_over_usb(make_device: MakeDevice, start_node: Any) -> None:
    make_device(serial_number="A1", reference={"pods": 3})
    make_device(serial_number="B2", port_numbers=(2,))
    usb = await start_node(serial_number="A1")
    assert usb.node.reachable
    assert usb.transport.describe() == "usb 1209:0001 serial A1"
    assert await usb.transport.node_capacity(usb.node) == {"cpu": "1", "memory": "256Ki", "pods": "3"}
    assert usb.transport.hello is not None
    assert usb.transport.hello.device_id == "A1"

    counter = make_pod("count", "3", "0.1")
    await usb.transport.create_pod(usb.node, counter)
    await usb.transport.create_pod(usb.node, counter)  # idempotent
    done = await eventually(
        lambda: usb.state(counter), lambda s: isinstance(s, Terminated), what="count to end"
    )
    assert (done.exit_code, done.reason) == (0, "Completed")
    assert await usb.logs(counter) == b"1\n2\n3\n"
    assert counter.uid in usb.node.reports  # the container_exited event, pushed over bulk IN

    sleeper = make_pod("sleep", "60")
    await usb.transport.create_pod(usb.node, sleeper)
    assert isinstance(await usb.state(sleeper), Running)
    assert sorted(await usb.transport.list_pods(usb.node)) == sorted([counter.uid, sleeper.uid])
    await usb.transport.delete_pod(usb.node, sleeper, 0)
    assert await eventually(lambda: usb.state(sleeper), lambda s: s is None, what="the pod to go") is None


async def test_frames_ending_on_a_packet_boundary_go_through_at_once(
    make_device: MakeDevice, usb_backend: Any
) -> None:
    # 16-byte packets (full speed) make boundaries frequent; the device completes a receive only
    # on a short packet, so a request ending on a boundary needs the host's ZLP to be seen at all.
    device = make_device(serial_number="Z1", max_packet=16, reference={"max_frame": 4096})
    stream = await open_usb_stream(
        usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), PipeSettings(read_timeout=0.05, read_size=64)
    )
    aligned_requests = 0
    async with DeviceClient(stream, attempts=1, timeout=0.5, first_request_id=1) as client:
        await client.hello()
        for length in range(1, 33):
            uid = "u" * length
            frame = encode_frame(encode_request(client._next_id, Status(uid=uid)))
            aligned_requests += (len(frame) + 1) % 16 == 0  # the client sends 00 + frame
            started = time.monotonic()
            with pytest.raises(NoSuchPod):
                await client.status(uid)  # attempts=1: a stuck request would be a RequestTimeout
            assert time.monotonic() - started < 0.5  # never one retransmission late
    assert aligned_requests == 2
    assert device.stats.zlps_from_host == aligned_requests
    assert device.stats.zlps_to_host >= 1  # replies of every length: some end on a boundary too


async def test_a_stall_on_the_in_endpoint_is_cleared_while_pods_run(
    make_device: MakeDevice, start_node: Any
) -> None:
    device = make_device(serial_number="S1")
    usb = await start_node(serial_number="S1")
    pod = make_pod("count", "5", "0.1")
    await usb.transport.create_pod(usb.node, pod)
    device.stall(0x81)
    done = await eventually(
        lambda: usb.state(pod), lambda s: isinstance(s, Terminated), what="the pod to end"
    )
    assert done.exit_code == 0
    assert device.stats.stalls_cleared >= 1
    assert usb.transport.stream is not None
    assert usb.transport.stream.pipe.stalls_cleared >= 1
    assert await usb.logs(pod) == b"1\n2\n3\n4\n5\n"
    assert usb.node.reachable  # a cleared stall is no disconnect


async def test_a_device_that_does_not_answer_times_out(make_device: MakeDevice, usb_backend: Any) -> None:
    make_device(serial_number="T1", function=None)  # enumerates, takes data, never answers
    stream = await open_usb_stream(
        usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), PipeSettings(read_timeout=0.05)
    )
    async with DeviceClient(stream, attempts=2, timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.hello()
        assert 0.35 < time.monotonic() - started < 2


async def test_a_silent_device_keeps_the_node_not_ready_with_the_reason(
    make_device: MakeDevice, start_node: Any
) -> None:
    make_device(serial_number="T2", function=None)
    usb = await start_node(
        serial_number="T2", request_timeout=0.2, attempts=1, connect_timeout=1.0, startup_wait=3.0
    )
    await until(lambda: bool(usb.node.health) and "answer" in usb.node.health[-1].message, what="NotReady")
    assert not usb.node.reachable
    with pytest.raises(DeviceUnreachable):
        await usb.transport.get_pod_status(usb.node, make_pod("echo"))


async def test_unplug_makes_the_node_not_ready_and_replug_adopts_the_running_pods(
    make_device: MakeDevice, start_node: Any
) -> None:
    reference = ReferenceDevice(device_id="R1")
    device: EmulatedDevice = make_device(serial_number="R1", function=reference)
    usb = await start_node(serial_number="R1")
    pod = make_pod("count", "1000", "0.05")
    await usb.transport.create_pod(usb.node, pod)
    assert isinstance(await usb.state(pod), Running)

    device.unplug()  # a self-powered board: it keeps running its pods
    await until(lambda: not usb.node.reachable, what="the node to turn NotReady")
    assert usb.node.health[-1].reason == "DeviceDisconnected"
    assert usb.node.health[-1].message.startswith("usb 1209:0001 serial R1: ")
    with pytest.raises(DeviceUnreachable):
        await usb.transport.get_pod_status(usb.node, pod)
    await until(
        lambda: "no USB device 1209:0001 with serial number 'R1'" in usb.node.health[-1].message,
        what="the reconnect attempts to say the device is missing",
    )

    reports_before = len(usb.node.reports)
    device.plug()
    await until(lambda: usb.node.reachable, what="the node to be Ready again")
    assert pod.uid in usb.node.reports[reports_before:]  # reconciled: its status is asked at once
    assert isinstance(await usb.state(pod), Running)  # adopted, not created again
    assert reference.boots == 1
    assert reference.pod_uids == [pod.uid]
    logs = (await usb.logs(pod)).split()
    assert logs[:3] == [b"1", b"2", b"3"]  # one count, never restarted
    assert len(logs) > 3

    device.power_cycle()  # a bus-powered board: unplugging lost everything
    await until(lambda: reference.boots == 2, what="the device to boot again")
    await until(
        lambda: (
            usb.node.reachable
            and usb.transport.hello is not None
            and usb.transport.hello.boot_id == reference.device.boot_id
        ),
        what="the new boot",
    )
    assert await eventually(lambda: usb.state(pod), lambda s: s is None, what="the lost pod") is None
    assert usb.node.reachable
