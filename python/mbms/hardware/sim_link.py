"""Hardware adapter for a simulated plant served by ``mbms plant`` over the node's own link.

Each control period the runtime calls :meth:`SimLinkHardware.command`; the datagram carries the
contactor/balancing command and doubles as the request for the next sample, which the plant sends
back at once. :meth:`read` returns the latest sample with its local arrival time, so the runtime
can judge staleness by its own clock. Replies that are malformed, for another string, or older
than the newest one received (sequence number) are counted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from mbms.errors import FrameError
from mbms.hardware.base import Hardware
from mbms.config_views import HardwareSection, parse_link
from mbms.types import Contactors, Measurement
from mbms.plant_link import command_to_wire, measurement_from_wire, pack, unpack

log = logging.getLogger("mbms.hardware.sim_link")


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, owner: SimLinkHardware) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._on_datagram(data)

    def error_received(self, exc: Exception) -> None:  # plant not (yet/any more) listening
        self.owner.errors += 1


class SimLinkHardware(Hardware):
    @classmethod
    def from_config(cls, cfg: HardwareSection) -> SimLinkHardware:
        """The ``mbms.hardware`` entry point ``sim``: the node's link to ``mbms plant``."""
        return cls(cfg.link, cfg.string, cfg.link_timeout_ms / 1000.0)

    def __init__(self, link: str, string: int, timeout_s: float, clock: Any = time.monotonic) -> None:
        self.kind, self.addr = parse_link(link)
        self.string = string
        self.timeout_s = timeout_s
        self.clock = clock
        self._seq = 0
        self._last_seq = -1
        self._latest: tuple[Measurement, float] | None = None
        self._dgram: asyncio.DatagramTransport | None = None
        self._started_at = 0.0
        self._own_path: str | None = None
        self.malformed = 0
        self.errors = 0
        self.replies = 0
        self._last_cmd: tuple[Contactors, np.ndarray] | None = None
        self._arrived: asyncio.Event | None = None
        self._refused: str | None = None
        self._fresh_seq = 0  # seq of the latest fresh request; its reply (or a later one) is fresh

    @property
    def name(self) -> str:
        return f"{self.kind}://{self.addr[0]}:{self.addr[1]}" if self.kind == "udp" else f"unix://{self.addr}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.kind == "udp":
            self._dgram, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), remote_addr=self.addr)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Replies need a bound name. A filesystem path (not an abstract name): abstract Unix
            # addresses belong to a network namespace, and a node in another namespace than the
            # plant (a host of its own on the peer network) must still reach its sensors.
            self._own_path = f"{self.addr}.{self.string}.{os.getpid()}"
            if os.path.exists(self._own_path):
                os.unlink(self._own_path)
            sock.bind(self._own_path)
            sock.connect(self.addr)
            sock.setblocking(False)
            self._dgram, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)
        self._started_at = self.clock()
        self._arrived = asyncio.Event()

    def _on_datagram(self, raw: bytes) -> None:
        try:
            obj = unpack(raw)
            if obj.get("op") == "error":
                # The plant refused our request (e.g. hardware.string beyond its strings): the
                # node stays fail-safe open on no measurement; say why once, at warning level.
                msg = str(obj.get("msg"))[:200]
                if msg != self._refused:
                    self._refused = msg
                    log.warning("plant %s refused string %d: %s", self.name, self.string, msg)
                raise FrameError(f"plant refused: {msg}")
            if obj.get("op") != "meas" or obj.get("k") != self.string or not isinstance(obj.get("seq"), int):
                raise FrameError("plant link: expected a 'meas' reply for this string")
            meas = measurement_from_wire(obj)
        except FrameError as exc:
            self.malformed += 1
            log.debug("plant link datagram dropped: %s", exc)
            return
        if obj["seq"] <= self._last_seq:  # a late reply overtaken by a newer one
            self.malformed += 1
            return
        self._last_seq = obj["seq"]
        self.replies += 1
        self._latest = (meas, self.clock())
        if self._arrived is not None:
            self._arrived.set()

    def read(self) -> tuple[Measurement, float] | None:
        return self._latest

    def command(self, contactors: Contactors, balance: np.ndarray) -> None:
        self._last_cmd = (contactors, balance)
        self._send(contactors, balance, fresh=False)

    def _send(self, contactors: Contactors, balance: np.ndarray, fresh: bool) -> None:
        if self._dgram is None:
            return
        self._seq += 1
        msg = command_to_wire(self.string, self._seq, contactors, balance)
        if fresh:
            msg["fresh"] = True
        try:
            self._dgram.sendto(pack(msg))
        except OSError:  # plant gone: the missing replies make the link stale
            self.errors += 1

    def request_sample(self) -> None:
        """Repeat the last command with ``fresh``: the plant converts now and replies at once."""
        if self._last_cmd is not None:
            self._send(*self._last_cmd, fresh=True)
            self._fresh_seq = self._seq

    async def fresh_sample(self, after: float, timeout_s: float) -> tuple[Measurement, float] | None:
        """Only the reply to the fresh request (or a later one) will do. A reply that merely
        arrives after ``after`` may answer the period's own command, sent just before: the plant
        then reports its periodic conversion of the string and bus voltage, up to one sensor
        period (100 ms in the example plant) old. Taking that for fresh let a load step landing
        in that time go unseen before a main close (stop 23's 4.64 V close at a 0.38 s step)."""
        if self._arrived is None or self._last_cmd is None:
            return None  # nothing commanded yet: no request to answer
        self._arrived.clear()
        self.request_sample()
        wanted_seq = self._fresh_seq
        deadline = self.clock() + timeout_s
        while True:
            s = self._latest
            if s is not None and s[1] > after and self._last_seq >= wanted_seq:
                return s
            left = deadline - self.clock()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except asyncio.TimeoutError:
                return None
            self._arrived.clear()

    def link_ok(self, now: float) -> bool:
        last = self._latest[1] if self._latest else self._started_at
        return now - last <= self.timeout_s and self._latest is not None

    def close(self) -> None:
        if self._dgram is not None:
            self._dgram.close()
            self._dgram = None
        if self._own_path is not None and os.path.exists(self._own_path):
            os.unlink(self._own_path)
