"""Sabotage double for the hostile-datagram test (issue 11 item 6): ``mbms node`` exactly as
shipped, except that frames from python-can's ``udp_multicast`` are decoded the way python-can
itself does (``Message(**msgpack.unpackb(...))``), i.e. the node before its bounded decoder.
The test runs it to show that its check does see the freeze the bounded decoder prevents.
Usage: node_unbounded_decoder.py ARGS-OF-mbms-node"""

from __future__ import annotations

import sys

from can.interfaces.udp_multicast.utils import unpack_message

import mbms.transport.can as can_transport
from mbms.cli import main


def _python_can_decoder(datagram: bytes, timestamp: float):  # type: ignore[no-untyped-def]
    return unpack_message(datagram, replace={"timestamp": timestamp})


can_transport.decode_datagram = _python_can_decoder
sys.exit(main(["node", *sys.argv[1:]]))
