"""Peer transport over CAN with python-can (``socketcan`` on controllers, ``udp_multicast``
between processes on one host, ``virtual`` within one process).

Node k sends its peer messages as three frames (:mod:`mbms.transport.segmentation`, the consensus
core's format: identifiers ``0x400 | (k-1)<<4 | kind<<3 | toggle<<2 | index``; one CAN FD frame
with ``fd = true``) and its telemetry on the DBC's identifiers (:mod:`mbms.telemetry`). python-can's
``udp_multicast`` delivers a sender's own frames back to it; they are recognised by the sender in
the identifier and counted as echoes (a peer message with the own id is an echo only if it is one
of the messages just sent: else it comes from a duplicate id and is delivered, see
:mod:`mbms.transport.base`).

Receiving runs in a thread of its own (``bus.recv`` blocks) and hands each frame to the asyncio
loop; a frame the bus cannot even unpack is counted as malformed and the thread goes on, so a
garbage datagram on the multicast port cannot stop it.

Bounded cost per frame: python-can's ``udp_multicast`` decodes a datagram with
``Message(**msgpack.unpackb(datagram))``; a 50-byte datagram whose ``data`` field is the integer N
makes ``bytearray(N)`` allocate and zero N bytes under the interpreter lock before any length
check (N = 5e8 froze every node for 1.6 s: loop overrun, all strings opened). So this module
receives ``udp_multicast`` through :class:`BoundedUdpMulticastBus`: the same socket and wire format
(python-can's msgpack map), decoded by :func:`decode_datagram`, which caps every msgpack length
before anything is allocated and accepts only the fields and types of a CAN (FD) frame: no input
costs more than a frame's worth of memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import can
import msgpack
from can.interfaces.udp_multicast import UdpMulticastBus

from mbms.errors import FrameError
from mbms.config_views import CanTransport as CanConfig
from mbms.config_views import SystemConfig
from mbms.telemetry import classify
from mbms.transport.base import Transport
from mbms.transport.segmentation import MESSAGE_LEN, Reassembler, SegmentError, frame_fd, segment_classic, unframe_fd

log = logging.getLogger("mbms.transport.can")


#: Largest data field of a frame: 64 bytes for CAN FD (ISO 11898-1:2015), 8 for classic CAN.
MAX_FD_DATA = 64
MAX_CLASSIC_DATA = 8
#: Largest arbitration id: 29-bit extended identifier.
MAX_ARBITRATION_ID = 0x1FFF_FFFF
#: The fields python-can's udp_multicast puts in a datagram (can/interfaces/udp_multicast/utils.py
#: ``pack_message``), with the types a frame can have. Anything else is malformed.
_BOOL_FIELDS = ("is_extended_id", "is_remote_frame", "is_error_frame", "is_fd", "bitrate_switch",
                "error_state_indicator")
_FIELDS = frozenset({"timestamp", "arbitration_id", "channel", "dlc", "data", *_BOOL_FIELDS})
#: A python-can datagram of one CAN FD frame is about 200 bytes; every msgpack length is capped
#: far below what could cost time or memory (checked by msgpack before it allocates).
_UNPACK_LIMITS: dict[str, Any] = {"max_bin_len": MAX_FD_DATA, "max_str_len": 64, "max_array_len": MAX_FD_DATA,
                                  "max_map_len": len(_FIELDS), "max_ext_len": 0}


def decode_datagram(datagram: bytes, timestamp: float) -> can.Message:
    """Decode one python-can ``udp_multicast`` datagram into a frame, or raise
    :class:`~mbms.errors.FrameError`. Allocates at most a frame's worth: msgpack lengths are
    capped before decoding, the data field must already be bytes of at most 64."""
    try:
        obj = msgpack.unpackb(datagram, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, StackError, ...
        raise FrameError(f"not a msgpack frame: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"expected a msgpack map, got {type(obj).__name__}")
    unknown = set(obj) - _FIELDS
    if unknown:
        # repr: keys may mix str and bytes (msgpack raw and str types), which sorted() cannot
        # compare; the TypeError escaped the decoder and ended the receive thread (found by
        # tests/test_fuzz_decoders.py)
        raise FrameError(f"unknown fields {sorted(map(repr, unknown))[:4]}")
    data = obj.get("data", b"")
    if not isinstance(data, bytes) or len(data) > MAX_FD_DATA:
        what = f"{len(data)} bytes" if isinstance(data, bytes) else type(data).__name__
        raise FrameError(f"data: expected at most {MAX_FD_DATA} bytes, got {what}")
    arb = obj.get("arbitration_id", 0)
    dlc = obj.get("dlc", len(data))
    for name, value, hi in (("arbitration_id", arb, MAX_ARBITRATION_ID), ("dlc", dlc, MAX_FD_DATA)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            raise FrameError(f"{name}: expected an integer 0..{hi}, got {value!r}")
    flags = {}
    for name in _BOOL_FIELDS:
        value = obj.get(name, False)
        if not isinstance(value, bool):
            raise FrameError(f"{name}: expected a boolean, got {type(value).__name__}")
        flags[name] = value
    channel = obj.get("channel")
    if channel is not None and not isinstance(channel, (str, int)):
        raise FrameError(f"channel: expected a string, got {type(channel).__name__}")
    try:  # check=True: dlc against data, id against the id kind, FD flags against is_fd
        return can.Message(timestamp=timestamp, arbitration_id=arb, data=bytearray(data), dlc=dlc,
                           channel=channel, check=True, **flags)
    except (ValueError, TypeError) as exc:
        raise FrameError(f"inconsistent frame: {exc}") from None


class BoundedUdpMulticastBus(UdpMulticastBus):
    """python-can's ``udp_multicast`` bus (same socket, same wire format) whose receive path
    decodes with :func:`decode_datagram` instead of ``Message(**msgpack.unpackb(...))``."""

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        # ``_multicast`` is the bus's socket wrapper (python-can 4.x); its recv reads at most
        # max_buffer (4096) bytes of one datagram and returns (bytes, sender, timestamp).
        result = self._multicast.recv(timeout)
        if not result:
            return None, False
        datagram, _sender, timestamp = result
        try:
            msg = decode_datagram(datagram, timestamp)
        except FrameError as exc:
            raise can.CanOperationError(f"malformed datagram of {len(datagram)} bytes: {exc}") from None
        if msg.is_fd and self.protocol is not can.CanProtocol.CAN_FD:
            return None, False  # python-can's own rule: an FD frame on a classic bus is ignored
        return msg, False


def open_bus(cfg: CanConfig, **extra: object) -> can.BusABC:
    """Open the python-can bus the config names (``udp_multicast`` through the bounded bus). The
    machine's refusal (no SocketCAN, no such channel, an interface python-can does not know) is
    raised as python-can/OS errors; the runtime reports them as an EnvironmentProblem."""
    kw: dict[str, object] = {"channel": cfg.channel}
    if cfg.interface == "udp_multicast":
        kw.update(port=cfg.port, fd=cfg.fd)
    elif cfg.interface == "socketcan":
        kw.update(fd=cfg.fd)  # bitrate is set on the link (ip link set can0 type can bitrate ...)
    elif cfg.interface != "virtual":
        kw.update(bitrate=cfg.bitrate, fd=cfg.fd)
    kw.update(extra)
    if cfg.interface == "udp_multicast":
        return BoundedUdpMulticastBus(**kw)  # type: ignore[arg-type]
    return can.Bus(interface=cfg.interface, **kw)  # type: ignore[arg-type]


class CanTransport(Transport):
    @classmethod
    def from_config(cls, system: SystemConfig, node_id: int) -> CanTransport:
        """The ``mbms.transports`` entry point ``can``: settings from ``[transport.can]``."""
        assert system.transport.can is not None  # the schema requires the table for kind "can"
        return cls(system.transport.can, node_id, system.members)

    def __init__(self, cfg: CanConfig, node_id: int, members: tuple[int, ...]) -> None:
        super().__init__(node_id, members)
        self.cfg = cfg
        self.reassembler = Reassembler()
        self._bus: can.BusABC | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def max_message_len(self) -> int:
        return MESSAGE_LEN

    @property
    def endpoint(self) -> str:
        port = f":{self.cfg.port}" if self.cfg.interface == "udp_multicast" else ""
        return f"can:{self.cfg.interface}:{self.cfg.channel}{port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._bus = open_bus(self.cfg)
        self._thread = threading.Thread(target=self._rx, name=f"can-rx-{self.node_id}", daemon=True)
        self._thread.start()

    def _rx(self) -> None:
        assert self._bus is not None and self._loop is not None
        while not self._stop.is_set():
            try:
                msg = self._bus.recv(timeout=0.1)
            except can.CanError as exc:
                if self._stop.is_set():
                    break
                self._loop.call_soon_threadsafe(self._count_malformed, repr(exc))
                continue
            except (OSError, ValueError):  # bus closed under us during shutdown
                break
            if msg is not None:
                try:
                    self._loop.call_soon_threadsafe(self._handle, msg)
                except RuntimeError:  # loop closed
                    break

    def _count_malformed(self, why: str) -> None:
        self.stats.received_frames += 1
        self.stats.malformed += 1
        log.debug("malformed frame dropped: %s", why)

    def _handle(self, msg: can.Message) -> None:
        st = self.stats
        st.received_frames += 1
        if msg.is_error_frame or msg.is_remote_frame or (msg.is_fd and not self.cfg.fd):
            st.malformed += 1
            return
        if msg.is_extended_id:
            st.foreign += 1
            return
        cls = classify(msg.arbitration_id)
        if cls is None:
            st.foreign += 1
            return
        kind, src = cls
        own_peer = kind == "peer" and self.node_id and src == self.node_id
        if not own_peer and not self._sender_ok(src):
            return
        data = bytes(msg.data)
        if kind != "peer":
            if len(data) != 8:  # every telemetry frame of the DBC, the authentication frame too
                st.malformed += 1
                return
            st.received_telemetry += 1
            self.on_telemetry(src, msg.arbitration_id, data)
            return
        try:
            if self.cfg.fd:
                src, payload = unframe_fd(msg.arbitration_id, data)
            else:
                done = self.reassembler.push(msg.arbitration_id, data)
                if done is None:
                    return
                src, payload = done
        except SegmentError as exc:
            setattr(st, exc.kind, getattr(st, exc.kind) + 1)
            return
        if own_peer and self._own_echo(payload):
            return
        st.received_messages += 1
        self.on_message(src, payload)

    def _send_frame(self, arbitration_id: int, data: bytes) -> None:
        assert self._bus is not None, "transport not started"
        msg = can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False,
                          is_fd=self.cfg.fd, bitrate_switch=self.cfg.fd)
        try:
            self._bus.send(msg, timeout=0.05)
            self.stats.sent_frames += 1
        except can.CanError as exc:
            self.stats.send_errors += 1
            log.warning("CAN send of id 0x%x failed: %s", arbitration_id, exc)

    def send(self, payload: bytes) -> None:
        if not self.node_id:
            raise RuntimeError("a listen-only transport (node id 0) cannot send")
        # raises SegmentError (a ValueError) for anything but a peer message of this node
        frames = [frame_fd(payload)] if self.cfg.fd else segment_classic(payload)
        if frames[0][0] >> 4 & 0x3F != self.node_id - 1:
            raise ValueError(f"a peer message of sender {(frames[0][0] >> 4 & 0x3F) + 1}, not of this node {self.node_id}")
        self._recent_sent.append(bytes(payload))
        for arbitration_id, data in frames:
            self._send_frame(arbitration_id, data)
        self.stats.sent_messages += 1

    def send_telemetry(self, frames: list[tuple[int, bytes]]) -> None:
        for arbitration_id, data in frames:
            self._send_frame(arbitration_id, data)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None


__all__ = ["BoundedUdpMulticastBus", "CanTransport", "decode_datagram", "open_bus"]
