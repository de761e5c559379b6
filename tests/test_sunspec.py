"""The SunSpec Modbus TCP server (mbms.gateways.sunspec) fed by real telemetry frames on a real
python-can udp_multicast peer bus, scanned by a real pysunspec2 client; bad Modbus input gets
Modbus exceptions and the server goes on serving."""

from __future__ import annotations

import asyncio
import socket
import struct
import textwrap
import threading
import time
from pathlib import Path

import can
import numpy as np
import pytest

from conftest import free_udp_port, wait_for
from mbms.config_views import load_system
from mbms.gateways.sunspec import BASE_ADDRESS, Nameplate, run_gateway
from mbms import _core
from mbms.keys import new_key_file, system_keys
from mbms.telemetry import AUTH_BASE_ID, LIMITS_BASE_ID, TelemetryEncoder
from mbms.types import Contactors, Measurement, NodeStatus, Phase

sunspec_client = pytest.importorskip("sunspec2.modbus.client", reason="the test extra installs pysunspec2")

GROUP = "239.74.163.10"


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nodes() -> list[tuple[NodeStatus, Measurement]]:
    out = []
    for k in (1, 2, 3):
        closed = k != 3  # string 3 open
        c = Contactors(closed, closed, False)
        st = NodeStatus(node_id=k, phase=Phase.CLOSED if closed else Phase.ISOLATED, soc=0.50 + 0.02 * k, dcl_a=30,
                        ccl_a=20, contactors=c, sys_dcl_a=55.5, sys_ccl_a=27.3, closed_set=(1, 2), speaker=1)
        m = Measurement(0.0, np.linspace(3.70, 3.70 + 0.01 * k, 96), np.full(24, 25.0 + k),
                        (10.0 * k) if closed else 0.0, 355.0 + k, 356.0, c)
        out.append((st, m))
    return out


class _Server:
    def __init__(self, system, port: int) -> None:
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(system, port), daemon=True)
        self.thread.start()

    def _run(self, system, port: int) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()

            def ready(srv) -> None:
                self.server = srv
                self.ready.set()
            await run_gateway(system, "127.0.0.1", port, Nameplate(serial="rack-7", capacity_ah_per_string=20.6,
                                                                    v_nominal_v=350.0), self.stop, ready)
        asyncio.run(main())

    def close(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def served(tmp_path: Path):
    can_port, tcp = free_udp_port(), _free_tcp_port()
    sysf = tmp_path / "system.toml"
    new_key_file(tmp_path / "system.key", "sunspec-test")
    sysf.write_text(textwrap.dedent(f"""
        system_id = "sunspec-test"
        members = [1, 2, 3]
        [auth]
        key_file = "system.key"
        [transport]
        kind = "can"
        [transport.can]
        interface = "udp_multicast"
        channel = "{GROUP}"
        port = {can_port}
        [discovery]
        enabled = false
    """))
    system = load_system(sysf)
    srv = _Server(system, tcp)
    assert srv.ready.wait(20), "the SunSpec server did not start"
    bus = can.Bus(interface="udp_multicast", channel=GROUP, port=can_port, receive_own_messages=False)
    # the nodes tag their telemetry (brief S7): the server takes verified batches only
    auth = _core.MessageAuth(system.system_id_u32, system_keys(system))
    encs = {k: TelemetryEncoder(k, auth=auth, boot=1) for k in (1, 2, 3)}
    stop = threading.Event()

    def send() -> None:  # the nodes' telemetry, every 100 ms, as the node runtime sends it
        while not stop.is_set():
            for st, m in _nodes():
                for arb, data in encs[st.node_id].frames(st, m, False):
                    bus.send(can.Message(arbitration_id=arb, data=data, is_extended_id=False))
            stop.wait(0.1)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    wait_for(lambda: all(s.heard for s in srv.server.view.strings()), 10, "the telemetry of all three nodes")
    yield srv, tcp
    stop.set()
    t.join(5)
    bus.shutdown()
    srv.close()


def test_pysunspec2_scans_models_and_reads_the_nodes_state(served) -> None:
    _, tcp = served
    d = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=tcp)
    try:
        d.scan()
        for mid in (1, 802, 803, 804):
            assert mid in d.models, f"model {mid} not found by the scan"
        assert len(d.models[804]) == 3
        common = d.models[1][0]
        assert common.Mn.cvalue == "mbms" and common.SN.cvalue == "rack-7"
        bat = d.models[802][0]
        bat.read()
        assert bat.SoC.cvalue == pytest.approx((52 + 54) / 2, abs=0.1)  # the closed strings
        assert bat.A.cvalue == pytest.approx(10.0 + 20.0, abs=0.2)
        assert bat.ADisChaMax.cvalue == pytest.approx(55.5, abs=0.1)
        assert bat.AChaMax.cvalue == pytest.approx(27.3, abs=0.1)
        assert bat.V.cvalue == pytest.approx(356.0, abs=0.1)
        assert bat.CellVMax.cvalue == pytest.approx(3.73, abs=0.001) and bat.CellVMaxStr.cvalue == 3
        assert bat.AHRtg.cvalue == pytest.approx(3 * 20.6, abs=0.1)
        bank = d.models[803][0]
        assert bank.NStr.cvalue == 3 and bank.NStrCon.cvalue == 2
        socs = [g.StrSoC.cvalue for g in bank.groups["string"]]
        assert socs == pytest.approx([52.0, 54.0, 56.0], abs=0.1)
        for k, s in enumerate(d.models[804]):
            assert s.Idx.cvalue == k + 1
            assert s.SoC.cvalue == pytest.approx(50 + 2 * (k + 1), abs=0.1)
            assert s.A.cvalue == pytest.approx(10.0 * (k + 1) if k < 2 else 0.0, abs=0.1)
            assert s.V.cvalue == pytest.approx(355.0 + k + 1, abs=0.1)
            assert bool(s.ConSt.cvalue) == (k < 2)
    finally:
        d.close()


def _request(tcp: int, pdu: bytes, unit: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", tcp), timeout=5) as s:
        s.sendall(struct.pack(">HHHB", 7, 0, len(pdu) + 1, unit) + pdu)
        head = s.recv(7)
        _, _, length, _ = struct.unpack(">HHHB", head)
        body = b""
        while len(body) < length - 1:
            body += s.recv(length - 1 - len(body))
        return body


def test_writes_and_bad_requests_get_modbus_exceptions_and_the_server_survives(served) -> None:
    srv, tcp = served
    # write single register (fc 6) to a point: exception 1 (read-only map)
    assert _request(tcp, struct.pack(">BHH", 6, BASE_ADDRESS + 70, 1)) == bytes([0x86, 1])
    # write multiple registers (fc 16)
    assert _request(tcp, struct.pack(">BHHB", 16, BASE_ADDRESS + 70, 1, 2) + b"\x00\x01") == bytes([0x90, 1])
    # read outside the map: exception 2
    assert _request(tcp, struct.pack(">BHH", 3, 100, 2)) == bytes([0x83, 2])
    # garbage on the socket: the connection may drop, the server must not
    with socket.create_connection(("127.0.0.1", tcp), timeout=5) as s:
        s.sendall(b"\xff" * 40)
        s.settimeout(1.0)
        try:
            s.recv(64)
        except (TimeoutError, ConnectionError):
            pass
    assert srv.server.refused_writes >= 2
    # still serving: "SunS" at the base address
    body = _request(tcp, struct.pack(">BHH", 3, BASE_ADDRESS, 2))
    assert body[:2] == bytes([3, 4]) and body[2:] == b"SunS"
