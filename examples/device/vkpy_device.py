"""vkpy reference device: speaks the vkpy device protocol (docs/protocol.md) on a byte stream.

Runs on CPython 3 and on MicroPython. It only needs modules MicroPython ships: sys, time, json,
binascii, select (and os where present); CPython-only modules (termios, tty) are optional.

  python3 vkpy_device.py                         # frames on stdin/stdout (binary)
  python3 vkpy_device.py --port /dev/pts/5       # a tty or pty (set to raw mode)
  python3 vkpy_device.py --port /dev/ttyUSB0 --baud 115200
  micropython vkpy_device.py --port /dev/pts/5   # MicroPython unix port

On a MicroPython board, copy this file to the board and call from main.py::

  import vkpy_device
  vkpy_device.run_usb_cdc(device_id="board-1")             # USB CDC (the REPL's port)
  vkpy_device.run_uart(1, 115200, device_id="board-1")     # machine.UART(1, 115200)

Options: --device-id ID, --pods N (capacity), --log-buffer BYTES (per container),
--without CAP,... (leave out capabilities: events, logs, env, working_dir, grace, restart),
--max-frame BYTES (largest frame accepted), --cpu Q, --memory Q, --port PATH, --baud N,
--stream-io (use the MicroPython I/O path: stream objects and select.poll, even on CPython),
--verbose (diagnostics on stderr; stdout carries frames only).

Pods name a built-in program as command[0] (argv = command + args): echo, sleep, count, sensor,
exit, fail, env, pwd, stubborn. Programs are generators stepped by a cooperative scheduler, so
several pods run at once and the device keeps answering. An unknown program makes the container
terminate at once with exit code 127 and reason "ProgramNotFound" (create itself succeeds).
"""

# MicroPython builds may lack f-strings, so %-formatting is used throughout; contextlib is not a
# MicroPython module, so try/except/pass stays.
# ruff: noqa: UP031, SIM105, S110

import sys
import time

try:
    import json
except ImportError:  # old MicroPython
    import ujson as json
try:
    import binascii
except ImportError:
    try:
        import ubinascii as binascii
    except ImportError:
        binascii = None
try:
    import select
except ImportError:
    try:
        import uselect as select
    except ImportError:
        select = None
try:
    import os
except ImportError:
    try:
        import uos as os
    except ImportError:
        os = None

PROTOCOL_VERSION = 1
FIRMWARE = "vkpy-reference-device"
FIRMWARE_VERSION = "1.0.0"
DEFAULT_MAX_FRAME = 1024  # the host's limit until its hello says otherwise
MIN_MAX_FRAME = 256  # smallest limit a device may announce
MIN_HOST_MAX_FRAME = 1024  # smallest limit a host may announce
MAX_MAX_FRAME = 1048576
CAPABILITIES = ["events", "logs", "env", "working_dir", "grace", "restart"]

# Error codes (docs/protocol.md, "Error codes")
UNKNOWN_OP = 1
BAD_REQUEST = 2
NO_SUCH_POD = 3
NO_SUCH_CONTAINER = 4
NO_SUCH_PROGRAM = 5
CAPACITY_EXCEEDED = 6
FRAME_TOO_LARGE = 7
BUSY = 8
UNSUPPORTED_VERSION = 9
HELLO_REQUIRED = 10
INTERNAL = 11
ERROR_NAMES = {
    UNKNOWN_OP: "unknown_op",
    BAD_REQUEST: "bad_request",
    NO_SUCH_POD: "no_such_pod",
    NO_SUCH_CONTAINER: "no_such_container",
    NO_SUCH_PROGRAM: "no_such_program",
    CAPACITY_EXCEEDED: "capacity_exceeded",
    FRAME_TOO_LARGE: "frame_too_large",
    BUSY: "busy",
    UNSUPPORTED_VERSION: "unsupported_version",
    HELLO_REQUIRED: "hello_required",
    INTERNAL: "internal",
}

EIO = 5
EAGAIN = 11
VERBOSE = False


def debug(text):
    if VERBOSE:
        sys.stderr.write("vkpy-device: " + text + "\n")


# ------------------------------------------------------------------------------------------
# Clock: milliseconds since boot, never wrapping (MicroPython's ticks_ms wraps; we extend it).


class Clock:
    def __init__(self):
        self._ticks = getattr(time, "ticks_ms", None)
        if self._ticks is not None:
            self._last = self._ticks()
            self._ms = 0
        else:
            self._t0 = time.monotonic()

    def ms(self):
        if self._ticks is not None:
            now = self._ticks()
            self._ms += time.ticks_diff(now, self._last)
            self._last = now
            return self._ms
        return int((time.monotonic() - self._t0) * 1000)


# ------------------------------------------------------------------------------------------
# CRC-32 (IEEE, reflected, poly 0xEDB88320, init/xorout 0xFFFFFFFF = zlib/binascii.crc32)

