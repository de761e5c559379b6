"""Sabotage double for the S3 load-step test (issue 11 item 1): ``mbms node`` exactly as shipped,
except that it closes the way it did before issue 11, on the sample it already has: the runtime
asks the plant for no fresh sample before the main contactor command; the sample it has (the
reply to its previous command, about one control period old) is handed to the core as if it had
been taken now, and again 1 ms later when the core asks for a sample after its close decision. The test runs it to show that its check does see the close onto a stepped bus.
Usage: node_stale_close.py ARGS-OF-mbms-node"""

from __future__ import annotations

import dataclasses
import sys

from mbms.cli import main
from mbms.node import core_adapter, runtime

_step = core_adapter.CoreLogic.step


def _step_on_a_stale_sample_as_if_fresh(self, t_ms, meas):  # type: ignore[no-untyped-def]
    meas = dataclasses.replace(meas, age_ms=0.0)
    out = _step(self, t_ms, meas)
    if out.sample_request:
        # the core asks for a sample taken after its decision: give it the same one again, as
        # if new, 1 ms later; the close is then commanded in the period of the decision, on
        # the sample the decision was made on (the logic before issue 11)
        out = _step(self, t_ms + 1, meas)
    return out


async def _no_fresh_sample(self, until):  # type: ignore[no-untyped-def]
    return None


core_adapter.CoreLogic.step = _step_on_a_stale_sample_as_if_fresh  # type: ignore[method-assign]
runtime.NodeRuntime._verify_step = _no_fresh_sample  # type: ignore[method-assign]
sys.exit(main(["node", *sys.argv[1:]]))
