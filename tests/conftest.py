"""Shared helpers: free ports, waiting on conditions with deadlines, child processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str = "condition", poll_s: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


class Proc:
    """A child Python process with line-wise stdout reading."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        e = dict(os.environ)
        e["PYTHONPATH"] = str(TESTS) + os.pathsep + e.get("PYTHONPATH", "")
        e["PYTHONUNBUFFERED"] = "1"
        e.update(env or {})
        import tempfile

        # stderr to a file: a chatty child must never block on a full pipe nobody reads
        self.err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, env=e)
        self.lines: list[str] = []

    def read_until(self, pred: Callable[[str], bool], timeout_s: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        assert self.p.stdout is not None
        sel.register(self.p.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"process {self.p.args} gave no matching line in {timeout_s} s; "
                                     f"lines {self.lines[-5:]}; stderr {self.stderr_tail()}")
            if sel.select(timeout=left):
                line = self.p.stdout.readline()
                if not line:
                    self.p.wait(5)
                    raise AssertionError(f"process exited ({self.p.poll()}); lines {self.lines[-5:]}; "
                                         f"stderr {self.stderr_tail()}")
                self.lines.append(line.rstrip("\n"))
                if pred(line):
                    return line

    def read_json(self, key: str, timeout_s: float) -> dict[str, Any]:
        line = self.read_until(lambda s: s.startswith("{") and f'"{key}"' in s, timeout_s)
        return json.loads(line)  # type: ignore[no-any-return]

    def stderr_tail(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read()[-3000:]

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture(scope="session")
def shipped_keys() -> None:
    """The message keys of the shipped example systems, provisioned as a user does before starting
    a node on one by name (`mbms keys new --for SYSTEM`: the key file the system file names, next
    to it; gitignored and never packaged). A node refuses to start without it."""
    from mbms.paths import data_dir

    for system in sorted((data_dir() / "systems").glob("*.toml")):
        text = system.read_text()
        key_line = next((ln for ln in text.splitlines() if ln.startswith("key_file")), None)
        if key_line is None:  # a plant description, not a peer system
            continue
        key = system.parent / key_line.split('"')[1]
        if not key.exists():
            subprocess.run([sys.executable, "-m", "mbms", "keys", "new", "--for", system.stem],
                           check=True, capture_output=True, text=True, timeout=60)

