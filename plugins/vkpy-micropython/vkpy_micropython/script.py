"""What a pod means on a MicroPython board: one container whose command is a Python interpreter and
a script, the way one runs CPython::

    command: [python, -c, "print('hello')"]   # inline source; ARGV == ['-c']
    command: [python, /app/main.py, --fast]    # a file of a ConfigMap or Secret volume mounted in
                                               # the container; ARGV == ['/app/main.py', '--fast']

``python``, ``python3`` and ``micropython`` are accepted as the interpreter's name. The resolved
environment reaches the script as a preamble run before it (see :func:`preamble`).
"""

from __future__ import annotations

import posixpath

import attrs

from vkpy import Container, Pod, PodRejected, Volume

INTERPRETERS = frozenset({"python", "python3", "micropython"})
FORBIDDEN_BYTES = frozenset(b"\x01\x02\x03\x04")
"""The raw REPL's control characters: in a script they would end or reset its transfer."""
USAGE = "command must be [python, -c, SOURCE] or [python, /path/to/script.py] (a file of a mounted ConfigMap)"

__all__ = ["INTERPRETERS", "Script", "preamble", "script_for"]


@attrs.frozen
class Script:
    """A container's script, resolved when the pod was created (a restart runs the same one)."""

    container: str
    source: bytes = attrs.field(repr=False)
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)


def script_for(pod: Pod) -> Script:
    """The pod's script; raises :class:`vkpy.PodRejected` for a pod a board cannot run."""
    if pod.init_containers:
        raise PodRejected(
            "a MicroPython board runs one script per pod: init containers "
            f"({', '.join(c.name for c in pod.init_containers)}) are not supported",
            reason="InitContainersNotSupported",
        )
    if len(pod.containers) != 1:
        raise PodRejected(
            f"a MicroPython board runs one script per pod: the pod has {len(pod.containers)} containers",
            reason="OneContainerPerPod",
        )
    container = pod.containers[0]
    source, argv = _source(pod, container)
    bad = sorted(FORBIDDEN_BYTES.intersection(source))
    if bad:
        raise PodRejected(
            f"the script contains the control character(s) {', '.join(f'0x{b:02x}' for b in bad)}, "
            "which the raw REPL cannot carry; write them as escapes in strings ('\\x04')",
            reason="InvalidScript",
        )
    return Script(container=container.name, source=source, argv=argv, env=container.env)


def _source(pod: Pod, container: Container) -> tuple[bytes, tuple[str, ...]]:
    argv = container.argv
    if not argv:
        raise PodRejected(f"container {container.name!r} has no command: {USAGE}", reason="InvalidScript")
    if argv[0] not in INTERPRETERS:
        raise PodRejected(
            f"container {container.name!r} runs {argv[0]!r}, not a Python interpreter: {USAGE}",
            reason="InvalidScript",
        )
    if len(argv) < 2:
        raise PodRejected(f"container {container.name!r} names no script: {USAGE}", reason="InvalidScript")
    if argv[1] == "-c":
        if len(argv) < 3:
            raise PodRejected(
                f"container {container.name!r}: -c needs the source: {USAGE}", reason="InvalidScript"
            )
        return argv[2].encode("utf-8"), ("-c", *argv[3:])
    if argv[1].startswith("-"):
        raise PodRejected(
            f"container {container.name!r}: option {argv[1]!r} is not supported: {USAGE}",
            reason="InvalidScript",
        )
    return _file(pod, container, argv[1]), tuple(argv[1:])


def _file(pod: Pod, container: Container, path: str) -> bytes:
    """The content of ``path`` in one of the container's ConfigMap or Secret volume mounts."""
    wanted = posixpath.normpath(posixpath.join(container.working_dir or "/", path))
    volumes = {v.name: v for v in pod.volumes}
    for mount in container.volume_mounts:
        volume = volumes.get(mount.name)
        if volume is None:
            continue
        mount_path = posixpath.normpath(mount.mount_path)
        if mount.sub_path:
            # The mount is one file (or folder) of the volume.
            if wanted == mount_path:
                relative = posixpath.normpath(mount.sub_path)
            elif wanted.startswith(mount_path + "/"):
                relative = posixpath.join(mount.sub_path, wanted[len(mount_path) + 1 :])
            else:
                continue
        elif wanted.startswith(mount_path.rstrip("/") + "/"):
            relative = wanted[len(mount_path.rstrip("/")) + 1 :]
        else:
            continue
        content = _volume_file(volume, posixpath.normpath(relative))
        if content is not None:
            return content
    mounted = ", ".join(m.mount_path for m in container.volume_mounts) or "none"
    raise PodRejected(
        f"container {container.name!r}: script {wanted} is not a file of a ConfigMap or Secret volume "
        f"mounted in the container (mounts: {mounted})",
        reason="ScriptNotFound",
    )


def _volume_file(volume: Volume, relative: str) -> bytes | None:
    for file in volume.files:
        if posixpath.normpath(file.path) == relative:
            return file.content
    return None


def preamble(script: Script) -> bytes:
    """The code run just before the script, in the same interpreter: ``ENV`` (a dict of the
    container's environment) and ``ARGV`` as globals, and ``os.environ`` updated where the port
    has it (``os.putenv`` where it has that instead). A separate execution, so that the script's
    line numbers in tracebacks stay its own. Values are Python literals (``repr``): no string of
    the pod is ever interpreted as code."""
    env = "{" + ", ".join(f"{name!r}: {value!r}" for name, value in script.env) + "}"
    argv = "[" + ", ".join(repr(arg) for arg in script.argv) + "]"
    return (
        f"ENV = {env}\n"
        f"ARGV = {argv}\n"
        "try:\n"
        "    import os as _vkpy_os\n"
        "    if hasattr(_vkpy_os, 'environ'):\n"
        "        _vkpy_os.environ.update(ENV)\n"
        "    elif hasattr(_vkpy_os, 'putenv'):\n"
        "        for _vkpy_name in ENV:\n"
        "            _vkpy_os.putenv(_vkpy_name, ENV[_vkpy_name])\n"
        "    del _vkpy_os\n"
        "except ImportError:\n"
        "    pass\n"
    ).encode()
