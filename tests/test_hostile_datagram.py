"""Issue 11 item 6: one datagram must not freeze a node.

python-can's ``udp_multicast`` decodes a datagram with ``Message(**msgpack.unpackb(...))``: a
50-byte datagram whose ``data`` field is the integer 500 000 000 made each receiving process
allocate and zero 500 MB under the interpreter lock (1.6 s freeze in the chaos campaign: loop
overrun, fail-safe, every string opened). The node receives through its own bounded decoder
(:func:`mbms.transport.can.decode_datagram`); here real node processes (the real runtime, CAN
transport and plant link, with the DoubleLogic test double) on loopback get the hostile datagram
from python-can's own multicast sender, and must keep their period with the strings closed, while
each copy is counted as malformed and dropped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import pytest
from can.interfaces.udp_multicast.bus import GeneralPurposeUdpMulticastBus
from conftest import TESTS, Proc, free_udp_port, wait_for
from node_files import pack_file, system_file

from mbms.errors import FrameError
from mbms.transport.can import decode_datagram

CAN_GROUP = "239.74.163.2"  # node_files.system_file's udp_multicast channel
#: The campaign's datagram: a frame map whose data field is an integer (50 bytes of msgpack).
HOSTILE = msgpack.packb({"arbitration_id": 0x412, "data": 500_000_000, "is_extended_id": False, "dlc": 8})


def test_hostile_datagram_is_50_bytes_and_rejected_before_any_allocation() -> None:
    assert len(HOSTILE) == 50
    t0 = time.perf_counter()
    with pytest.raises(FrameError, match="data: expected at most 64 bytes, got int"):
        decode_datagram(HOSTILE, 0.0)
    # more than a CAN FD frame's 64 data bytes is refused by msgpack's length cap
    with pytest.raises(FrameError, match="exceeds max_bin_len"):
        decode_datagram(msgpack.packb({"arbitration_id": 0x412, "data": bytes(65)}), 0.0)
    assert time.perf_counter() - t0 < 0.05  # (bytearray(5e8) alone takes ~0.3-1.6 s here)


def _status(p: Proc, pred, timeout: float) -> dict:
    return json.loads(p.read_until(lambda s: s.startswith('{"status"') and pred(json.loads(s)), timeout))


def test_hostile_datagram_does_not_stall_real_nodes(tmp_path: Path, procs: list[Proc]) -> None:
    link = f"udp://127.0.0.1:{free_udp_port()}"
    plant = Proc([str(TESTS / "procs" / "plant_double_server.py"), link, "3", "0.3"])
    procs.append(plant)
    plant.read_until(lambda s: s.strip() == "ready", 10)
    port = free_udp_port()
    system = system_file(tmp_path, [1, 2, 3], "can", port)
    # overrun_ms = 400 (node_files): a freeze of more than 0.4 s is a fail-safe that opens the string
    nodes = {k: Proc([str(TESTS / "procs" / "run_node_double.py"), str(pack_file(tmp_path, k, link)), str(system)])
             for k in (1, 2, 3)}
    procs.extend(nodes.values())
    closed = [True, True, False]
    for p in nodes.values():
        _status(p, lambda s: len(s["peers"]) == 2 and s["commanded"] == closed, 20)
    before = {k: _status(p, lambda s: True, 5) for k, p in nodes.items()}

    copies = 5
    sender = GeneralPurposeUdpMulticastBus(CAN_GROUP, port, 1)  # python-can's own multicast sender
    try:
        for _ in range(copies):
            sender.send(HOSTILE)
    finally:
        sender.shutdown()

    for k, p in nodes.items():
        st = _status(p, lambda s: s["malformed"] >= before[k]["malformed"] + copies, 10)
        assert st["fail_safes"] == 0 and st["fail_safe"] is None, f"node {k}: {st}"
        assert st["overruns"] == 0 and st["commanded"] == closed, f"node {k}: {st}"
        # the loop went on at its period (50 ms) meanwhile: peers still heard, periods advancing
        assert st["periods"] > before[k]["periods"] and st["peers"] == sorted({1, 2, 3} - {k})
    for p in nodes.values():
        p.p.terminate()
    for k, p in nodes.items():
        final = p.read_json("final", 10)
        assert final["timing"]["overruns"] == 0, f"node {k}: {final['timing']}"
        assert final["transport"]["malformed"] >= copies


#: Flood of the jitter test: this many hostile datagrams, one every FLOOD_GAP_S.
FLOOD_COPIES = 40
FLOOD_GAP_S = 0.1


def _flood_run(tmp: Path, procs: list[Proc], flood: int, node_cmd: list[str]) -> dict[int, dict]:
    """Real ``mbms plant`` and three real ``mbms node`` processes (Rust NodeCore, CAN transport
    on udp_multicast, period 100 ms, overrun fail-safe at 400 ms); once the three strings are
    closed, ``flood`` hostile datagrams arrive one every FLOOD_GAP_S (or the same time passes
    quietly), the strings are watched all along, then the nodes stop and print their loop
    timing. Returns per node the timing summary plus ``opened`` (the string was seen open)."""
    from test_e2e_nodecore import Watch, _require_stack, _start_plant

    tmp.mkdir(parents=True, exist_ok=True)
    link = f"unix://{tmp}/plant.sock"
    _start_plant(procs, _require_stack(), link)
    port = free_udp_port()
    system = system_file(tmp, [1, 2, 3], "can", port)
    packs = {k: pack_file(tmp, k, link, period_ms=100) for k in (1, 2, 3)}
    nodes = {k: Proc([*node_cmd, "--config", str(p), "--system", str(system), "--timing"]) for k, p in packs.items()}
    procs.extend(nodes.values())
    w = Watch(link)
    wait_for(lambda: w.all_closed([0, 1, 2]), 120, "strings 1-3 closed", poll_s=0.05)
    opened = {k: False for k in (1, 2, 3)}
    sender = GeneralPurposeUdpMulticastBus(CAN_GROUP, port, 1)  # python-can's own multicast sender
    try:
        for i in range(FLOOD_COPIES):
            if i < flood:
                sender.send(HOSTILE)
            t_next = time.monotonic() + FLOOD_GAP_S
            while time.monotonic() < t_next:  # the plant's truth between two datagrams
                for k, c in enumerate(w.state()[:3]):
                    opened[k + 1] |= not (c[0] and c[1])
    finally:
        sender.shutdown()
    out = {}
    for k, p in nodes.items():
        p.p.terminate()
        # (a node that allocates what a datagram asks for may still be working through them)
        timing = json.loads(p.read_until(lambda s: s.startswith('{"periods"'), 120))
        assert p.p.wait(30) == 0, p.stderr_tail()
        out[k] = dict(timing, opened=opened[k])
    return out


def test_hostile_flood_against_real_nodes_keeps_the_loop_period(tmp_path: Path, procs: list[Proc]) -> None:
    """The loop keeps its period under a flood of the campaign's datagram: the same three real
    nodes with and without 40 hostile datagrams in 4 s. Figures (loaded 2-core machine, load
    ~7): see the printed lines; the assertions are the runtime's own criteria (no overrun of
    400 ms, no fail-safe, no string opened), not wall-clock figures."""
    cmd = ["-m", "mbms", "node"]
    quiet = _flood_run(tmp_path / "quiet", procs, 0, cmd)
    flood = _flood_run(tmp_path / "flood", procs, FLOOD_COPIES, cmd)
    for name, res in (("quiet", quiet), ("flood", flood)):
        print("\n" + name, {k: {f: round(v, 1) if isinstance(v, float) else v for f, v in r.items()
                         if f in ("periods", "overruns", "jitter_ms_mean", "jitter_ms_p99", "jitter_ms_max", "opened")}
                     for k, r in res.items()})
    for k, r in flood.items():
        assert r["overruns"] == 0 and not r["opened"], (k, r)
    for k, r in quiet.items():
        assert r["overruns"] == 0 and not r["opened"], (k, r)


def test_without_the_bounded_decoder_the_same_flood_stalls_real_nodes(tmp_path: Path, procs: list[Proc]) -> None:
    """The check above can fail: the same nodes decoding as python-can does (the node before
    issue 11: ``tests/procs/node_unbounded_decoder.py``) overrun their period already under 5 of
    the 40 datagrams (the chaos campaign: a 1.6 s freeze, the fail-safe opened every string)."""
    res = _flood_run(tmp_path, procs, 5, [str(TESTS / "procs" / "node_unbounded_decoder.py")])
    print("\nunbounded", {k: {f: round(v, 1) if isinstance(v, float) else v for f, v in r.items()
                            if f in ("periods", "overruns", "jitter_ms_p99", "jitter_ms_max", "opened")}
                        for k, r in res.items()})
    assert any(r["overruns"] > 0 or r["opened"] for r in res.values()), res
