"""The two-phase close's fresh sample over the plant link is the reply to the fresh request.

The runtime sends the period's command (whose reply carries the plant's periodic conversion of the
string and bus voltage, up to one sensor period old), then asks for a fresh sample. The period's
reply arrives after that request was made, so "arrived after the request" did not tell the two
apart: the node closed its main contactor on the periodic conversion (stop 23: a 20 A load step
landing in that sensor period gave a close at a true 4.64 V). A plant on a real Unix datagram
socket answers the two kinds of command with different bus voltages, as the real plant's periodic
and on-demand conversions differ after a step.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mbms.hardware.sim_link import SimLinkHardware
from mbms.plant_link import measurement_to_wire, pack, unpack
from mbms.types import Contactors, Measurement

V_BUS_PERIODIC_V = 350.0  # the plant's last periodic conversion: before the step
V_BUS_FRESH_V = 344.0  # converted on request: after the step
#: The plant answers a fresh request this much later than a period's command (a conversion on
#: demand), so the period's reply is certain to arrive first, after the request was made.
ON_DEMAND_CONVERSION_S = 0.05


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[tuple[str, list[dict]]]:
    """A plant on a real Unix datagram socket: (its path, the commands it received)."""
    path = str(tmp_path / "plant.sock")
    stop, seen = threading.Event(), []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, addr = sock.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                continue
            cmd = unpack(raw)
            seen.append(cmd)
            fresh = cmd.get("fresh", False)
            if fresh:
                # an on-demand conversion takes time; the period's reply is already on its way
                stop.wait(ON_DEMAND_CONVERSION_S)
            m = Measurement(t_s=0.1 * len(seen), v_cell_v=np.full(4, 3.3), t_cell_c=np.full(2, 25.0), i_a=0.0,
                            v_string_v=350.0, v_bus_v=V_BUS_FRESH_V if fresh else V_BUS_PERIODIC_V,
                            feedback=Contactors(cmd["neg"], cmd["pos"], cmd["pre"]), valid=True)
            try:
                sock.sendto(pack(measurement_to_wire(cmd["k"], cmd["seq"], m)), addr)
            except OSError:  # the node's socket is gone (the test ended)
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield path, seen
    finally:
        stop.set()
        th.join(2.0)
        sock.close()


Sample = tuple[Measurement, float] | None


def _with_link(path: str, body: Callable[[SimLinkHardware], Awaitable[Sample]]) -> Sample:
    """Run ``body`` on a started link to the plant at ``path``, closing it after."""

    async def run() -> Sample:
        hw = SimLinkHardware(f"unix://{path}", 0, 1.0)
        await hw.start()
        try:
            return await body(hw)
        finally:
            hw.close()

    return asyncio.run(run())


def test_the_fresh_sample_is_the_reply_to_the_fresh_request(plant: tuple[str, list[dict]]) -> None:
    path, seen = plant

    async def period_then_fresh(hw: SimLinkHardware) -> Sample:
        # the period: its command goes out, the runtime asks for a fresh sample straight after
        hw.command(Contactors(neg=True, pos=False, pre=True), np.zeros(4, dtype=bool))
        return await hw.fresh_sample(hw.clock(), 2.0)

    got = _with_link(path, period_then_fresh)
    assert [c.get("fresh", False) for c in seen] == [False, True], seen
    assert got is not None, "no fresh sample within 2 s"
    assert got[0].v_bus_v == V_BUS_FRESH_V, (
        f"the fresh sample read a bus of {got[0].v_bus_v} V: the period command's reply "
        f"(the periodic conversion, {V_BUS_PERIODIC_V} V) was taken for the on-demand one")


def test_no_fresh_sample_without_a_command(plant: tuple[str, list[dict]]) -> None:
    """Before any command there is no request to answer: None at once, not a wait."""
    path, seen = plant

    async def fresh_only(hw: SimLinkHardware) -> Sample:
        return await hw.fresh_sample(hw.clock(), 2.0)

    assert _with_link(path, fresh_only) is None
    assert seen == []
