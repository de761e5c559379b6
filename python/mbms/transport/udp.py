"""Peer transport over UDP: one msgpack datagram per peer message or telemetry batch.

Datagram (a msgpack map; version 1):

    v     int    datagram format version (PROTOCOL_VERSION)
    sys   str    system id: datagrams of other systems sharing the group/port are foreign
    src   int    sender node id
    boot  int    sender's start time (ms since the epoch): identifies one run of the sender
    seq   int    per-run sequence number, +1 per datagram
    k     str    "m" = peer message, "t" = telemetry frames
    d     bytes  (k="m") the peer message
          list   (k="t") [[arbitration_id, 8 data bytes], ...] encoded with mbms/data/dbc/mbms.dbc

Addressing: a multicast group (``group``/``port``, joined on ``interface``) or, with ``peers``, a
unicast list aligned with the system's ``members`` (peers[i] is the endpoint of members[i]; a node
binds its own entry and sends to all others). Receiver: foreign, malformed and oversized datagrams
are dropped and counted; everything else is delivered.

The header (``boot``, ``seq``) is NOT authenticated, so nothing is decided on it: a receiver that
dropped datagrams by their header once let one forged datagram with ``boot = 2**62`` cut a live
node off for good (issue 15). Freshness is checked where the tag is: the peer message carries its
sender's boot counter, message counter and tag, which the core verifies (brief S7), and telemetry
batches end with an authentication frame that :class:`mbms.telemetry.TelemetryVerifier` checks.
The header only tells this node's own datagrams (multicast loopback: its own ``boot``) from those
of another run with its id, which go to the core (a duplicate id, or a replay it drops).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any

import msgpack

from mbms.config_views import SystemConfig
from mbms.config_views import UdpTransport as UdpConfig
from mbms.telemetry import classify
from mbms.transport.base import Transport

log = logging.getLogger("mbms.transport.udp")

PROTOCOL_VERSION = 1
#: Largest datagram accepted/sent: fits an Ethernet MTU (1500 - IP 20 - UDP 8) without fragmentation.
MAX_DATAGRAM = 1472
#: Largest peer message (datagram minus the header fields, with margin).
MAX_MESSAGE = 1400


def open_socket(cfg: UdpConfig, bind: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not cfg.peers:
        # several nodes of one host share the group port (tests, simulation)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", cfg.port))
        mreq = struct.pack("4s4s", socket.inet_aton(cfg.group), socket.inet_aton(cfg.interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cfg.interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    else:
        sock.bind(bind)
    sock.setblocking(False)
    return sock


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._handle(data)

    def error_received(self, exc: Exception) -> None:  # ICMP errors of earlier sends
        log.debug("udp error: %s", exc)


class UdpTransport(Transport):
    @classmethod
    def from_config(cls, system: SystemConfig, node_id: int) -> UdpTransport:
        """The ``mbms.transports`` entry point ``udp``: settings from ``[transport.udp]``."""
        assert system.transport.udp is not None  # the schema requires the table for kind "udp"
        return cls(system.transport.udp, node_id, system.members, system.system_id)

    def __init__(self, cfg: UdpConfig, node_id: int, members: tuple[int, ...], system_id: str) -> None:
        super().__init__(node_id, members)
        self.cfg = cfg
        self.system_id = system_id
        self.boot = time.time_ns() // 1_000_000
        self._seq = 0
        self._sock: socket.socket | None = None
        self._dgram: asyncio.DatagramTransport | None = None
        if cfg.peers:
            if len(cfg.peers) != len(members):
                raise ValueError("udp peers must list one endpoint per member")
            index = {m: i for i, m in enumerate(members)}
            self._bind = cfg.peers[index[node_id]] if node_id in index else (cfg.bind, 0)
            self._targets = [p for m, p in zip(members, cfg.peers) if m != node_id]
        else:
            self._bind = ("0.0.0.0", cfg.port)
            self._targets = [(cfg.group, cfg.port)]

    @property
    def max_message_len(self) -> int:
        return MAX_MESSAGE

    @property
    def endpoint(self) -> str:
        if self.cfg.peers:
            return f"udp:{self._bind[0]}:{self._bind[1]}"
        return f"udp-mcast:{self.cfg.group}:{self.cfg.port}@{self.cfg.interface}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = open_socket(self.cfg, self._bind)
        self._dgram, _ = await self._loop.create_datagram_endpoint(lambda: _Protocol(self), sock=self._sock)

    # ------------------------------------------------------------------ send
    def _send(self, kind: str, data: Any) -> None:
        if not self.node_id:
            raise RuntimeError("a listen-only transport (node id 0) cannot send")
        assert self._dgram is not None, "transport not started"
        self._seq += 1
        raw = msgpack.packb({"v": PROTOCOL_VERSION, "sys": self.system_id, "src": self.node_id,
                             "boot": self.boot, "seq": self._seq, "k": kind, "d": data}, use_bin_type=True)
        if len(raw) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(raw)} bytes exceeds {MAX_DATAGRAM}")
        for target in self._targets:
            try:
                self._dgram.sendto(raw, target)
                self.stats.sent_frames += 1
            except OSError as exc:
                self.stats.send_errors += 1
                log.warning("udp send to %s failed: %s", target, exc)

    def send(self, payload: bytes) -> None:
        if len(payload) > MAX_MESSAGE:
            raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_MESSAGE}-byte limit")
        self._send("m", bytes(payload))
        self.stats.sent_messages += 1

    def send_telemetry(self, frames: list[tuple[int, bytes]]) -> None:
        self._send("t", [[fid, bytes(d)] for fid, d in frames])

    # --------------------------------------------------------------- receive
    def _handle(self, raw: bytes) -> None:
        st = self.stats
        st.received_frames += 1
        if len(raw) > MAX_DATAGRAM:
            st.oversized += 1
            return
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_DATAGRAM,
                                  max_str_len=256, max_array_len=64, max_map_len=16)
            v, sysid, src, boot, seq, kind, data = (obj["v"], obj["sys"], obj["src"], obj["boot"],
                                                    obj["seq"], obj["k"], obj["d"])
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (v, src, boot, seq)):
                raise TypeError("v, src, boot, seq must be integers")
        except Exception:  # any unpacking/shape error: malformed, never a crash
            st.malformed += 1
            return
        if v != PROTOCOL_VERSION or sysid != self.system_id:
            st.foreign += 1
            return
        if self.node_id and src == self.node_id:
            if boot == self.boot or kind != "m":
                st.echoes += 1  # our own datagram (multicast loopback)
                return
            st.own_id += 1  # another run with this node's id: the core decides (duplicate or replay)
        elif not self._sender_ok(src):
            return
        if kind == "m" and isinstance(data, bytes):
            if len(data) > MAX_MESSAGE:
                st.oversized += 1
                return
            st.received_messages += 1
            self.on_message(src, data)
        elif kind == "t" and isinstance(data, list) and data:  # no sender sends an empty batch: malformed
            good = []
            for item in data:
                if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                        or not isinstance(item[1], bytes) or len(item[1]) != 8):
                    st.malformed += 1
                    return
                cls = classify(item[0])
                if cls is None or cls[0] == "peer" or cls[1] != src:
                    st.foreign += 1
                    return
                good.append((item[0], item[1]))
            for fid, d in good:
                st.received_telemetry += 1
                self.on_telemetry(src, fid, d)
        else:
            st.malformed += 1

    def close(self) -> None:
        if self._dgram is not None:
            self._dgram.close()
            self._dgram = None