_CRC_TABLE = None


def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


def crc32_py(data):
    global _CRC_TABLE
    if _CRC_TABLE is None:
        _CRC_TABLE = _crc_table()
    table = _CRC_TABLE
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


if binascii is not None and hasattr(binascii, "crc32"):

    def crc32(data):
        return binascii.crc32(data) & 0xFFFFFFFF

else:
    crc32 = crc32_py


# ------------------------------------------------------------------------------------------
# COBS and frames: COBS(body + CRC-32 little-endian) followed by 0x00


def cobs_encode(data):
    out = bytearray()
    parts = bytes(data).split(b"\x00")
    last = len(parts) - 1
    for index in range(len(parts)):
        part = parts[index]
        pos = 0
        size = len(part)
        while size - pos >= 254:
            out.append(0xFF)
            out += part[pos : pos + 254]
            pos += 254
        if index == last and size > 0 and pos == size:
            break
        out.append(size - pos + 1)
        out += part[pos:]
    return bytes(out)


def cobs_decode(data):
    """Decode COBS bytes (no delimiter); return None if they are not valid COBS."""
    out = bytearray()
    size = len(data)
    i = 0
    while i < size:
        code = data[i]
        end = i + code
        if code == 0 or end > size:
            return None
        block = data[i + 1 : end]
        if b"\x00" in block:
            return None
        out += block
        i = end
        if code != 0xFF and i < size:
            out.append(0)
    return bytes(out)


def encode_frame(body):
    crc = crc32(body)
    trailer = bytes((crc & 0xFF, (crc >> 8) & 0xFF, (crc >> 16) & 0xFF, (crc >> 24) & 0xFF))
    return cobs_encode(body + trailer) + b"\x00"


def decode_frame(frame):
    """Return the body of a frame (bytes between delimiters), or None if it is corrupt."""
    raw = cobs_decode(frame)
    if raw is None or len(raw) <= 4:
        return None
    body = raw[:-4]
    t = raw[-4:]
    if crc32(body) != t[0] | (t[1] << 8) | (t[2] << 16) | (t[3] << 24):
        return None
    return body


class FrameReader:
    """Splits the incoming stream at 0x00; yields bodies, or None for an oversize frame."""

    def __init__(self, max_frame):
        self.max_frame = max_frame
        self.buf = bytearray()
        self.skipping = False
        self.dropped = 0

    def feed(self, data):
        out = []
        parts = bytes(data).split(b"\x00")
        for i in range(len(parts) - 1):
            part = parts[i]
            if self.skipping:
                self.skipping = False
                out.append(None)
                continue
            if self.buf:
                frame = bytes(self.buf) + part
                self.buf = bytearray()
            else:
                frame = part
            if not frame:
                continue
            if len(frame) > self.max_frame:
                out.append(None)
                continue
            body = decode_frame(frame)
            if body is None:
                self.dropped += 1
                debug("dropped a corrupt frame of %d bytes" % len(frame))
                continue
            out.append(body)
        tail = parts[-1]
        if tail and not self.skipping:
            self.buf += tail
            if len(self.buf) > self.max_frame:
                self.skipping = True
                self.buf = bytearray()
        return out


# ------------------------------------------------------------------------------------------
# JSON and base64 helpers

_COMPACT = [True]


def dumps(obj):
    if _COMPACT[0]:
        try:
            return json.dumps(obj, separators=(",", ":"))
        except TypeError:  # MicroPython before separators= support
            _COMPACT[0] = False
    return json.dumps(obj)


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64encode(data):
    if binascii is not None and hasattr(binascii, "b2a_base64"):
        return binascii.b2a_base64(data).decode().strip()
    out = []
    for i in range(0, len(data), 3):
        chunk = data[i : i + 3]
        n = (
            (chunk[0] << 16)
            | ((chunk[1] if len(chunk) > 1 else 0) << 8)
            | (chunk[2] if len(chunk) > 2 else 0)
        )
        out.append(_B64[(n >> 18) & 63] + _B64[(n >> 12) & 63])
        out.append(_B64[(n >> 6) & 63] if len(chunk) > 1 else "=")
        out.append(_B64[n & 63] if len(chunk) > 2 else "=")
    return "".join(out)


def is_int(value):
    return isinstance(value, int) and value is not True and value is not False


# ------------------------------------------------------------------------------------------
# Programs. A program gets the container as its context (ctx.args, ctx.env, ctx.working_dir,
# ctx.out(text)). A generator program yields the milliseconds to sleep before its next step and
# returns its exit code; a plain function returns its exit code at once. A delete throws
# Terminate into the generator: not catching it ends the container with exit code 143.


class Terminate(Exception):
    pass


class UsageError(Exception):
    pass


def _number(text, what):
    try:
        return float(text)
    except ValueError:
        raise UsageError("%s must be a number, not %r" % (what, text)) from None


