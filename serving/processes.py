"""A server subprocess on 127.0.0.1 that is ready once a URL answers 200: the simulator, the
service, Chroma, vLLM or LiteLLM's proxy, for the commands that start them (``tier-router
load``, ``serving/check_bento.py``) and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Start ``command`` (its output to ``log``) and wait until ``ready_url`` answers 200.
    Raises ``RuntimeError`` with the log's tail if it exits, or is not ready in ``timeout_s``,
    or its log says ``fail_marker``. ``group``: own process group (servers that fork workers:
    :meth:`signal` reaches them all)."""

    def __init__(self, name: str, command: Sequence[str], ready_url: str, log: Path, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout_s: float = 240.0, fail_marker: str | None = None,
                 group: bool = False) -> None:
        self.name, self.log_path, self.group = name, log, group
        self._log = log.open("w")
        self.proc = subprocess.Popen(list(command), env={**os.environ, **(env or {})},
                                     cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=group)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with {self.proc.returncode}")
            if fail_marker is not None and fail_marker in self.log():
                self._fail(f"failed to start ({fail_marker!r} in its log)")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self._fail(f"not ready within {timeout_s:.0f} s")

    def log(self, tail: int | None = None) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def signal(self, sig: int) -> None:
        if self.group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.group:
                self.signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def _fail(self, why: str) -> None:
        tail = self.log(3000)
        self.stop()
        raise RuntimeError(f"{self.name} {why}:\n{tail}")
