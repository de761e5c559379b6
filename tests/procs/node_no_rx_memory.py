"""Sabotage double for the restart-replay test (issue 15, persisted receive counters): ``mbms
node`` exactly as shipped, except that it does not restore the receive counters its previous run
saved (it still saves them). It starts like a node from before the counters were persisted: with
no memory of what it had accepted, so a replay of a dead peer's captured messages is a first
contact to it. The test runs it to show that its check does see the replay taken.
Usage: node_no_rx_memory.py ARGS-OF-mbms-node"""

from __future__ import annotations

import sys

from mbms.cli import main
from mbms.node import core_adapter


def _forget(self, counters):  # type: ignore[no-untyped-def]
    return 0


core_adapter.CoreLogic.restore_receive_counters = _forget  # type: ignore[method-assign]
sys.exit(main(["node", *sys.argv[1:]]))