def _integer(text, what):
    try:
        return int(text)
    except ValueError:
        raise UsageError("%s must be an integer, not %r" % (what, text)) from None


def prog_echo(ctx):
    ctx.out(" ".join(ctx.args) + "\n")
    return 0


def prog_sleep(ctx):
    if len(ctx.args) != 1:
        raise UsageError("usage: sleep SECONDS")
    yield int(_number(ctx.args[0], "SECONDS") * 1000)
    return 0


def prog_count(ctx):
    if not 1 <= len(ctx.args) <= 2:
        raise UsageError("usage: count N [INTERVAL]")
    n = _integer(ctx.args[0], "N")
    interval = int(_number(ctx.args[1], "INTERVAL") * 1000) if len(ctx.args) > 1 else 1000
    for i in range(1, n + 1):
        ctx.out("%d\n" % i)
        if i < n:
            yield interval
    return 0


def prog_sensor(ctx):
    if len(ctx.args) > 2:
        raise UsageError("usage: sensor [N] [INTERVAL]")
    n = _integer(ctx.args[0], "N") if ctx.args else 0
    interval = int(_number(ctx.args[1], "INTERVAL") * 1000) if len(ctx.args) > 1 else 1000
    name = ctx.env.get("SENSOR_NAME", "sensor0")
    state = 12345
    for ch in name:
        state = (state * 31 + ord(ch)) & 0x7FFFFFFF
    i = 0
    while n == 0 or i < n:
        i += 1
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        centi = 2000 + state % 500  # 20.00 .. 24.99 degrees C
        humidity = 400 + (state >> 9) % 200  # 40.0 .. 59.9 %
        ctx.out(
            "%s reading=%d temperature=%d.%02dC humidity=%d.%d%%\n"
            % (name, i, centi // 100, centi % 100, humidity // 10, humidity % 10)
        )
        if n == 0 or i < n:
            yield interval
    return 0


def prog_exit(ctx):
    if len(ctx.args) != 1:
        raise UsageError("usage: exit CODE")
    return _integer(ctx.args[0], "CODE")


def prog_fail(ctx):
    ctx.out((" ".join(ctx.args) if ctx.args else "failing on purpose") + "\n")
    return 1


def prog_env(ctx):
    for key in sorted(ctx.env):
        ctx.out("%s=%s\n" % (key, ctx.env[key]))
    return 0


def prog_pwd(ctx):
    ctx.out((ctx.working_dir or "/") + "\n")
    return 0


def prog_stubborn(ctx):
    """Ignores termination, so a delete with a grace period ends with a kill (137)."""
    ctx.out("running; I ignore termination\n")
    while True:
        try:
            yield 1000
        except Terminate:
            ctx.out("ignoring termination\n")


PROGRAMS = {
    "echo": prog_echo,
    "sleep": prog_sleep,
    "count": prog_count,
    "sensor": prog_sensor,
    "exit": prog_exit,
    "fail": prog_fail,
    "env": prog_env,
    "pwd": prog_pwd,
    "stubborn": prog_stubborn,
}


# ------------------------------------------------------------------------------------------
# Pods and containers


class LogBuffer:
    """The last ``cap`` bytes a container wrote. Offsets count every byte ever written."""

    def __init__(self, cap):
        self.cap = cap
        self.buf = bytearray()
        self.start = 0  # offset of buf[0] = earliest offset still held

    def end(self):
        return self.start + len(self.buf)

    def append(self, data):
        self.buf += data
        extra = len(self.buf) - self.cap
        if extra > 0:
            self.buf = self.buf[extra:]
            self.start += extra

    def read(self, offset, limit):
        offset = max(self.start, min(offset, self.end()))
        i = offset - self.start
        return offset, bytes(self.buf[i : i + limit])


class Container:
    def __init__(self, pod, name, argv, env, working_dir, log_cap):
        self.pod = pod
        self.name = name
        self.argv = argv
        self.args = argv[1:]
        self.env = env
        self.working_dir = working_dir
        self.log_cap = log_cap
        self.log = LogBuffer(log_cap)
        self.prev_log = None  # the log of the instance before the last restart
        self.restarts = 0
        self.reset()

    def reset(self):
        self.state = "waiting"
        self.reason = "ContainerCreating"
        self.message = ""
        self.exit_code = None
        self.started_at = None
        self.finished_at = None
        self.gen = None
        self.wake_at = 0
        self.kill_at = None

    def restart(self):
        """A new instance: the current log becomes the previous one, a new log starts at offset 0."""
        self.prev_log = self.log
        self.log = LogBuffer(self.log_cap)
        self.restarts += 1
        self.reset()

    def out(self, text):
        self.log.append(text.encode() if isinstance(text, str) else text)

    def running(self):
        return self.state == "running"

    def status(self):
        s = {"name": self.name, "state": self.state}
        if self.state == "waiting":
            s["reason"] = self.reason
            s["message"] = self.message
        elif self.state == "running":
            s["started_at"] = self.started_at
        else:
            s["exit_code"] = self.exit_code
            s["reason"] = self.reason
            s["message"] = self.message
            s["started_at"] = self.started_at
            s["finished_at"] = self.finished_at
        s["restarts"] = self.restarts
        return s


class Pod:
    def __init__(self, uid, namespace, name, serial):
        self.uid = uid
        self.namespace = namespace
        self.name = name
        self.serial = serial
        self.containers = []
        self.deleting = False

    def finished(self):
        return all(c.state == "terminated" for c in self.containers)

    def status(self):
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "deleting": self.deleting,
            "containers": [c.status() for c in self.containers],
        }


