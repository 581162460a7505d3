"""The device script itself, run by the shells a device may have (no SSH): its log records must be
what vkpy.logs reads, whichever way it timestamps them, its control channel must refuse paths, and
the shells it starts must not run the login user's rc files."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest

from vkpy.logs import parse_cri_line
from vkpy.testing import wait_for
from vkpy.testing.pytest_plugin import missing_part

SCRIPT = Path(__file__).resolve().parents[2] / "plugins" / "vkpy-ssh" / "src" / "vkpy_ssh" / "device.sh"

# Each way of timestamping: bash's $EPOCHREALTIME, and date(1) once per line under dash. Busybox ash
# (a third way to the fast path) joins where it is installed.
STAMPERS = [("bash", {}), ("dash", {"VKPY_STAMP": "date"})]
if shutil.which("busybox"):
    STAMPERS.append(("busybox sh", {}))


@pytest.mark.parametrize(("shell", "env"), STAMPERS, ids=[s for s, _ in STAMPERS])
def test_output_becomes_cri_records_stamped_when_read(shell: str, env: dict[str, str]) -> None:
    before = datetime.datetime.now(datetime.UTC)
    data = "first line\n  spaced \\ back\\slash %s %d\ttab\n\nlast without newline"
    result = subprocess.run(
        [*shell.split(), str(SCRIPT), "stamp", "stderr"],
        input=data.encode(),
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    )
    after = datetime.datetime.now(datetime.UTC)
    lines = [parse_cri_line(raw) for raw in result.stdout.splitlines(keepends=True)]
    assert all(line is not None for line in lines), result.stdout
    assert b"".join(line.data for line in lines if line) == data.encode()
    assert {line.stream for line in lines if line} == {"stderr"}
    for line in lines:
        assert line is not None
        assert before - datetime.timedelta(seconds=1) <= line.time <= after
    # The last piece, without a newline, is a partial record.
    assert result.stdout.splitlines()[-1].split(b" ")[2] == b"P"


def test_the_civil_date_arithmetic_matches_the_calendar() -> None:
    days = [0, 59, 60, 365, 11016, 11017, 19782, 20454, 47482]  # leap days, 2000-02-29, 2100...
    script = "; ".join(f"civil {d}; echo $DATE" for d in days)
    result = subprocess.run(
        ["sh", "-c", f'. "$0"; {script}', str(SCRIPT)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "VKPY_DEVICE_LIB": "1"},
    )
    expected = [(datetime.date(1970, 1, 1) + datetime.timedelta(days=d)).strftime("%Y-%m-%dT") for d in days]
    assert result.stdout.split() == expected


def test_the_control_channel_refuses_paths_and_unknown_commands(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    requests = "1 status ../../etc\n2 delete .hidden 0\n3 start a/b\n4 rm x\n5 status x y z\n6 ping\n"
    result = subprocess.run(
        ["sh", str(SCRIPT), "serve", str(pods)], input=requests, capture_output=True, text=True, check=True
    )
    answers = [line for line in result.stdout.splitlines() if line.startswith("@@")]
    assert answers == ["@@\t1\t2", "@@\t2\t2", "@@\t3\t2", "@@\t4\t1", "@@\t5\t2", "@@\t6\t0"]
    assert "pong" in result.stdout
    assert list(pods.iterdir()) == []


def test_the_shells_it_starts_never_run_the_login_users_rc_files(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        missing_part("bash, the shell whose rc files are at stake")
    # As under sshd: SSH_CLIENT set and sh (dash) leaving SHLVL at 0, so a `bash -c` would source
    # ~/.bashrc (slow on a board, a `pyenv init` here, and its output would pollute ours).
    marker = tmp_path / "rc-ran"
    rc = f"echo stray-output; echo ran >> {marker}\n"
    (tmp_path / ".bashrc").write_text(rc)
    (tmp_path / "bash_env").write_text(rc)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SSH_CLIENT": "192.0.2.1 40000 22",
        "SSH2_CLIENT": "192.0.2.1 40000 22",
        "BASH_ENV": str(tmp_path / "bash_env"),
        "ENV": str(tmp_path / "bash_env"),
        "SHLVL": "0",
    }
    pods = tmp_path / "pods"
    pods.mkdir()
    info = subprocess.run(
        ["sh", str(SCRIPT), "info"], env=env, capture_output=True, text=True, check=True, timeout=30
    )
    assert "stray-output" not in info.stdout
    assert "stamper=shell" in info.stdout.splitlines()
    # A pod started as vkpy starts one: its supervisor's bash stampers run without them too.
    pod = pods / "p1"
    pod.mkdir()
    (pod / "containers").write_text("\nmain\n")
    (pod / "main.run").write_text("exec echo hello\n")
    serve = subprocess.run(
        ["sh", str(SCRIPT), "serve", str(pods)],
        input="1 ping\n2 start p1\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert serve.stdout.splitlines() == ["pong", "@@\t1\t0", "@@\t2\t0"]
    wait_for(lambda: (pod / "main.exit").exists(), timeout=20, what="the container's exit record")
    assert "exit_code=0" in (pod / "main.exit").read_text()
    records = [parse_cri_line(raw) for raw in (pod / "main.log").read_bytes().splitlines(keepends=True)]
    assert [record.data for record in records if record] == [b"hello\n"]
    assert not marker.exists()
