"""TEST DOUBLES (not product code): a minimal NodeLogic and a minimal plant.

They exist so the runtime, transports, plant link and persistence can be exercised for real
before the Rust NodeCore and Plant land. They decide nothing clever:

* ``DoubleLogic`` closes its string in sequence (neg+pre, then neg+pos) when ``close`` is set,
  counts charge, broadcasts a small msgpack heartbeat, accepts well-formed heartbeats of other
  nodes with a rising counter, and forgets everything on ``fail_safe``.
* ``DoublePlant`` mirrors commanded contactors into feedback and splits a load current evenly
  over the closed strings.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np

from mbms.node.logic import ALL_OPEN, Contactors, Measurement, NodeOutput, NodeStatus, Phase
from mbms.transport.segmentation import MESSAGE_LEN


class DoubleLogic:
    def __init__(self, node_id: int, n_cells: int = 4, close: bool = True, heartbeat_every: int = 1) -> None:
        self.node_id = node_id
        self.n_cells = n_cells
        self.close = close
        self.heartbeat_every = heartbeat_every
        self.steps = 0
        self.soc = 0.5
        self.phase = Phase.OPEN
        self.precharge_steps = 0
        self.fail_safes: list[tuple[int, str]] = []
        self.peers: dict[int, int] = {}
        self.last_t_ms = 0
        self.invalid_steps = 0

    def step(self, t_ms: int, meas: Measurement) -> NodeOutput:
        dt = (t_ms - self.last_t_ms) / 1000.0 if self.steps else 0.0
        self.last_t_ms = t_ms
        self.steps += 1
        if not meas.valid:
            self.invalid_steps += 1
            self.phase = Phase.OPEN
            cmd = ALL_OPEN
        else:
            self.soc -= meas.i_a * dt / (3600.0 * 5.0)
            if not self.close:
                self.phase, cmd = Phase.OPEN, ALL_OPEN
            elif self.phase is Phase.FAIL_SAFE:  # re-sequence from open after a fail-safe
                self.phase, cmd = Phase.OPEN, ALL_OPEN
            elif self.phase is Phase.OPEN:
                self.phase, self.precharge_steps, cmd = Phase.PRECHARGING, 0, Contactors(True, False, True)
            elif self.phase is Phase.PRECHARGING:
                self.precharge_steps += 1
                cmd = Contactors(True, self.precharge_steps >= 2, self.precharge_steps < 2)
                if self.precharge_steps >= 2:
                    self.phase = Phase.CLOSED
            else:
                cmd = Contactors(True, True, False)
        msgs = []
        if self.steps % self.heartbeat_every == 0:
            # the peer message layout's size and header byte (sender, kind 0), a body of its own
            body = struct.pack("<BIf", self.node_id, self.steps, self.soc).ljust(MESSAGE_LEN - 1, b"\0")
            msgs.append(bytes([self.node_id - 1]) + body)
        status = NodeStatus(self.node_id, self.phase, self.soc, 10.0 + self.node_id, 5.0, cmd,
                            sys_dcl_a=30.0, sys_ccl_a=15.0, peers_seen=tuple(sorted(self.peers)))
        return NodeOutput(cmd, np.zeros(len(meas.v_cell_v), dtype=bool), msgs, status)

    def receive(self, t_ms: int, payload: bytes) -> bool:
        try:
            src, n, _soc = struct.unpack_from("<BIf", payload, 1)
        except Exception:
            return False
        if src == self.node_id or n <= self.peers.get(src, 0):
            return False
        self.peers[src] = n
        return True

    def fail_safe(self, t_ms: int, reason: str) -> None:
        self.fail_safes.append((t_ms, reason))
        self.phase = Phase.FAIL_SAFE

    def export_state(self) -> bytes:
        return msgpack.packb({"soc": self.soc, "steps": self.steps})

    def import_state(self, data: bytes) -> None:
        try:
            obj = msgpack.unpackb(data)
            soc, steps = float(obj["soc"]), int(obj["steps"])
        except Exception as exc:
            raise ValueError(f"not a DoubleLogic state: {exc!r}") from None
        self.soc, self.steps = soc, steps


class DoubleMeasurement:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


class DoublePlant:
    def __init__(self, n_strings: int, n_cells: int = 4) -> None:
        self.n = n_strings
        self.n_cells = n_cells
        self.t_s = 0.0
        self.load_a = 0.0
        self.cmd = [(False, False, False)] * n_strings
        self.balance: list[object] = [None] * n_strings

    def step(self, dt_s: float) -> None:
        self.t_s += dt_s

    def set_command(self, k: int, *, neg: bool, pos: bool, pre: bool, balance: object = None,
                    dcdc_setpoint_a: float | None = None) -> None:
        self.cmd[k] = (neg, pos, pre)
        self.balance[k] = balance

    def set_load_a(self, i: float) -> None:
        self.load_a = i

    def measure(self, k: int) -> DoubleMeasurement:
        closed = [j for j in range(self.n) if self.cmd[j][0] and self.cmd[j][1]]
        i = self.load_a / len(closed) if k in closed else 0.0
        v = np.full(self.n_cells, 3.7) - 0.001 * i
        return DoubleMeasurement(t_s=self.t_s, v_cell_v=v, t_cell_c=np.full(2, 25.0), i_a=i,
                                 v_string_v=float(v.sum()), v_bus_v=float(v.sum()) if closed else 0.0,
                                 feedback=self.cmd[k], valid=True)


class EngineDoubleLogic(DoubleLogic):
    """TEST DOUBLE for timing only: DoubleLogic's contactor sequencing plus the real pack engine
    (mbms.engine.Engine) stepped every period, so the measured step time includes the engine's
    per-cell work. No consensus: it is not the node logic."""

    def __init__(self, node_id: int, pack_path: str) -> None:
        from mbms.engine import Engine, PackConfig

        self.engine = Engine(PackConfig.from_toml(pack_path))
        super().__init__(node_id, n_cells=self.engine.n_cells)

    def step(self, t_ms: int, meas: Measurement) -> NodeOutput:
        out = super().step(t_ms, meas)
        if meas.valid and len(meas.v_cell_v) == self.engine.n_cells:
            r = self.engine.step(t_ms / 1000.0, meas.v_cell_v, meas.t_cell_c, meas.i_a)
            self.soc = r.soc_mean
            out.balance = np.asarray(r.balance, dtype=bool)
        return out

    def export_state(self) -> bytes:
        return self.engine.export_state()

    def import_state(self, data: bytes) -> None:
        self.engine.import_state(data)
