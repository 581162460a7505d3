"""Run `vkpy run` as a real process, the way a user does, with its log kept for the test report."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vkpy.testing import wait_for


class VkpyProcess:
    """A `vkpy run -c CONFIG` process. ``config`` is the YAML document as a dict."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "vkpy.yaml"
        self.log_path = workdir / "vkpy.log"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> VkpyProcess:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vkpy", "run", "-c", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_logged(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if not self.running and text not in self.log_text():
                raise AssertionError(
                    f"vkpy exited ({self.process and self.process.returncode}):\n{self.log_text()[-3000:]}"
                )
            return text in self.log_text()

        wait_for(seen, timeout=timeout, what=f"vkpy to log {text!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> VkpyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
