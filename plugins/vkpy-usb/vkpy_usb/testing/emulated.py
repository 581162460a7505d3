"""An emulated USB bus below pyusb: devices with real descriptors whose bulk endpoints lead to a
device function running in this process, and a pyusb backend (``usb.backend.IBackend``) that
presents them.

Everything above the backend is the real pyusb and the real code under test: ``usb.core.find``
enumerates these devices, reads their descriptors and strings (GET_DESCRIPTOR control transfers),
opens, configures and claims them, and moves data with bulk transfers. The emulation keeps the USB
rules that bite real hosts:

* Bulk data moves in packets of ``wMaxPacketSize``. A receive completes on a short packet
  (zero-length included) or a full buffer; a host buffer that is not a multiple of the packet size
  can overflow (EOVERFLOW). With ``strict_transfers`` (the default) the device function sees OUT
  data only when the host's transfer completes, so a host that forgets the zero-length packet after
  a transfer ending on a packet boundary leaves its last bytes stuck, as on many real devices.
* The device sends a ZLP after an IN transfer that ends on a packet boundary (``send_zlp``).
* A halted endpoint answers every transfer with EPIPE until the host clears it (``stall()``).
* A read that times out after some packets returns those (pyusb 1.3 + libusb behaviour); one that
  got nothing raises ``USBTimeoutError``. Timeout 0 waits forever.
* Unplugging fails every handle with ENODEV and wakes blocked transfers; a replugged device gets a
  new address and old handles stay dead. ``power_loss`` also restarts the device function.
* Permission (EACCES at open), a kernel driver holding the interface (EBUSY until detached), and an
  interface claimed by another program (EBUSY) can be switched on.

Errors carry libusb's codes, messages and errno values, as pyusb's libusb1 backend raises them.
"""

from __future__ import annotations

import array
import collections
import errno
import struct
import threading
import time
import types
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import attrs
import usb.backend
import usb.core

BULK = 0x02
INTERRUPT = 0x03
VENDOR_SPECIFIC = 0xFF
SPEED_FULL = 2
SPEED_HIGH = 3

_LIBUSB_ERRORS: dict[int, tuple[int, str]] = {
    errno.EIO: (-1, "Input/Output Error"),
    errno.EINVAL: (-2, "Invalid parameter"),
    errno.EACCES: (-3, "Access denied (insufficient permissions)"),
    errno.ENODEV: (-4, "No such device (it may have been disconnected)"),
    errno.ENOENT: (-5, "Entity not found"),
    errno.EBUSY: (-6, "Resource busy"),
    errno.ETIMEDOUT: (-7, "Operation timed out"),
    errno.EOVERFLOW: (-8, "Overflow"),
    errno.EPIPE: (-9, "Pipe error"),
}


def usb_error(code: int) -> usb.core.USBError:
    """The error pyusb's libusb1 backend raises for an errno."""
    backend_code, message = _LIBUSB_ERRORS.get(code, (-99, "Other error"))
    if code == errno.ETIMEDOUT:
        return usb.core.USBTimeoutError(message, backend_code, code)
    return usb.core.USBError(message, backend_code, code)


# --- what a device is made of ---------------------------------------------------------------------


@attrs.frozen
class EndpointSpec:
    address: int
    max_packet: int = 64
    kind: int = BULK
    interval: int = 0


@attrs.frozen
class InterfaceSpec:
    number: int
    interface_class: int = VENDOR_SPECIFIC
    subclass: int = 0
    protocol: int = 0
    endpoints: tuple[EndpointSpec, ...] = ()


def vendor_interface(
    number: int = 0, endpoint_in: int = 0x81, endpoint_out: int = 0x01, max_packet: int = 64
) -> InterfaceSpec:
    """A vendor-specific interface with one bulk IN/OUT pair: what the vkpy USB transport looks for."""
    return InterfaceSpec(
        number,
        VENDOR_SPECIFIC,
        endpoints=(EndpointSpec(endpoint_in, max_packet), EndpointSpec(endpoint_out, max_packet)),
    )


