"""systemd supervision of a node: ``Type=notify`` READY and WATCHDOG from the control loop.

sd_notify(3) is a datagram to the Unix socket in ``$NOTIFY_SOCKET`` (an abstract one if it starts
with '@'). READY=1 goes out after the first control period; WATCHDOG=1 from the period hook every
half of ``$WATCHDOG_USEC`` (systemd.service(5): "send ... at least every half the interval"), so a
loop that stalls stops the pings and systemd restarts the service (the contactors are already
open: the plant's or the driver's command timeout, brief S1). Without ``$NOTIFY_SOCKET`` (not run
by systemd) this does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger("mbms.systemd")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID set for another process: the watchdog is not ours (sd_watchdog_enabled(3))
        self.watchdog_s = int(usec) / 1e6 / 2 if usec and (not pid or int(pid) == os.getpid()) else None
        self.ready = False
        self.pings = 0
        self._last = float("-inf")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, text: str) -> None:
        if self._sock is None or self.address is None:
            return
        try:
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:  # systemd gone (shutdown): nothing to tell
            log.debug("sd_notify %r failed: %s", text, exc)

    def on_period(self, rt: Any, now: float) -> None:
        if not self.ready:
            self.ready = True
            self.notify(f"READY=1\nSTATUS=control loop running, node {rt.node.id}\nMAINPID={os.getpid()}")
        if self.watchdog_s is not None and now - self._last >= self.watchdog_s:
            self._last = now
            self.pings += 1
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        self.notify("STOPPING=1")
        if self._sock is not None:
            self._sock.close()
