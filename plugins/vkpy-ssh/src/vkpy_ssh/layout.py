"""What a pod becomes on the device: the files of its folder, computed from the pod alone (pure).

Nothing a pod holds is ever interpreted by a shell: each container's ``<name>.run`` file is a
two-line sh script in which every word (working folder, environment, argv) is quoted with
:func:`shlex.quote`; the device's sh only reads literals from it. The environment travels in that
file (mode 0600), never on a command line (which other users of the device could read in ``ps``)
and never as SSH environment requests (which OpenSSH drops).
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath
from posixpath import join as pjoin

import attrs

from vkpy import Container, Pod, PodRejected, Volume

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WORK_DIR = "work"
VOLUMES_DIR = "volumes"
POD_FILE = "pod.json"
CONTAINERS_FILE = "containers"
SECRET_MODE = 0o600
CONFIG_MODE = 0o644
RUN_MODE = 0o600
DIR_MODE = 0o700

UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[^=\0]+")


def check_uid(uid: str) -> str:
    # A UID names a folder on the device: anything else could escape the pods folder.
    if not UID.fullmatch(uid):
        raise PodRejected(f"pod uid {uid!r} is not valid here", reason="InvalidName")
    return uid


def volume_env_name(volume_name: str) -> str:
    """The variable through which a container finds a mounted volume's folder (as ``local`` does)."""
    return "VKPY_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", volume_name.upper())