class Gadget(Protocol):
    """The device side of the bulk pair, as a device function sees it."""

    @property
    def max_packet(self) -> int: ...

    def read(self, max_len: int, timeout: float) -> bytes | None:
        """One completed OUT transfer (at most ``max_len`` bytes), ``b""`` when none completed
        within ``timeout`` seconds, or None once the device lost power."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` as one IN transfer (dropped while the device is not on a bus)."""
        ...


class DeviceFunction(Protocol):
    """What runs behind the bulk endpoints: started when the device gets power, stopped when it
    loses it (its state is gone then, as on a real device)."""

    def start(self, gadget: Gadget) -> None: ...

    def stop(self) -> None: ...


class EchoFunction:
    """A device function that sends back every OUT transfer as an IN transfer (for pipe tests)."""

    def __init__(self, rx_buffer: int = 4096) -> None:
        self._rx_buffer = rx_buffer
        self._thread: threading.Thread | None = None
        self.received: list[bytes] = []

    def start(self, gadget: Gadget) -> None:
        def run() -> None:
            while True:
                data = gadget.read(self._rx_buffer, 0.05)
                if data is None:
                    return
                if data:
                    self.received.append(data)
                    gadget.write(data)

        self._thread = threading.Thread(target=run, name="vkpy-usb-echo", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


# --- the device ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class DeviceStats:
    """What the host did to the device, for assertions."""

    opens: int = 0
    closes: int = 0
    claims: int = 0
    releases: int = 0
    set_configurations: int = 0
    kernel_driver_detaches: int = 0
    kernel_driver_attaches: int = 0
    stalls_cleared: int = 0
    zlps_from_host: int = 0
    zlps_to_host: int = 0
    out_transfers: int = 0
    in_transfers: int = 0


class _Handle:
    def __init__(self, device: EmulatedDevice, generation: int) -> None:
        self.device = device
        self.generation = generation
        self.open = True


@attrs.frozen
class _DeviceRef:
    """What enumeration yields: one device as it was plugged at that moment."""

    device: EmulatedDevice
    generation: int
    address: int


class EmulatedDevice:
    """One USB device on an :class:`EmulatedBus`. See the module docstring for what it emulates.

    ``function`` runs behind the bulk pair of ``function_interface`` (default: the first
    vendor-specific interface with a bulk pair).
    """

    def __init__(
        self,
        *,
        vendor_id: int = 0x1209,
        product_id: int = 0x0001,
        serial_number: str | None = "VKPY0001",
        manufacturer: str | None = "vkpy",
        product: str | None = "vkpy emulated device",
        bus: int = 1,
        port_numbers: Sequence[int] = (1,),
        interfaces: Sequence[InterfaceSpec] | None = None,
        max_packet: int = 64,
        function: DeviceFunction | None = None,
        function_interface: int | None = None,
        speed: int = SPEED_HIGH,
        bcd_device: int = 0x0100,
        strict_transfers: bool = True,
        send_zlp: bool = True,
        out_buffer: int = 4096,
        kernel_driver: bool = False,
        access_denied: bool = False,
        claimed_elsewhere: bool = False,
        configured_at_plug: bool = True,
        open_delay: float = 0.0,
    ) -> None:
        self.vendor_id = vendor_id
        self.product_id = product_id
        self.serial_number = serial_number
        self.manufacturer = manufacturer
        self.product = product
        self.bus = bus
        self.port_numbers = tuple(port_numbers)
        self.interfaces: tuple[InterfaceSpec, ...] = tuple(
            interfaces if interfaces is not None else (vendor_interface(max_packet=max_packet),)
        )
        self.function = function
        self.speed = speed
        self.bcd_device = bcd_device
        self.strict_transfers = strict_transfers
        self.send_zlp = send_zlp
        self.out_buffer = out_buffer
        self.access_denied = access_denied
        self.claimed_elsewhere = claimed_elsewhere
        self.configured_at_plug = configured_at_plug
        self.open_delay = open_delay
        self.stats = DeviceStats()
        self._strings: list[str | None] = [None, manufacturer, product, serial_number]
        self._pair = self._function_pair(function_interface)
        self._cond = threading.Condition()
        self._bus: EmulatedBus | None = None
        self._plugged = False
        self._powered = False
        self._generation = 0
        self._address = 0
        self._configuration = 0
        self._claims: dict[int, _Handle] = {}
        self._kernel_driver = {i.number: kernel_driver for i in self.interfaces}
        self._halted: set[int] = set()
        self._sticky: set[int] = set()
        self._in_packets: collections.deque[bytes] = collections.deque()
        self._out_packets: collections.deque[bytes] = collections.deque()
        self._out_assembly = bytearray()
        self._accepting_out = True

    def _function_pair(self, number: int | None) -> tuple[EndpointSpec, EndpointSpec] | None:
        for interface in self.interfaces:
            if number is not None and interface.number != number:
                continue
            if number is None and interface.interface_class != VENDOR_SPECIFIC:
                continue
            ins = [e for e in interface.endpoints if e.kind == BULK and e.address & 0x80]
            outs = [e for e in interface.endpoints if e.kind == BULK and not e.address & 0x80]
            if ins and outs:
                return ins[0], outs[0]
        return None

    # -- state, for tests ----------------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        return self._plugged

    @property
    def address(self) -> int:
        return self._address

    @property
    def configuration(self) -> int:
        return self._configuration

    def claimed(self, interface: int) -> bool:
        with self._cond:
            return interface in self._claims

    def kernel_driver_attached(self, interface: int) -> bool:
        with self._cond:
            return self._kernel_driver.get(interface, False)

    @property
    def port_path(self) -> str:
        return f"{self.bus}-{'.'.join(str(p) for p in self.port_numbers)}"

    # -- plugging ------------------------------------------------------------------------------------

    def plug(self) -> None:
        """Connect the device to its bus (powering it up, and its function, if it had no power)."""
        bus = self._bus
        if bus is None:
            raise RuntimeError("add the device to an EmulatedBus first")
        start = False
        with self._cond:
            if self._plugged:
                return
            self._generation += 1
            self._address = bus.next_address(self.bus)
            self._plugged = True
            self._configuration = 1 if self.configured_at_plug else 0  # Linux configures new devices
            self._claims.clear()
            self._halted.clear()
            self._sticky.clear()
            self._in_packets.clear()
            self._out_packets.clear()
            self._out_assembly.clear()
            if not self._powered:
                self._powered = True
                start = True
            self._cond.notify_all()
        if start and self.function is not None:
            self.function.start(self._gadget())

    def unplug(self, *, power_loss: bool = False) -> None:
        """Pull the device out: every handle fails with ENODEV from now on. A self-powered device
        keeps running its function (and its pods); with ``power_loss`` the function stops."""
        stop = False
        with self._cond:
            self._plugged = False
            self._claims.clear()
            self._in_packets.clear()
            self._out_packets.clear()
            self._out_assembly.clear()
            if power_loss and self._powered:
                self._powered = False
                stop = True
            self._cond.notify_all()
        if stop and self.function is not None:
            self.function.stop()

    def power_cycle(self) -> None:
        """Unplug with power loss and plug again: the device function restarts from scratch."""
        self.unplug(power_loss=True)
        self.plug()

    # -- fault injection -----------------------------------------------------------------------------

    def stall(self, endpoint: int, *, sticky: bool = False) -> None:
        """Halt an endpoint: transfers on it fail with EPIPE until the host clears the halt. A
        ``sticky`` halt comes back after every clear (a broken endpoint), until :meth:`unstall`."""
        with self._cond:
            self._halted.add(endpoint)
            if sticky:
                self._sticky.add(endpoint)
            self._cond.notify_all()

    def unstall(self, endpoint: int) -> None:
        with self._cond:
            self._halted.discard(endpoint)
            self._sticky.discard(endpoint)
            self._cond.notify_all()

    def halted(self, endpoint: int) -> bool:
        with self._cond:
            return endpoint in self._halted

    def set_accepting_out(self, accepting: bool) -> None:
        """False: the device NAKs OUT packets (a busy device); the host's writes time out."""
        with self._cond:
            self._accepting_out = accepting
            self._cond.notify_all()

    def set_kernel_driver(self, interface: int, attached: bool) -> None:
        with self._cond:
            self._kernel_driver[interface] = attached

    # -- the device side -----------------------------------------------------------------------------

    def _gadget(self) -> _GadgetPort:
        pair = self._pair
        packet = pair[0].max_packet if pair is not None else 64
        return _GadgetPort(self, packet)

    def _device_read(self, max_len: int, timeout: float) -> bytes | None:
        pair = self._pair
        packet = pair[1].max_packet if pair is not None else 64
        max_len = max(packet, -(-max_len // packet) * packet)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if not self._powered:
                    return None
                while self._out_packets:
                    chunk = self._out_packets.popleft()
                    self._out_assembly += chunk
                    self._cond.notify_all()  # room in the buffer for the host's next packets
                    complete = len(chunk) < packet or len(self._out_assembly) >= max_len
                    if complete or not self.strict_transfers:
                        data = bytes(self._out_assembly)
                        self._out_assembly.clear()
                        if data or complete:
                            return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                self._cond.wait(remaining)

    def _device_write(self, data: bytes) -> None:
        pair = self._pair
        packet = pair[0].max_packet if pair is not None else 64
        with self._cond:
            if not self._plugged or not self._powered:
                return
            for i in range(0, len(data), packet):
                self._in_packets.append(data[i : i + packet])
            if self.send_zlp and len(data) % packet == 0:
                self._in_packets.append(b"")
            self._cond.notify_all()

    # -- the host side (called by the backend) -------------------------------------------------------

    def _check(self, handle: _Handle) -> None:
        if not handle.open:
            raise usb_error(errno.EINVAL)
        if not self._plugged or handle.generation != self._generation:
            raise usb_error(errno.ENODEV)

    def _endpoint(self, address: int) -> tuple[InterfaceSpec, EndpointSpec]:
        for interface in self.interfaces:
            for endpoint in interface.endpoints:
                if endpoint.address == address:
                    return interface, endpoint
        raise usb_error(errno.EINVAL)

    def _ensure_claimed(self, handle: _Handle, interface: InterfaceSpec) -> None:
        holder = self._claims.get(interface.number)
        if holder is handle:
            return
        if holder is not None or self.claimed_elsewhere or self._kernel_driver.get(interface.number):
            raise usb_error(errno.EBUSY)
        self._claims[interface.number] = handle  # usbfs claims on the first transfer

    def _open(self, ref: _DeviceRef) -> _Handle:
        if self.open_delay:
            time.sleep(self.open_delay)  # a device slow to answer (a hub, a busy controller)
        with self._cond:
            if not self._plugged or ref.generation != self._generation:
                raise usb_error(errno.ENODEV)
            if self.access_denied:
                raise usb_error(errno.EACCES)
            self.stats.opens += 1
            return _Handle(self, self._generation)

    def _close(self, handle: _Handle) -> None:
        with self._cond:
            if not handle.open:
                return
            handle.open = False
            self.stats.closes += 1
            for number in [n for n, h in self._claims.items() if h is handle]:
                del self._claims[number]
            self._cond.notify_all()

    def _set_configuration(self, handle: _Handle, value: int) -> None:
        with self._cond:
            self._check(handle)
            if value not in (0, 1):
                raise usb_error(errno.EINVAL)
            others = [n for n, h in self._claims.items() if h is not handle]
            drivers = [n for n, attached in self._kernel_driver.items() if attached]
            if others or drivers or self.claimed_elsewhere:
                raise usb_error(errno.EBUSY)
            self._configuration = value
            self._halted.clear()
            self.stats.set_configurations += 1

    def _get_configuration(self, handle: _Handle) -> int:
        with self._cond:
            self._check(handle)
            return self._configuration

    def _claim(self, handle: _Handle, number: int) -> None:
        with self._cond:
            self._check(handle)
            if self._configuration == 0 or number not in {i.number for i in self.interfaces}:
                raise usb_error(errno.ENOENT)
            holder = self._claims.get(number)
            if holder is handle:
                return
            if holder is not None or self.claimed_elsewhere or self._kernel_driver.get(number):
                raise usb_error(errno.EBUSY)
            self._claims[number] = handle
            self.stats.claims += 1

    def _release(self, handle: _Handle, number: int) -> None:
        with self._cond:
            self._check(handle)
            if self._claims.get(number) is not handle:
                raise usb_error(errno.ENOENT)
            del self._claims[number]
            self.stats.releases += 1

    def _kernel_driver_active(self, handle: _Handle, number: int) -> bool:
        with self._cond:
            self._check(handle)
            return self._kernel_driver.get(number, False)

    def _detach(self, handle: _Handle, number: int) -> None:
        with self._cond:
            self._check(handle)
            if not self._kernel_driver.get(number):
                raise usb_error(errno.ENOENT)
            self._kernel_driver[number] = False
            self.stats.kernel_driver_detaches += 1

    def _attach(self, handle: _Handle, number: int) -> None:
        with self._cond:
            self._check(handle)
            if self._kernel_driver.get(number) or number in self._claims:
                raise usb_error(errno.EBUSY)
            self._kernel_driver[number] = True
            self.stats.kernel_driver_attaches += 1

    def _clear_halt(self, handle: _Handle, endpoint: int) -> None:
        with self._cond:
            self._check(handle)
            self._endpoint(endpoint)
            if endpoint not in self._sticky:
                self._halted.discard(endpoint)
            self.stats.stalls_cleared += 1
            self._cond.notify_all()

    def _bulk_write(self, handle: _Handle, endpoint: int, data: bytes, timeout_ms: int) -> int:
        interface, spec = self._endpoint(endpoint)
        if endpoint & 0x80:
            raise usb_error(errno.EINVAL)
        packet = spec.max_packet
        capacity = max(1, self.out_buffer // packet)
        packets = [data[i : i + packet] for i in range(0, len(data), packet)] or [b""]
        deadline = None if timeout_ms == 0 else time.monotonic() + timeout_ms / 1000
        sent = 0
        with self._cond:
            self._check(handle)
            self._ensure_claimed(handle, interface)
            for chunk in packets:
                while True:
                    self._check(handle)
                    if endpoint in self._halted:
                        if sent:
                            return sent
                        raise usb_error(errno.EPIPE)
                    routed = self._pair is not None and self._pair[1].address == endpoint
                    if self._accepting_out and (not routed or len(self._out_packets) < capacity):
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        if sent:
                            return sent  # libusb reports a partly done transfer with its count
                        raise usb_error(errno.ETIMEDOUT)
                    self._cond.wait(remaining)
                if self._pair is not None and self._pair[1].address == endpoint:
                    self._out_packets.append(chunk)
                if not chunk:
                    self.stats.zlps_from_host += 1
                sent += len(chunk)
                self._cond.notify_all()
            self.stats.out_transfers += 1
        return sent

    def _bulk_read(self, handle: _Handle, endpoint: int, buffer: array.array[int], timeout_ms: int) -> int:
        interface, spec = self._endpoint(endpoint)
        if not endpoint & 0x80:
            raise usb_error(errno.EINVAL)
        packet = spec.max_packet
        size = len(buffer) * buffer.itemsize
        deadline = None if timeout_ms == 0 else time.monotonic() + timeout_ms / 1000
        received = 0
        with self._cond:
            self._check(handle)
            self._ensure_claimed(handle, interface)
            routed = self._pair is not None and self._pair[0].address == endpoint
            while True:
                self._check(handle)
                if endpoint in self._halted:
                    if received:
                        return received
                    raise usb_error(errno.EPIPE)
                if routed and self._in_packets:
                    chunk = self._in_packets[0]
                    if len(chunk) > size - received:
                        self._in_packets.popleft()  # the controller saw babble; the packet is lost
                        raise usb_error(errno.EOVERFLOW)
                    self._in_packets.popleft()
                    buffer[received : received + len(chunk)] = array.array("B", chunk)
                    received += len(chunk)
                    if not chunk:
                        self.stats.zlps_to_host += 1
                    if len(chunk) < packet or received == size:
                        self.stats.in_transfers += 1
                        return received
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if received:
                        return received
                    raise usb_error(errno.ETIMEDOUT)
                self._cond.wait(remaining)

    def _string_descriptor(self, index: int, langid: int) -> bytes:
        if index == 0:
            return bytes((4, 3, 0x09, 0x04))  # LANGID 0x0409, English (US)
        if index >= len(self._strings) or self._strings[index] is None:
            raise usb_error(errno.EPIPE)
        text = str(self._strings[index]).encode("utf-16-le")[:252]
        return bytes((len(text) + 2, 3)) + text

    def _device_descriptor_bytes(self) -> bytes:
        d = self.descriptor(0)
        header = bytes((18, 1, 0x00, 0x02, 0, 0, 0, 64))
        ids = struct.pack("<HHH", self.vendor_id, self.product_id, self.bcd_device)
        return header + ids + bytes((d.iManufacturer, d.iProduct, d.iSerialNumber, 1))

    def _control(
        self, handle: _Handle, request_type: int, request: int, value: int, index: int, data: Any
    ) -> int:
        with self._cond:
            self._check(handle)
        if request_type == 0x80 and request == 0x06:  # GET_DESCRIPTOR, standard, device
            kind, number = value >> 8, value & 0xFF
            if kind == 3:
                payload = self._string_descriptor(number, index)
            elif kind == 1:
                payload = self._device_descriptor_bytes()
            else:
                raise usb_error(errno.EPIPE)
            count = min(len(payload), len(data))
            data[:count] = array.array("B", payload[:count])
            return count
        raise usb_error(errno.EPIPE)  # devices stall requests they do not know

    # -- descriptors ---------------------------------------------------------------------------------

    def descriptor(self, address: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=self.vendor_id,
            idProduct=self.product_id,
            bcdDevice=self.bcd_device,
            iManufacturer=1 if self.manufacturer is not None else 0,
            iProduct=2 if self.product is not None else 0,
            iSerialNumber=3 if self.serial_number is not None else 0,
            bNumConfigurations=1,
            address=address,
            bus=self.bus,
            port_number=self.port_numbers[-1] if self.port_numbers else None,
            port_numbers=self.port_numbers or None,
            speed=self.speed,
        )

    def configuration_descriptor(self) -> types.SimpleNamespace:
        total = 9 + sum(9 + 7 * len(i.endpoints) for i in self.interfaces)
        return types.SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=total,
            bNumInterfaces=len(self.interfaces),
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=50,
            extra_descriptors=[],
        )

    def interface_descriptor(self, index: int) -> types.SimpleNamespace:
        i = self.interfaces[index]
        return types.SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=i.number,
            bAlternateSetting=0,
            bNumEndpoints=len(i.endpoints),
            bInterfaceClass=i.interface_class,
            bInterfaceSubClass=i.subclass,
            bInterfaceProtocol=i.protocol,
            iInterface=0,
            extra_descriptors=[],
        )

    def endpoint_descriptor(self, interface: int, index: int) -> types.SimpleNamespace:
        e = self.interfaces[interface].endpoints[index]
        return types.SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=e.address,
            bmAttributes=e.kind,
            wMaxPacketSize=e.max_packet,
            bInterval=e.interval,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )


class _GadgetPort:
    def __init__(self, device: EmulatedDevice, max_packet: int) -> None:
        self._device = device
        self._max_packet = max_packet

    @property
    def max_packet(self) -> int:
        return self._max_packet

    def read(self, max_len: int, timeout: float) -> bytes | None:
        return self._device._device_read(max_len, timeout)

    def write(self, data: bytes) -> None:
        self._device._device_write(data)


def missing_libusb() -> None:
    """A backend spec (``vkpy_usb.testing:missing_libusb``) that fails as pyusb does on a machine
    without libusb-1.0, to test what users are told then."""
    raise usb.core.NoBackendError("No backend available")


# --- the bus and the backend ---------------------------------------------------------------------


class EmulatedBus:
    """The devices an :class:`EmulatedBackend` enumerates. Devices added are plugged in unless
    ``plugged=False``; :meth:`EmulatedDevice.unplug`/``plug`` move them later."""

    def __init__(self, devices: Iterable[EmulatedDevice] = ()) -> None:
        self._lock = threading.Lock()
        self._devices: list[EmulatedDevice] = []
        self._addresses: dict[int, int] = {}
        for device in devices:
            self.add(device)

    def add(self, device: EmulatedDevice, *, plugged: bool = True) -> EmulatedDevice:
        with self._lock:
            self._devices.append(device)
        device._bus = self
        if plugged:
            device.plug()
        return device

    def remove(self, device: EmulatedDevice) -> None:
        device.unplug(power_loss=True)
        with self._lock:
            self._devices.remove(device)

    def next_address(self, bus: int) -> int:
        with self._lock:
            address = self._addresses.get(bus, 1) + 1
            self._addresses[bus] = 1 if address >= 127 else address
            return address

    @property
    def devices(self) -> list[EmulatedDevice]:
        with self._lock:
            return list(self._devices)

    def shutdown(self) -> None:
        """Power every device off (stops their functions)."""
        for device in self.devices:
            device.unplug(power_loss=True)


class EmulatedBackend(usb.backend.IBackend):  # type: ignore[misc]
    """A pyusb backend presenting the devices of an :class:`EmulatedBus`:
    ``usb.core.find(backend=EmulatedBackend(bus), idVendor=...)``.

    Without a bus it builds one from ``$VKPY_USB_EMULATION`` (a bus file, see
    :class:`vkpy_usb.testing.BusFile`), which is how a ``vkpy run`` subprocess gets its devices from
    a node's test-only option ``backend: "vkpy_usb.testing:EmulatedBackend"``.
    """

    def __init__(self, bus: EmulatedBus | None = None) -> None:
        super().__init__()
        if bus is None:
            from vkpy_usb.testing.busfile import bus_from_environment

            bus = bus_from_environment()
        self.bus = bus

    # enumeration and descriptors

    def enumerate_devices(self) -> list[_DeviceRef]:
        refs = []
        for device in self.bus.devices:
            with device._cond:
                if device._plugged:
                    refs.append(_DeviceRef(device, device._generation, device._address))
        return refs

    def get_parent(self, dev: _DeviceRef) -> None:
        return None

    def get_device_descriptor(self, dev: _DeviceRef) -> types.SimpleNamespace:
        return dev.device.descriptor(dev.address)

    def get_configuration_descriptor(self, dev: _DeviceRef, config: int) -> types.SimpleNamespace:
        if config != 0:
            raise usb_error(errno.ENOENT)
        return dev.device.configuration_descriptor()

    def get_interface_descriptor(
        self, dev: _DeviceRef, intf: int, alt: int, config: int
    ) -> types.SimpleNamespace:
        if config != 0 or alt != 0 or intf >= len(dev.device.interfaces):
            raise IndexError(f"invalid interface index {intf}/{alt}")
        return dev.device.interface_descriptor(intf)

    def get_endpoint_descriptor(
        self, dev: _DeviceRef, ep: int, intf: int, alt: int, config: int
    ) -> types.SimpleNamespace:
        if config != 0 or alt != 0 or ep >= len(dev.device.interfaces[intf].endpoints):
            raise IndexError(f"invalid endpoint index {ep}")
        return dev.device.endpoint_descriptor(intf, ep)

    # handles

    def open_device(self, dev: _DeviceRef) -> _Handle:
        return dev.device._open(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        dev_handle.device._close(dev_handle)

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        dev_handle.device._set_configuration(dev_handle, config_value)

    def get_configuration(self, dev_handle: _Handle) -> int:
        return dev_handle.device._get_configuration(dev_handle)

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        dev_handle.device._check(dev_handle)
        if altsetting != 0:
            raise usb_error(errno.ENOENT)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.device._claim(dev_handle, intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.device._release(dev_handle, intf)

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return dev_handle.device._kernel_driver_active(dev_handle, intf)

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.device._detach(dev_handle, intf)

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.device._attach(dev_handle, intf)

    # transfers

    def bulk_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        return dev_handle.device._bulk_write(dev_handle, ep, data.tobytes(), timeout)

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return dev_handle.device._bulk_read(dev_handle, ep, buff, timeout)

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        return dev_handle.device._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, data)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        dev_handle.device._clear_halt(dev_handle, ep)

    def reset_device(self, dev_handle: _Handle) -> None:
        device = dev_handle.device
        with device._cond:
            device._check(dev_handle)
            device._halted.clear()
            device._in_packets.clear()
            device._out_packets.clear()
            device._out_assembly.clear()