class Fail(Exception):
    """Raised by a handler to send an error reply."""

    def __init__(self, code, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.details = details


def _field(msg, key, kind, default=None, required=True):
    value = msg.get(key)
    if value is None:
        if required:
            raise Fail(BAD_REQUEST, "field %r is missing" % key)
        return default
    ok = (
        (kind == "str" and isinstance(value, str))
        or (kind == "int" and is_int(value))
        or (kind == "list" and isinstance(value, list))
        or (kind == "dict" and isinstance(value, dict))
    )
    if not ok:
        raise Fail(BAD_REQUEST, "field %r must be of type %s" % (key, kind))
    return value


def _str_list(msg, key):
    value = _field(msg, key, "list", [], False)
    for item in value:
        if not isinstance(item, str):
            raise Fail(BAD_REQUEST, "field %r must be an array of strings" % key)
    return value


def _env(spec):
    env = spec.get("env")
    if env is None:
        return {}
    result = {}
    if isinstance(env, dict):
        for key in env:
            if not isinstance(env[key], str):
                raise Fail(BAD_REQUEST, "env %r must be a string" % key)
            result[key] = env[key]
        return result
    if isinstance(env, list):
        for pair in env:
            if not isinstance(pair, list) or len(pair) != 2:
                raise Fail(BAD_REQUEST, "env entries must be [name, value] pairs")
            if not isinstance(pair[0], str) or not isinstance(pair[1], str):
                raise Fail(BAD_REQUEST, "env names and values must be strings")
            result[pair[0]] = pair[1]
        return result
    raise Fail(BAD_REQUEST, "field 'env' must be an object or an array of pairs")


class Device:
    def __init__(
        self,
        device_id="vkpy-device",
        pods=4,
        log_buffer=4096,
        max_frame=4096,
        cpu="1",
        memory="256Ki",
        without=(),
    ):
        self.clock = Clock()
        # Leaving out optional features plays an older or smaller device (hosts must cope).
        self.capabilities = [c for c in CAPABILITIES if c not in without]
        self.ops = [op for op in OPS if op not in OPTIONAL_OPS or OPTIONAL_OPS[op] in self.capabilities]
        self.device_id = device_id
        self.max_pods = pods
        self.log_cap = log_buffer
        self.max_frame = max_frame
        self.capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
        self.host_max_frame = DEFAULT_MAX_FRAME
        self.hello_done = False
        self.event_seq = 0
        self.pods = {}
        self.serial = 0
        self.output = []
        self.boot_id = self._boot_id()

    def _boot_id(self):
        raw = None
        if os is not None and hasattr(os, "urandom"):
            try:
                raw = os.urandom(8)
            except Exception:
                raw = None
        if raw is None:
            t = self.clock.ms() ^ (id(self) << 8)
            raw = bytes(((t >> (8 * i)) & 0xFF) for i in range(8))
        if binascii is not None:
            return binascii.hexlify(raw).decode()
        return "".join("%02x" % b for b in raw)

    # ---------------------------------------------------------------- output

    def take_output(self):
        frames = self.output
        self.output = []
        return frames

    def _frame(self, obj):
        return encode_frame(dumps(obj).encode())

    def send_reply(self, rid, fields):
        obj = {"id": rid, "ok": True, "now": self.clock.ms()}
        for key in fields:
            obj[key] = fields[key]
        frame = self._frame(obj)
        if len(frame) - 1 > self.host_max_frame:
            self.send_error(
                rid,
                FRAME_TOO_LARGE,
                "reply of %d bytes exceeds the host's max_frame %d" % (len(frame) - 1, self.host_max_frame),
            )
            return
        self.output.append(frame)

    def send_error(self, rid, code, message, details=None):
        error = {"code": code, "name": ERROR_NAMES.get(code, "error"), "message": message}
        if details:
            for key in details:
                error[key] = details[key]
        debug("error %d %s for id %d: %s" % (code, error["name"], rid, message))
        self.output.append(self._frame({"id": rid, "ok": False, "now": self.clock.ms(), "error": error}))

    def push_event(self, name, fields):
        if not self.hello_done or "events" not in self.capabilities:
            return  # no host has announced itself yet; it will learn the state from list
        self.event_seq += 1
        obj = {"event": name, "seq": self.event_seq, "now": self.clock.ms()}
        for key in fields:
            obj[key] = fields[key]
        self.output.append(self._frame(obj))

    # ---------------------------------------------------------------- requests

    def frame_too_large(self):
        self.send_error(
            0, FRAME_TOO_LARGE, "a frame exceeded max_frame %d and was discarded" % self.max_frame
        )

    def handle_body(self, body):
        try:
            msg = json.loads(body.decode())
        except Exception:
            self.send_error(0, BAD_REQUEST, "frame body is not valid UTF-8 JSON")
            return
        if not isinstance(msg, dict):
            self.send_error(0, BAD_REQUEST, "frame body is not a JSON object")
            return
        rid = msg.get("id")
        if not is_int(rid) or rid < 1:
            self.send_error(0, BAD_REQUEST, "request id missing or not a positive integer")
            return
        op = msg.get("op")
        if not isinstance(op, str):
            self.send_error(rid, BAD_REQUEST, "field 'op' is missing or not a string")
            return
        handler = getattr(self, "op_" + op, None) if op in self.ops else None
        if handler is None:
            self.send_error(rid, UNKNOWN_OP, "unknown op %r" % op)
            return
        if not self.hello_done and op not in ("hello", "ping"):
            self.send_error(rid, HELLO_REQUIRED, "send hello first (device booted %s)" % self.boot_id)
            return
        try:
            fields = handler(msg)
        except Fail as exc:
            self.send_error(rid, exc.code, exc.message, exc.details)
            return
        except Exception as exc:
            self.send_error(rid, INTERNAL, "%s: %s" % (type(exc).__name__, exc))
            return
        self.send_reply(rid, fields)

    def op_hello(self, msg):
        versions = _field(msg, "versions", "list")
        if PROTOCOL_VERSION not in versions:
            raise Fail(
                UNSUPPORTED_VERSION,
                "this device speaks protocol version %d only" % PROTOCOL_VERSION,
                {"versions": [PROTOCOL_VERSION]},
            )
        host_max = _field(msg, "max_frame", "int")
        if host_max < MIN_HOST_MAX_FRAME:
            raise Fail(BAD_REQUEST, "max_frame must be at least %d" % MIN_HOST_MAX_FRAME)
        self.host_max_frame = min(host_max, MAX_MAX_FRAME)
        self.hello_done = True
        debug("hello from %r, host max_frame %d" % (msg.get("host"), host_max))
        return {
            "version": PROTOCOL_VERSION,
            "device_id": self.device_id,
            "firmware": FIRMWARE,
            "firmware_version": FIRMWARE_VERSION,
            "capabilities": self.capabilities,
            "capacity": self.capacity,
            "max_frame": self.max_frame,
            "boot_id": self.boot_id,
            "event_seq": self.event_seq,
            "programs": sorted(PROGRAMS),
        }

    def op_ping(self, msg):
        return {}

    def op_create(self, msg):
        uid = _field(msg, "uid", "str")
        if not uid:
            raise Fail(BAD_REQUEST, "field 'uid' must not be empty")
        pod = self.pods.get(uid)
        if pod is not None:
            return {"created": False, "pod": pod.status()}
        specs = _field(msg, "containers", "list")
        if not specs:
            raise Fail(BAD_REQUEST, "a pod needs at least one container")
        parsed = []
        names = []
        for spec in specs:
            if not isinstance(spec, dict):
                raise Fail(BAD_REQUEST, "containers must be objects")
            name = _field(spec, "name", "str")
            if not name or name in names:
                raise Fail(BAD_REQUEST, "container names must be non-empty and unique")
            names.append(name)
            argv = _str_list(spec, "command") + _str_list(spec, "args")
            working_dir = _field(spec, "working_dir", "str", None, False)
            parsed.append((name, argv, _env(spec), working_dir))
        if len(self.pods) >= self.max_pods:
            raise Fail(CAPACITY_EXCEEDED, "device holds %d of %d pods" % (len(self.pods), self.max_pods))
        self.serial += 1
        pod = Pod(
            uid,
            _field(msg, "namespace", "str", "", False),
            _field(msg, "name", "str", "", False),
            self.serial,
        )
        for name, argv, env, working_dir in parsed:
            pod.containers.append(Container(pod, name, argv, env, working_dir, self.log_cap))
        self.pods[uid] = pod
        for c in pod.containers:
            self.start(c)
        return {"created": True, "pod": pod.status()}

    def op_delete(self, msg):
        uid = _field(msg, "uid", "str")
        grace = _field(msg, "grace", "int", 0, False)
        if grace < 0:
            raise Fail(BAD_REQUEST, "field 'grace' must be >= 0")
        pod = self.pods.get(uid)
        if pod is None:
            return {"found": False, "gone": True, "pod": None}
        pod.deleting = True
        now = self.clock.ms()
        deadline = now + grace * 1000
        for c in pod.containers:
            if not c.running():
                continue
            if grace == 0:
                self.finish(c, 137, "Killed", "deleted with no grace period")
            elif c.kill_at is None:
                c.kill_at = deadline
                self.step(c, Terminate())
            else:
                c.kill_at = min(c.kill_at, deadline)
        status = pod.status()
        gone = pod.finished()
        if gone:
            self.forget(pod)
        return {"found": True, "gone": gone, "pod": status}

    def op_list(self, msg):
        pods = sorted(self.pods.values(), key=lambda p: p.serial)
        return {"pods": [p.status() for p in pods]}

    def op_status(self, msg):
        return {"pod": self._pod(msg).status()}

    def op_logs(self, msg):
        pod = self._pod(msg)
        container = self._container(pod, msg)
        offset = _field(msg, "offset", "int", 0, False)
        max_bytes = _field(msg, "max_bytes", "int", 4096, False)
        if offset < 0 or max_bytes < 1:
            raise Fail(BAD_REQUEST, "offset must be >= 0 and max_bytes >= 1")
        previous = msg.get("previous") is True and "restart" in self.capabilities
        if previous:
            if container.prev_log is None:
                raise Fail(
                    NO_SUCH_CONTAINER,
                    "container %r of pod %s has no previous instance" % (container.name, pod.uid),
                )
            log = container.prev_log
            finished = True
            instance = container.restarts - 1
        else:
            log = container.log
            finished = container.state == "terminated"
            instance = container.restarts
        # Largest payload whose reply still fits the host's frame limit (base64: 4 chars / 3 bytes,
        # COBS: 1 byte / 254, CRC: 4 bytes, JSON envelope: under 200 bytes).
        room = (self.host_max_frame - 1) * 254 // 255 - 4 - 200
        limit = min(max_bytes, max(1, room // 4 * 3))
        start, data = log.read(offset, limit)
        next_offset = start + len(data)
        return {
            "data": b64encode(data),
            "offset": start,
            "next_offset": next_offset,
            "earliest": log.start,
            "end": log.end(),
            "eof": finished and next_offset == log.end(),
            "restarts": instance,
        }

    def op_restart(self, msg):
        pod = self._pod(msg)
        container = self._container(pod, msg)
        restarts = _field(msg, "restarts", "int")
        if restarts < 0:
            raise Fail(BAD_REQUEST, "field 'restarts' must be >= 0")
        # Only the instance the host saw: a retransmitted restart finds the count moved on.
        restarted = not pod.deleting and container.state == "terminated" and container.restarts == restarts
        if restarted:
            container.restart()
            self.start(container)
        return {"restarted": restarted, "pod": pod.status()}

    def _container(self, pod, msg):
        name = _field(msg, "container", "str")
        for c in pod.containers:
            if c.name == name:
                return c
        raise Fail(NO_SUCH_CONTAINER, "pod %s has no container %r" % (pod.uid, name))

    def _pod(self, msg):
        uid = _field(msg, "uid", "str")
        pod = self.pods.get(uid)
        if pod is None:
            raise Fail(NO_SUCH_POD, "no pod with uid %s" % uid)
        return pod

    # ---------------------------------------------------------------- scheduler

    def start(self, c):
        now = self.clock.ms()
        if not c.argv:
            self.finish(c, 127, "ProgramNotFound", "the container has no command")
            return
        program = PROGRAMS.get(c.argv[0])
        if program is None:
            self.finish(c, 127, "ProgramNotFound", "no program %r on this device" % c.argv[0])
            return
        c.state = "running"
        c.started_at = now
        try:
            result = program(c)
        except UsageError as exc:
            c.out("%s\n" % exc)
            self.finish(c, 2, "Error", str(exc))
            return
        except Exception as exc:
            self.crashed(c, exc)
            return
        if hasattr(result, "send"):
            c.gen = result
            c.wake_at = now
        else:
            self.finish(c, result)

    def step(self, c, exc=None):
        """Run a program to its next yield (throwing ``exc`` into it if given)."""
        try:
            delay = c.gen.throw(exc) if exc is not None else next(c.gen)
        except StopIteration as stop:
            value = getattr(stop, "value", None)
            if value is None and stop.args:
                value = stop.args[0]
            self.finish(c, value)
            return
        except Terminate:
            self.finish(c, 143, "Terminated", "stopped by delete")
            return
        except UsageError as err:
            c.out("%s\n" % err)
            self.finish(c, 2, "Error", str(err))
            return
        except Exception as err:
            self.crashed(c, err)
            return
        c.wake_at = self.clock.ms() + (int(delay) if delay else 0)

    def crashed(self, c, exc):
        text = "%s: %s" % (type(exc).__name__, exc)
        c.out(text + "\n")
        self.finish(c, 1, "Error", text)

    def finish(self, c, code, reason=None, message=""):
        if c.state == "terminated":
            return
        if code is None:
            code = 0
        code = code % 256 if is_int(code) else 1
        if reason is None:
            reason = "Completed" if code == 0 else "Error"
        gen = c.gen
        c.gen = None
        c.kill_at = None
        if gen is not None:
            try:
                gen.close()
            except Exception:
                pass
        c.state = "terminated"
        c.exit_code = code
        c.reason = reason
        c.message = message
        c.finished_at = self.clock.ms()
        debug("container %s/%s exited %d %s" % (c.pod.uid, c.name, code, reason))
        fields = {"uid": c.pod.uid, "container": c.name}
        status = c.status()
        for key in ("exit_code", "reason", "message", "started_at", "finished_at"):
            fields[key] = status[key]
        self.push_event("container_exited", fields)

    def forget(self, pod):
        if self.pods.get(pod.uid) is pod:
            del self.pods[pod.uid]
            self.push_event("pod_deleted", {"uid": pod.uid})

    def tick(self):
        """Step every container whose time has come; finish deletions."""
        now = self.clock.ms()
        for pod in list(self.pods.values()):
            for c in pod.containers:
                if c.gen is None:
                    continue
                if c.kill_at is not None and now >= c.kill_at:
                    self.finish(c, 137, "Killed", "grace period expired")
                elif now >= c.wake_at:
                    self.step(c)
            if pod.deleting and pod.finished():
                self.forget(pod)

    def next_wakeup(self):
        """Milliseconds until a container needs the CPU (at most 1000)."""
        now = self.clock.ms()
        wait = 1000
        for pod in self.pods.values():
            for c in pod.containers:
                if c.gen is not None:
                    due = c.wake_at if c.kill_at is None else min(c.wake_at, c.kill_at)
                    wait = min(wait, max(0, due - now))
        return wait


OPS = ("hello", "ping", "create", "delete", "list", "status", "logs", "restart")
OPTIONAL_OPS = {"logs": "logs", "restart": "restart"}  # op: the capability that brings it


# ------------------------------------------------------------------------------------------
# Ports: read(timeout_ms) -> bytes (b"" if nothing came), or None at end of stream; write(data)


def _errno(exc):
    return getattr(exc, "errno", None) or (exc.args[0] if exc.args else None)


class FdPort:
    """File descriptors with os.read/os.write and select.poll (CPython; pipes, ttys, ptys)."""

    def __init__(self, rfd, wfd, write_timeout_ms=2000):
        self.rfd = rfd
        self.wfd = wfd
        self.write_timeout_ms = write_timeout_ms
        self.rpoll = select.poll()
        self.rpoll.register(rfd, select.POLLIN)
        self.wpoll = select.poll()
        self.wpoll.register(wfd, select.POLLOUT)

    def read(self, timeout_ms):
        if not self.rpoll.poll(timeout_ms):
            return b""
        try:
            data = os.read(self.rfd, 4096)
        except OSError as exc:
            if _errno(exc) == EAGAIN:
                return b""
            if _errno(exc) == EIO:  # a pty whose other side is gone
                return None
            raise
        return data if data else None

    def write(self, data):
        view = memoryview(data)
        waited = 0
        while len(view):
            try:
                n = os.write(self.wfd, view)
            except OSError as exc:
                if _errno(exc) != EAGAIN:
                    raise
                n = 0
            if n:
                view = view[n:]
                continue
            if waited >= self.write_timeout_ms:
                debug("write stalled; dropped %d bytes" % len(view))
                return  # nobody reads the line: drop, the receiver's CRC discards the rest
            self.wpoll.poll(50)
            waited += 50


class StreamPort:
    """Stream objects with select.poll (MicroPython: sys.stdin.buffer, USB CDC, files)."""

    def __init__(self, rstream, wstream):
        self.r = rstream
        self.w = wstream
        self.poller = select.poll()
        self.poller.register(rstream, select.POLLIN)

    def read(self, timeout_ms):
        if not self.poller.poll(timeout_ms):
            return b""
        buf = bytearray()
        while len(buf) < 512:
            b = self.r.read(1)  # one byte: read(n) may block until n bytes have come
            if not b:
                return bytes(buf) if buf else None
            buf += b
            if not self.poller.poll(0):
                break
        return bytes(buf)

    def write(self, data):
        self.w.write(data)
        if hasattr(self.w, "flush"):
            self.w.flush()


class UartPort:
    """A MicroPython machine.UART (or anything with any()/read()/write())."""

    def __init__(self, uart):
        self.uart = uart
        self.poller = None
        if select is not None:
            try:
                self.poller = select.poll()
                self.poller.register(uart, select.POLLIN)
            except Exception:
                self.poller = None

    def read(self, timeout_ms):
        if self.poller is not None:
            self.poller.poll(timeout_ms)
        else:
            waited = 0
            while not self.uart.any() and waited < timeout_ms:
                time.sleep_ms(2)
                waited += 2
        n = self.uart.any()
        if not n:
            return b""
        return self.uart.read(n) or b""

    def write(self, data):
        self.uart.write(data)


def serve(device, port):
    """The device's main loop: read frames, answer them, step programs, write frames."""
    reader = FrameReader(device.max_frame)
    while True:
        data = port.read(device.next_wakeup())
        if data is None:
            debug("end of stream; exiting")
            return
        if data:
            for body in reader.feed(data):
                if body is None:
                    device.frame_too_large()
                else:
                    device.handle_body(body)
        device.tick()
        for frame in device.take_output():
            port.write(b"\x00" + frame)


def open_port(path, baud=None):
    """Open a tty/pty path as a port, in raw mode where termios exists."""
    if os is not None and hasattr(os, "open") and hasattr(os, "read"):
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            import termios
            import tty
        except ImportError:
            termios = None
        if termios is not None and os.isatty(fd):
            tty.setraw(fd)
            mode = termios.tcgetattr(fd)
            mode[2] |= termios.CLOCAL | termios.CREAD  # ignore modem lines
            if baud:
                speed = getattr(termios, "B%d" % baud)
                mode[4] = speed
                mode[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, mode)
        return FdPort(fd, fd)
    stream = open(path, "r+b")  # noqa: SIM115 - the port lives as long as the program
    return StreamPort(stream, stream)


def stdio_port(stream_io=False):
    if not stream_io and os is not None and hasattr(os, "read") and hasattr(os, "write"):
        return FdPort(0, 1)
    # CPython's buffered stdin would hide bytes from poll(); its .raw is unbuffered like MicroPython's.
    rstream = getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
    return StreamPort(rstream, sys.stdout.buffer)


def run(port, **options):
    """Serve the protocol on ``port`` (FdPort, StreamPort, UartPort) until end of stream."""
    serve(Device(**options), port)


def run_usb_cdc(**options):
    """MicroPython board: serve on the USB CDC serial port (the REPL's). Ctrl-C is disabled,
    since 0x03 bytes are data here; reset the board to get the REPL back."""
    try:
        import micropython

        micropython.kbd_intr(-1)
    except ImportError:
        pass
    run(StreamPort(sys.stdin.buffer, sys.stdout.buffer), **options)


def run_uart(uart_id, baudrate=115200, uart_options=None, **options):
    """MicroPython board: serve on machine.UART(uart_id, baudrate, **uart_options)."""
    from machine import UART

    uart = UART(uart_id, baudrate, **(uart_options or {}))
    run(UartPort(uart), **options)


USAGE = """usage: vkpy_device.py [--port PATH [--baud N]] [--device-id ID] [--pods N]
                     [--log-buffer BYTES] [--max-frame BYTES] [--cpu Q] [--memory Q]
                     [--without CAPABILITY,...] [--stream-io] [--verbose]
Speaks the vkpy device protocol on stdin/stdout, or on the tty/pty at PATH."""


def parse_args(argv):
    options = {}
    port = None
    baud = None
    stream_io = False
    names = {
        "--device-id": ("device_id", str),
        "--pods": ("pods", int),
        "--log-buffer": ("log_buffer", int),
        "--max-frame": ("max_frame", int),
        "--cpu": ("cpu", str),
        "--memory": ("memory", str),
        "--without": ("without", lambda text: [c for c in text.split(",") if c]),
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        if arg in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if arg == "--verbose":
            global VERBOSE
            VERBOSE = True
            i += 1
            continue
        if arg == "--stream-io":
            stream_io = True
            i += 1
            continue
        if arg not in names and arg not in ("--port", "--baud"):
            raise ValueError("unknown option %r" % arg)
        if value is None:
            if i + 1 >= len(argv):
                raise ValueError("option %s needs a value" % arg)
            value = argv[i + 1]
            i += 1
        i += 1
        if arg == "--port":
            port = value
        elif arg == "--baud":
            baud = int(value)
        else:
            key, kind = names[arg]
            options[key] = kind(value)
    for capability in options.get("without", ()):
        if capability not in CAPABILITIES:
            raise ValueError(
                "--without: unknown capability %r (known: %s)" % (capability, ", ".join(CAPABILITIES))
            )
    if options.get("pods", 1) < 1 or options.get("log_buffer", 1) < 1:
        raise ValueError("--pods and --log-buffer must be positive")
    if not MIN_MAX_FRAME <= options.get("max_frame", MIN_MAX_FRAME) <= MAX_MAX_FRAME:
        raise ValueError("--max-frame must be between %d and %d" % (MIN_MAX_FRAME, MAX_MAX_FRAME))
    return port, baud, stream_io, options


def main(argv):
    try:
        path, baud, stream_io, options = parse_args(argv)
    except ValueError as exc:
        sys.stderr.write("%s\n%s\n" % (exc, USAGE))
        sys.exit(2)
    port = open_port(path, baud) if path else stdio_port(stream_io)
    try:
        run(port, **options)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