def _relative(kind: str, owner: str, path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if not path or "\0" in path or "\n" in path or relative.is_absolute() or ".." in relative.parts:
        raise PodRejected(
            f"{kind} {owner!r}: path {path!r} must be relative and stay inside its folder",
            reason="InvalidVolumePath",
        )
    return relative


def file_mode(secret: bool, requested: int) -> int:
    """0600 for Secret files, 0644 for ConfigMap files; only the owner's execute bit of the requested
    mode is kept (scripts shipped in a ConfigMap)."""
    return (SECRET_MODE if secret else CONFIG_MODE) | (requested & 0o100)


def _no_nul(what: str, value: str) -> None:
    if "\0" in value:
        raise PodRejected(
            f"{what} contains a NUL character, which a process cannot receive", reason="InvalidSpec"
        )


def validate(pod: Pod) -> None:
    """Refuse what cannot run as the pod says, before anything reaches the device."""
    check_uid(pod.uid)
    names: set[str] = set()
    for container in (*pod.init_containers, *pod.containers):
        if not _DNS_LABEL.fullmatch(container.name):
            raise PodRejected(f"container name {container.name!r} is not valid here", reason="InvalidName")
        if container.name in names:
            raise PodRejected(f"container name {container.name!r} is used twice", reason="InvalidName")
        names.add(container.name)
        if not container.argv:
            raise PodRejected(
                f"container {container.name!r} has neither command nor args: the ssh transport runs a "
                "program on the device, it cannot run an image",
                reason="NoCommand",
            )
        for word in container.argv:
            _no_nul(f"container {container.name!r}: an argument", word)
        for key, value in container.env:
            if not _ENV_NAME.fullmatch(key):
                raise PodRejected(
                    f"container {container.name!r}: environment variable name {key!r} is not valid",
                    reason="InvalidSpec",
                )
            _no_nul(f"container {container.name!r}: environment variable {key}", value)
        if container.working_dir is not None:
            _no_nul(f"container {container.name!r}: workingDir", container.working_dir)
        mounted: dict[str, str] = {}
        volumes = {volume.name for volume in pod.volumes}
        for mount in container.volume_mounts:
            if mount.name not in volumes:
                raise PodRejected(
                    f"container {container.name!r} mounts unknown volume {mount.name!r}", reason="InvalidSpec"
                )
            if mount.sub_path:
                _relative("volume mount subPath of", mount.name, mount.sub_path)
            if not mount.mount_path.startswith("/"):
                link = str(_relative("volume mount of", mount.name, mount.mount_path))
                if mounted.get(link, mount.name) != mount.name:
                    raise PodRejected(
                        f"container {container.name!r} mounts two volumes at {link!r}", reason="InvalidSpec"
                    )
                mounted[link] = mount.name
    for volume in pod.volumes:
        if not _DNS_LABEL.fullmatch(volume.name):
            raise PodRejected(f"volume name {volume.name!r} is not valid here", reason="InvalidName")
        for file in volume.files:
            _relative("volume", volume.name, file.path)


@attrs.frozen
class DeviceFacts:
    """What the device told us at connection time (``device.sh info``)."""

    home: str
    boot_id: str = ""
    cpus: int | None = None
    memory_kib: int | None = None
    arch: str = ""
    os: str = ""
    missing: tuple[str, ...] = ()
    default_signal: bool = False
    stamper: str = "date"

    @classmethod
    def parse(cls, text: str) -> DeviceFacts:
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        if "END" not in text.splitlines():
            raise ValueError("the device script's info output is incomplete")

        def number(key: str) -> int | None:
            raw = values.get(key, "").strip()
            return int(raw) if raw.isdigit() else None

        return cls(
            home=values.get("home", ""),
            boot_id=values.get("boot_id", ""),
            cpus=number("cpus"),
            memory_kib=number("memory_kib"),
            arch=values.get("arch", ""),
            os=values.get("os", ""),
            missing=tuple(values.get("missing", "").split()),
            default_signal=values.get("default_signal") == "yes",
            stamper=values.get("stamper", "date"),
        )


@attrs.frozen
class PodPaths:
    """Where one pod lives on the device."""

    pod_dir: str

    def container(self, name: str, suffix: str) -> str:
        return pjoin(self.pod_dir, f"{name}{suffix}")

    def log(self, name: str, previous: bool = False) -> str:
        return self.container(name, ".previous.log" if previous else ".log")

    @property
    def work(self) -> str:
        return pjoin(self.pod_dir, WORK_DIR)

    def volume(self, name: str) -> str:
        return pjoin(self.pod_dir, VOLUMES_DIR, name)


def container_env(pod: Pod, container: Container, paths: PodPaths, facts: DeviceFacts) -> dict[str, str]:
    """A fresh environment: nothing of the SSH session's own reaches the container."""
    env = {"PATH": BASE_PATH, "HOME": facts.home or "/", "LANG": "C.UTF-8", "HOSTNAME": pod.name}
    for mount in container.volume_mounts:
        target = paths.volume(mount.name)
        if mount.sub_path:
            target = pjoin(target, mount.sub_path)
        env[volume_env_name(mount.name)] = target
    env.update(container.env_dict)
    return env


def run_file(pod: Pod, container: Container, paths: PodPaths, facts: DeviceFacts) -> bytes:
    """The sh script that becomes the container: enter its folder, then exec its argv with its
    environment and nothing else. Every word is quoted; the device's sh expands nothing."""
    working_dir = container.working_dir or paths.work
    cannot = f"vkpy: cannot enter the working directory {working_dir}"
    words = ["env", "-i"]
    if facts.default_signal:
        # Background jobs of a non-interactive sh start with SIGINT and SIGQUIT ignored; a
        # container must get the default dispositions, as under a container runtime.
        words.append("--default-signal=INT,QUIT")
    words += [f"{key}={value}" for key, value in container_env(pod, container, paths, facts).items()]
    argv = list(container.argv)
    if "=" in argv[0] or argv[0].startswith("-"):
        # env(1) would read such a word as a variable or an option: let sh exec it instead.
        words += ["/bin/sh", "-c", 'exec "$@"', "vkpy-exec"]
    words += argv
    lines = [
        f"# vkpy-ssh: container {container.name} of pod {pod.uid}. Generated: every word is quoted.",
        f"cd -- {shlex.quote(working_dir)} 2>/dev/null || {{ "
        f"printf '%s\\n' {shlex.quote(cannot)} >{shlex.quote(container.name + '.cannotrun')}; "
        f"printf '%s\\n' {shlex.quote(cannot)} >&2; exit 128; }}",
        "exec " + shlex.join(words),
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def containers_file(pod: Pod) -> bytes:
    init = " ".join(c.name for c in pod.init_containers)
    app = " ".join(c.name for c in pod.containers)
    return f"{init}\n{app}\n".encode("ascii")


def pod_file(pod: Pod, node_name: str) -> bytes:
    """For people and later vkpy versions: who the pod is, and each container's image (which has
    no meaning on a bare device, but is recorded)."""
    meta = {
        "uid": pod.uid,
        "namespace": pod.namespace,
        "name": pod.name,
        "node": node_name,
        "restart_policy": pod.restart_policy,
        "init_containers": [{"name": c.name, "image": c.image} for c in pod.init_containers],
        "containers": [{"name": c.name, "image": c.image} for c in pod.containers],
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    return json.dumps(meta, indent=1, sort_keys=True).encode("utf-8") + b"\n"


@attrs.frozen
class Entry:
    """One thing to create in the pod folder: a folder, a file (with its mode) or a symlink."""

    path: str
    kind: str  # "dir" | "file" | "link"
    mode: int = DIR_MODE
    content: bytes = attrs.field(default=b"", repr=False)
    target: str = ""


def volume_entries(root: str, volumes: tuple[Volume, ...]) -> list[Entry]:
    if not volumes:
        return []  # no empty folder: two SFTP requests fewer for most pods
    entries = [Entry(pjoin(root, VOLUMES_DIR), "dir")]
    for volume in volumes:
        folder = pjoin(root, VOLUMES_DIR, volume.name)
        entries.append(Entry(folder, "dir"))
        made: set[str] = set()
        for file in volume.files:
            relative = _relative("volume", volume.name, file.path)
            parent = folder
            for part in relative.parts[:-1]:
                parent = pjoin(parent, part)
                if parent not in made:
                    made.add(parent)
                    entries.append(Entry(parent, "dir"))
            entries.append(
                Entry(pjoin(folder, str(relative)), "file", file_mode(volume.secret, file.mode), file.content)
            )
    return entries


def mount_links(pod: Pod, root: str, final: PodPaths) -> list[Entry]:
    """A volume mounted at a relative path appears at that path in the pod's work folder, as a
    symlink to the volume (absolute mount paths are announced by VKPY_VOLUME_<NAME> only: vkpy
    never writes outside the pod folder)."""
    links: dict[str, Entry] = {}
    made: set[str] = set()
    entries: list[Entry] = []
    for container in (*pod.init_containers, *pod.containers):
        for mount in container.volume_mounts:
            if mount.mount_path.startswith("/"):
                continue
            relative = _relative("volume mount of", mount.name, mount.mount_path)
            target = final.volume(mount.name)
            if mount.sub_path:
                target = pjoin(target, mount.sub_path)
            path = pjoin(root, WORK_DIR, str(relative))
            existing = links.get(path)
            if existing is not None:
                if existing.target != target:
                    raise PodRejected(
                        f"two containers mount different volumes at {mount.mount_path!r}",
                        reason="InvalidSpec",
                    )
                continue
            parent = pjoin(root, WORK_DIR)
            for part in relative.parts[:-1]:
                parent = pjoin(parent, part)
                if parent not in made:
                    made.add(parent)
                    entries.append(Entry(parent, "dir"))
            links[path] = Entry(path, "link", target=target)
    return entries + list(links.values())


def pod_entries(pod: Pod, node_name: str, root: str, final: PodPaths, facts: DeviceFacts) -> list[Entry]:
    """Everything to create, in order, in the folder ``root`` that will be renamed to ``final``."""
    entries = [
        Entry(root, "dir"),
        Entry(pjoin(root, POD_FILE), "file", RUN_MODE, pod_file(pod, node_name)),
        Entry(pjoin(root, CONTAINERS_FILE), "file", RUN_MODE, containers_file(pod)),
        Entry(pjoin(root, WORK_DIR), "dir"),
    ]
    for container in (*pod.init_containers, *pod.containers):
        entries.append(
            Entry(
                pjoin(root, f"{container.name}.run"), "file", RUN_MODE, run_file(pod, container, final, facts)
            )
        )
    entries += volume_entries(root, pod.volumes)
    entries += mount_links(pod, root, final)
    return entries


def env_names(pod: Pod) -> Mapping[str, list[str]]:
    """Environment variable names per container, for logs (values are never logged)."""
    return {c.name: [k for k, _ in c.env] for c in (*pod.init_containers, *pod.containers)}
