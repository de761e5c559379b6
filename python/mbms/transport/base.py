"""The peer transport interface: broadcast peer messages and telemetry frames, deliver received ones.

A transport carries two things between the nodes of one system:

* peer messages (opaque bytes of the consensus protocol, full state snapshots: a lost one is
  repaired by the next), delivered to ``on_message(src_node_id, payload)``;
* telemetry frames (DBC-encoded CAN frames ``(arbitration_id, data)``, mbms/data/dbc/mbms.dbc), delivered
  to ``on_telemetry(src_node_id, arbitration_id, data)`` (used by ``mbms monitor``).

Callbacks run in the asyncio loop's thread. Own echoes, malformed, foreign (other system, non-member
sender, unknown identifier), replayed and oversized frames/datagrams are counted in
:class:`TransportStats` and dropped; receiving never raises. A transport with ``node_id == 0`` is a
listener (the monitor): it sends nothing and filters no echoes.

A peer message with this node's own id that is not its own echo (another run's boot stamp, or not
one of the messages it just sent) comes from a second node configured with the same id: it is
delivered (counted in ``own_id``), so that the peer protocol, which compares incarnations, can
raise the duplicate-id alarm and keep that id out of close grants. Dropping it as an "echo" made
a real duplicate invisible to the node whose id it copies.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

MessageHandler = Callable[[int, bytes], None]
TelemetryHandler = Callable[[int, int, bytes], None]


@dataclass
class TransportStats:
    sent_messages: int = 0
    sent_frames: int = 0  # CAN frames or datagrams
    send_errors: int = 0
    received_frames: int = 0
    received_messages: int = 0
    received_telemetry: int = 0
    echoes: int = 0
    malformed: int = 0  # bytes that cannot be a frame of this protocol: a faulty or foreign device
    incomplete: int = 0  # a continuation frame without its start: joined mid-message, loss, sender died
    foreign: int = 0
    replayed: int = 0
    oversized: int = 0
    duplicate: int = 0
    own_id: int = 0  # messages with this node's id from another node (a duplicate id): delivered

    def dropped(self) -> int:
        return self.malformed + self.incomplete + self.foreign + self.replayed + self.oversized + self.duplicate

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Transport(abc.ABC):
    """One node's (or the monitor's) endpoint on the peer network."""

    def __init__(self, node_id: int, members: tuple[int, ...]) -> None:
        self.node_id = node_id
        self.members = frozenset(members)
        self.stats = TransportStats()
        self.on_message: MessageHandler = lambda src, payload: None
        self.on_telemetry: TelemetryHandler = lambda src, arb_id, data: None
        self._loop: asyncio.AbstractEventLoop | None = None
        # the last messages sent: a received message with the own id equal to one is an echo
        self._recent_sent: deque[bytes] = deque(maxlen=16)

    @property
    @abc.abstractmethod
    def max_message_len(self) -> int:
        """Largest peer message this transport carries."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open sockets/buses and start receiving (callbacks run in the running loop)."""

    @abc.abstractmethod
    def send(self, payload: bytes) -> None:
        """Broadcast one peer message. Raises ValueError if longer than ``max_message_len``."""

    @abc.abstractmethod
    def send_telemetry(self, frames: list[tuple[int, bytes]]) -> None:
        """Broadcast telemetry frames ``(arbitration_id, data)``."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """How peers reach this node (advertised in the zeroconf TXT record)."""

    def _own_echo(self, payload: bytes) -> bool:
        """For a peer message with the own id: True (counted) if it is one this node sent."""
        if payload in self._recent_sent:
            self.stats.echoes += 1
            return True
        self.stats.own_id += 1
        return False

    def _sender_ok(self, src: int) -> bool:
        """Count and reject own echoes and non-members; True if ``src`` is a peer to accept."""
        if self.node_id and src == self.node_id:
            self.stats.echoes += 1
            return False
        if src not in self.members:
            self.stats.foreign += 1
            return False
        return True
