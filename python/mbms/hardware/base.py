"""The hardware interface a node runtime uses: read the pack's sensors, drive its actuators.

Adapters: ``sim_link`` (a simulated plant in another process, over its own link). Real drivers
(AFE over SPI/isoSPI, contactor drivers over GPIO) implement the same four methods.
"""

from __future__ import annotations

import abc

import numpy as np

from mbms.node.logic import Contactors, Measurement


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

    @abc.abstractmethod
    def link_ok(self, now: float) -> bool:
        """False when the hardware has not answered within its timeout (lost link)."""

    @abc.abstractmethod
    def close(self) -> None: ...
