"""``mbms plant``: runs the simulated plant in real time and serves each string to its node.

The plant (``mbms.plant.Plant``, Rust) is stepped every ``dt_s`` of wall time by ``dt_s *
time_scale`` of plant time. Nodes reach it over their own link (:mod:`mbms.plant_link`): each
command datagram is applied to the named string and answered with that string's measurement.

Contactor driver watchdog: real contactor drivers drop out when the controller stops refreshing
them; likewise, a string whose node has sent no command for ``command_timeout_s`` is opened here
(a killed node's string does not stay on the bus).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Protocol

import numpy as np

from mbms.errors import FrameError, InputError
from mbms.config_views import parse_link
from mbms.plant_link import measurement_to_wire, pack, unpack

log = logging.getLogger("mbms.plant")


class PlantLike(Protocol):
    """What the server needs of the plant (the API of ``mbms.plant.Plant``)."""

    def step(self, dt_s: float) -> Any: ...

    def set_command(self, k: int, *, neg: bool, pos: bool, pre: bool, balance: Any = None,
                    dcdc_setpoint_a: float | None = None) -> Any: ...

    def set_load_a(self, i: float) -> Any: ...

    def measure(self, k: int) -> Any: ...


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, server: PlantServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.server.handle(data)
        if reply is not None and self.transport is not None and addr:
            try:
                self.transport.sendto(reply, addr)
            except OSError:
                pass  # the node went away; its watchdog on our side will open its string


class PlantServer:
    def __init__(self, plant: PlantLike, n_strings: int, dt_s: float = 0.01, time_scale: float = 1.0,
                 command_timeout_s: float = 0.5, clock: Any = time.monotonic) -> None:
        self.plant = plant
        self.n = n_strings
        self.dt_s = dt_s
        self.time_scale = time_scale
        self.command_timeout_s = command_timeout_s
        self.clock = clock
        self.t_s = 0.0
        self.load_a = 0.0
        self.contactors = [(False, False, False)] * n_strings
        self.last_cmd = [float("-inf")] * n_strings
        # per string, the plant times of the on-demand samples served (the sample a node takes
        # after deciding to close a main contactor, before commanding it), the latest 500
        self.fresh_samples: list[list[float]] = [[] for _ in range(n_strings)]
        self.malformed = 0

    # ------------------------------------------------------------ protocol
    def handle(self, raw: bytes) -> bytes | None:
        try:
            obj = unpack(raw)
            op = obj["op"]
            if op == "cmd":
                return pack(self._cmd(obj))
            if op == "load":
                i = obj.get("i")
                if isinstance(i, bool) or not isinstance(i, (int, float)) or not np.isfinite(i):
                    raise FrameError("'load' needs a finite number 'i'")
                self.load_a = float(i)
                self.plant.set_load_a(self.load_a)
                return pack({"op": "load", "i": self.load_a})
            if op == "state":
                now = self.clock()
                return pack({"op": "state", "t_s": self.t_s, "contactors": [list(c) for c in self.contactors],
                             "load_a": self.load_a, "last_cmd_age_s": [min(now - t, 1e9) for t in self.last_cmd]})
            if op == "truth":
                return pack(self._truth())
            if op == "join_step":
                return pack(self._join_step(obj))
            if op == "closes":
                return pack(self._closes(obj))
            raise FrameError(f"unknown op {op!r}; expected cmd, load, join_step, state, truth or closes")
        except FrameError as exc:
            self.malformed += 1
            return pack({"op": "error", "msg": str(exc)})

    def _cmd(self, obj: dict[str, Any]) -> dict[str, Any]:
        k, seq = obj.get("k"), obj.get("seq")
        if not isinstance(k, int) or not 0 <= k < self.n:
            raise FrameError(f"'cmd': k must be a string index 0..{self.n - 1}, got {k!r}")
        if not isinstance(seq, int):
            raise FrameError("'cmd': seq must be an integer")
        neg, pos, pre = obj.get("neg"), obj.get("pos"), obj.get("pre")
        if not (isinstance(neg, bool) and isinstance(pos, bool) and isinstance(pre, bool)):
            raise FrameError("'cmd': neg, pos, pre must be booleans")
        bal = obj.get("bal")
        balance = np.frombuffer(bal, dtype=np.uint8).astype(bool) if isinstance(bal, bytes) and bal else None
        fresh = obj.get("fresh", False)
        # every field is checked before anything is applied: a bad datagram changes nothing
        # (a bad 'fresh' used to be refused after the contactors had been set; a balance of the
        # wrong length raised InputError out of the handler; both found by tests/test_fuzz_decoders.py)
        if not isinstance(fresh, bool):
            raise FrameError("'cmd': fresh must be a boolean")
        try:
            self.plant.set_command(k, neg=neg, pos=pos, pre=pre, balance=balance)
        except InputError as exc:
            raise FrameError(f"'cmd': {exc}") from None
        self.contactors[k] = (neg, pos, pre)
        self.last_cmd[k] = self.clock()
        if fresh:
            # converting now is the simulated plant's (mbms.plant.Plant); a plant double need not
            p: Any = self.plant
            meas = p.measure(k, fresh=True)
            if hasattr(p, "t_s"):
                self.fresh_samples[k] = [*self.fresh_samples[k][-499:], float(p.t_s)]
        else:
            meas = self.plant.measure(k)
        return measurement_to_wire(k, seq, meas)

    def _join_step(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Arm a load step tied to a join (a load that steps while a string precharges)."""
        p: Any = self.plant
        if not hasattr(p, "arm_join_load_step"):
            raise FrameError("'join_step' needs the simulated plant (mbms.plant.Plant)")
        if obj.get("clear") is True:
            p.clear_join_load_steps()
            return {"op": "join_step", "cleared": True}
        k, after_s, i = obj.get("k"), obj.get("after_s"), obj.get("i")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n):
            raise FrameError(f"'join_step': k must be None or a string index 0..{self.n - 1}, got {k!r}")
        for name, x in (("after_s", after_s), ("i", i)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x):
                raise FrameError(f"'join_step' needs a finite number {name!r}")
        # checked just above; the loop over both does not narrow them for a type checker
        assert isinstance(after_s, (int, float)) and isinstance(i, (int, float))
        if after_s < 0:
            raise FrameError("'join_step': after_s must be >= 0")
        p.arm_join_load_step(k, float(after_s), float(i))
        return {"op": "join_step", "k": k, "after_s": float(after_s), "i": float(i)}

    def _closes(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The physical main closes from index ``since`` on (at most 500 per reply), as the plant
        recorded them at their instant."""
        p: Any = self.plant
        if not all(hasattr(p, a) for a in ("main_close_events", "join_steps_fired", "desc")):
            raise FrameError("'closes' needs the simulated plant (mbms.plant.Plant)")
        since = obj.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise FrameError("'closes': since must be an integer >= 0")
        evs = p.main_close_events()
        # with the join load steps that fired, each string's contact closing time and the times
        # of the on-demand samples served, an observer tells a step no sample before the close
        # command could show (after the node's last on-demand sample, or while the contact was
        # travelling) from one the node should have seen (mbms.sim.s3_campaign.step_in_travel)
        return {"op": "closes", "total": len(evs),
                "closes": [[e.t_s, e.string, e.dv_true_v, e.inrush_a] for e in evs[since:since + 500]],
                "join_steps": [[t, a] for t, a in p.join_steps_fired()[-500:]],
                "close_time_s": [s.contactors.close_time_s for s in p.desc.strings],
                "fresh_samples": [list(f) for f in self.fresh_samples]}

    def _truth(self) -> dict[str, Any]:
        """What really happens in the plant, for an observer such as ``mbms sim --mode processes``
        (its invariant checks and time series); no node ever asks for this."""
        p: Any = self.plant
        if not hasattr(p, "string_voltage_v"):
            raise FrameError("'truth' needs the simulated plant (mbms.plant.Plant)")
        states = [p.contactor_state(k) for k in range(self.n)]
        return {
            "op": "truth", "t_s": self.t_s, "v_bus_v": float(p.v_bus_v()), "load_a": float(p.load_a()),
            "i_a": [float(x) for x in p.string_current_a()],
            "v_string_v": [float(x) for x in p.string_voltage_v()],
            "soc": [float(np.mean(p.cell_soc(k))) for k in range(self.n)],
            "t_max_c": [float(np.max(p.cell_temp_c(k))) for k in range(self.n)],
            "contactors": [[bool(c.neg), bool(c.pos), bool(c.pre)] for c in states],
            # the latest main closes (the full list: the 'closes' op), to keep a datagram small
            "main_closes": [[e.t_s, e.string, e.dv_true_v, e.inrush_a] for e in p.main_close_events()[-20:]],
        }

    # ----------------------------------------------------------- real time
    def tick(self) -> None:
        now = self.clock()
        for k in range(self.n):
            if any(self.contactors[k]) and now - self.last_cmd[k] > self.command_timeout_s:
                log.warning("string %d: no command for %.2f s, contactor drivers drop out", k, now - self.last_cmd[k])
                self.plant.set_command(k, neg=False, pos=False, pre=False)
                self.contactors[k] = (False, False, False)
        self.plant.step(self.dt_s * self.time_scale)
        self.t_s += self.dt_s * self.time_scale

    async def serve(self, listen: str, stop: asyncio.Event | None = None, ready: Any = None) -> None:
        loop = asyncio.get_running_loop()
        kind, addr = parse_link(listen, name="--listen")
        if kind == "udp":
            dgram, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), local_addr=addr)
        else:
            if os.path.exists(addr):
                os.unlink(addr)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(addr)
            sock.setblocking(False)
            dgram, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)
        if ready is not None:
            ready()
        stop = stop or asyncio.Event()
        next_t = loop.time()
        try:
            while not stop.is_set():
                self.tick()
                next_t += self.dt_s
                delay = next_t - loop.time()
                if delay < -1.0:  # far behind (suspended?): do not try to catch up in a burst
                    next_t = loop.time()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0))
                except asyncio.TimeoutError:
                    pass
        finally:
            dgram.close()
            if kind == "unix" and os.path.exists(addr):
                os.unlink(addr)


def load_plant(path: str, seed: int) -> tuple[PlantLike, int]:
    """Build ``mbms.plant.Plant`` from a plant description file; returns (plant, number of strings)."""
    from mbms.plant import Plant

    plant = Plant(path, seed)  # ConfigError naming file and field for a bad description
    return plant, plant.n_strings
