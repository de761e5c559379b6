"""Assemble and run one node: configs -> hardware, transport, persistence, discovery -> runtime."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

from mbms.errors import MbmsError
from mbms.hardware import make_hardware
from mbms.config_views import PackFile, SystemConfig, check_membership
from mbms.node.logic import NodeLogic
from mbms.node.persistence import StateStore
from mbms.node.runtime import NodeRuntime
from mbms.telemetry import TelemetryEncoder
from mbms.transport import make_transport

log = logging.getLogger("mbms.node")


def make_core_logic(pack: PackFile, system: SystemConfig) -> NodeLogic:
    """The production logic: ``mbms._core.NodeCore`` (engine + consensus + contactor sequencing).

    This is the one wiring point for the Rust NodeCore; until it is in the build, ``mbms node``
    stops here with a clear error instead of running any stand-in logic.
    """
    from mbms import _core

    core_cls = getattr(_core, "NodeCore", None)
    if core_cls is None:
        raise MbmsError("this build of mbms has no NodeCore (mbms._core.NodeCore); the node runtime "
                        "needs it to make decisions and will not run without it")
    from mbms.node.core_adapter import CoreLogic  # written with NodeCore

    return CoreLogic.from_configs(core_cls, pack, system)


async def run_node(pack: PackFile, system: SystemConfig, logic: NodeLogic, *, stop: asyncio.Event | None = None,
                   duration_s: float | None = None, discovery: bool | None = None,
                   on_ready: Any = None) -> NodeRuntime:
    check_membership(pack, system)
    node_id = pack.node.id
    op = pack.operator
    store = StateStore(pack.node.state_dir, node_id, pack.source,
                       events_max_bytes=op.events_max_bytes if op else None, events_keep=op.events_keep if op else 0)
    # telemetry is tagged like the peer messages (brief S7): the inverter side acts on its limits
    from mbms import _core
    from mbms.keys import system_keys

    auth = _core.MessageAuth(system.system_id_u32, system_keys(system))
    boot = int(getattr(logic, "incarnation", None) or 0)
    runtime = NodeRuntime(pack.node, logic, make_hardware(pack.hardware, pack.source), make_transport(system, node_id),
                          store, TelemetryEncoder(node_id, auth=auth, boot=boot))
    restored = runtime.restore()
    log.info("node %d of system %s starting (state: %s, transport %s)", node_id, system.system_id, restored,
             runtime.transport.endpoint if runtime.transport else "-")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    disc = None
    # the peer network first: an interface this machine lacks stops the node here, before
    # discovery advertises an endpoint nobody can reach
    try:
        await runtime.open_transport()
    except BaseException:
        runtime.shutdown()
        raise
    if system.inverter is not None:
        from mbms.gateways.inverter_can import InverterGateway, PackRatings

        from mbms.gateways.peer_telemetry import TelemetryView

        peers = None
        if runtime.transport is not None:  # the other strings' SOC, from their telemetry
            peers = TelemetryView(tuple(system.members), auth)
            runtime.transport.on_telemetry = peers.on_telemetry
        runtime.inverter = InverterGateway(system.inverter, node_id, PackRatings.of(pack), len(system.members),
                                           peers=peers)
        try:
            await runtime.inverter.start()
        except BaseException:
            runtime.shutdown()
            raise
    use_disc = system.discovery.enabled if discovery is None else discovery
    if use_disc:
        from mbms.discovery import Discovery

        assert runtime.transport is not None
        reported: set[str] = set()

        def on_change(report: Any) -> None:  # new problems go to the event log once each
            for problem in report.problems:
                if problem not in reported:
                    reported.add(problem)
                    store.event("discovery_problem", detail=problem)

        # the boot stamp (this run's start) and the incarnation the peer messages carry
        disc = Discovery(system, node_id, runtime.transport.endpoint, on_change=on_change,
                         incarnation=getattr(logic, "incarnation", None))
        await disc.start()
    from mbms.gateways import attach

    try:  # MQTT, metrics, UDS, systemd: [operator] of the pack file (issue 13)
        gateways = attach(runtime, pack, system)
    except BaseException:
        if disc is not None:
            await disc.close()
        runtime.shutdown()
        raise
    if on_ready is not None:
        on_ready(runtime)
    try:
        await runtime.run(stop)
    finally:
        gateways.close()
        if disc is not None:
            await disc.close()
        summary = runtime.timing.summary()
        log.info("node %d stopped", node_id, extra={"timing": json.dumps(summary)})
    return runtime
