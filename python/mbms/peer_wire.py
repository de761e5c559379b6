"""Read-only decoder of the peer messages (the consensus core's wire format, consensus/src/wire.rs:
23 bytes, three classic CAN frames, a 32-bit CMAC tag) for tools such as ``mbms monitor`` and
``mbms sim``'s observer. Nodes never use it: NodeCore verifies and decodes its own messages.

Decoding and verification are the core's (``mbms._core.MessageAuth``), so Python never restates
the layout. With the system's keys a message is verified before anyone looks at it; a forged,
unauthenticated or malformed one raises :class:`~mbms.errors.FrameError` whose ``reason`` says
which. Without keys (``auth=None``) the fields are read but ``verified`` is False, and nothing
may act on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mbms import _core
from mbms.errors import FrameError

MESSAGE_LEN = int(_core.MESSAGE_LEN)


class PeerFrameError(FrameError):
    """A peer message that is malformed, unauthenticated or forged (``reason``)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class PeerMessage:
    sender: int
    incarnation: int  # the sender's boot counter
    counter: int  # the sender's message counter in this boot
    phase: int
    fault: bool
    main_closed: bool
    pre_closed: bool
    may_close: bool
    req_ticket: int
    grant_to: int
    kind: str  # "limits" | "detail"
    values: dict[str, float]
    verified: bool


def decode(data: bytes, auth: Any = None) -> PeerMessage:
    """Decode one peer message; with ``auth`` (an ``_core.MessageAuth`` with keys) verify it first."""
    try:
        if auth is not None and auth.enabled:
            d = auth.open(bytes(data))
        else:
            d = _core.MessageAuth.decode_unverified(bytes(data))
    except ValueError as exc:
        reason, detail = exc.args if len(exc.args) == 2 else ("malformed", str(exc))
        raise PeerFrameError(str(reason), f"peer message of {len(data)} bytes: {reason}: {detail}") from None
    return PeerMessage(int(d["sender"]), int(d["incarnation"]), int(d["counter"]), int(d["phase"]), bool(d["fault"]),
                       bool(d["main_closed"]), bool(d["pre_closed"]), bool(d["may_close"]), int(d["req_ticket"]),
                       int(d["grant_to"]), str(d["kind"]), dict(d["values"]), bool(d["verified"]))
