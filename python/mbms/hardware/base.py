"""The hardware interface a node runtime uses: read the pack's sensors, drive its actuators.

Adapters: ``sim_link`` (a simulated plant in another process, over its own link) and ``linux``
(:mod:`mbms.hardware.linux`: LTC6813 chain on spidev, IVT-S and iso165C on CAN, contactors on
GPIO through libgpiod), both implementing the same methods.
"""

from __future__ import annotations

import abc
import asyncio
import time

import numpy as np

from mbms.types import Contactors, Measurement


class DeviceFault(Exception):
    """A device reading the driver cannot trust. ``kind`` names the protection it trips (for
    example ``afe_pec``, ``afe_chain_break``, ``afe_open_wire``, ``current_sensor_timeout``,
    ``contactor_welded``, ``insulation_fault``); the message says what was seen."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


class Hardware(abc.ABC):
    @property
    def name(self) -> str:
        """What the node's sensors are reached through, for messages (e.g. ``udp://127.0.0.1:47000``)."""
        return type(self).__name__

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the link; does not wait for the first sample."""

    @abc.abstractmethod
    def read(self) -> tuple[Measurement, float] | None:
        """The latest sample and the local monotonic time it arrived, or None if none yet."""

    @abc.abstractmethod
    def command(self, contactors: Contactors, balance: np.ndarray) -> None:
        """Command the contactors and the balancing switches (sent at once, not queued)."""

    def request_sample(self) -> None:
        """Ask for a new sample now (an on-demand conversion of current, string and bus voltage),
        taken after this call. Drivers that sample continuously need not do anything."""

    async def fresh_sample(self, after: float, timeout_s: float) -> tuple[Measurement, float] | None:
        """Request a sample and wait (at most ``timeout_s``) for one that arrived after the local
        monotonic time ``after``; None if none came. Drivers with an arrival event override this."""
        self.request_sample()
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.read()
            if s is not None and self.taken_after(s, after):
                return s
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(0.001, left))

    def taken_after(self, sample: tuple[Measurement, float], after: float) -> bool:
        """Whether ``sample`` (as :meth:`read` returns it) was converted after the local
        monotonic time ``after``. By default: it arrived after it, which holds for drivers that
        convert on request; a driver whose samples can be converted before they arrive says so."""
        return sample[1] > after

    def diagnosis(self) -> str | None:
        """Why the latest sample is marked invalid (which device, which protection), for the
        fail-safe reason; None if the adapter cannot tell."""
        return None

    @abc.abstractmethod
    def link_ok(self, now: float) -> bool:
        """False when the hardware has not answered within its timeout (lost link)."""

    @abc.abstractmethod
    def close(self) -> None: ...
