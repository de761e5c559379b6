"""Peer transport over CAN with python-can (``socketcan`` on controllers, ``udp_multicast``
between processes on one host, ``virtual`` within one process).

Node k sends its peer messages as segments (:mod:`mbms.transport.segmentation`, the consensus
core's format: identifiers ``0x400 | (k-1)<<4 | toggle<<3 | index``; one CAN FD frame with
``fd = true``) and its telemetry on the DBC's identifiers (:mod:`mbms.telemetry`). python-can's
``udp_multicast`` delivers a sender's own frames back to it; they are recognised by the sender in
the identifier and counted as echoes.

Receiving runs in a thread of its own (``bus.recv`` blocks) and hands each frame to the asyncio
loop; a frame the bus cannot even unpack (python-can raises ``CanOperationError``) is counted as
malformed and the thread goes on, so a garbage datagram on the multicast port cannot stop it.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import can

from mbms.node.config import CanTransport as CanConfig
from mbms.telemetry import classify
from mbms.transport.base import Transport
from mbms.transport.segmentation import (MAX_SEGMENTED_LEN, Reassembler, SegmentError, frame_fd,
                                         segment_classic, unframe_fd)

log = logging.getLogger("mbms.transport.can")


def open_bus(cfg: CanConfig, **extra: object) -> can.BusABC:
    """Open the python-can bus the config names."""
    kw: dict[str, object] = {"interface": cfg.interface, "channel": cfg.channel}
    if cfg.interface == "udp_multicast":
        kw.update(port=cfg.port, fd=cfg.fd)
    elif cfg.interface == "socketcan":
        kw.update(fd=cfg.fd)  # bitrate is set on the link (ip link set can0 type can bitrate ...)
    elif cfg.interface != "virtual":
        kw.update(bitrate=cfg.bitrate, fd=cfg.fd)
    kw.update(extra)
    return can.Bus(**kw)  # type: ignore[arg-type]


class CanTransport(Transport):
    def __init__(self, cfg: CanConfig, node_id: int, members: tuple[int, ...]) -> None:
        super().__init__(node_id, members)
        self.cfg = cfg
        self.reassembler = Reassembler()
        self._counter = 0
        self._bus: can.BusABC | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def max_message_len(self) -> int:
        return MAX_SEGMENTED_LEN

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
        if not self._sender_ok(src):
            return
        data = bytes(msg.data)
        if kind != "peer":
            if len(data) != 8:
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
        # raises SegmentError (a ValueError) for an empty or too long message
        frames = [frame_fd(self.node_id, payload)] if self.cfg.fd else segment_classic(self.node_id, self._counter, payload)
        self._counter += 1
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


__all__ = ["CanTransport", "open_bus"]
