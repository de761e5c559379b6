"""The real plant simulator (mbms.plant.Plant, Rust) served by `mbms plant` to a node runtime over
the node's own link: measurements of the right shape arrive, commands move the contactors, a
killed plant trips the node's fail-safe."""

from __future__ import annotations

from pathlib import Path

from conftest import Proc, free_udp_port, wait_for
from node_double import DoubleLogic
from test_plant_link import RuntimeThread, _plant_state

from mbms.hardware.sim_link import SimLinkHardware
from mbms.config_views import NodeSection
from mbms.types import ALL_OPEN, Contactors
from mbms.node.runtime import NodeRuntime
from mbms.paths import data_dir



def test_mbms_plant_serves_a_node(tmp_path: Path, procs: list[Proc]) -> None:
    link = f"udp://127.0.0.1:{free_udp_port()}"
    plant = Proc(["-m", "mbms", "plant", "--system", str(data_dir() / "systems" / "example_plant.toml"),
                  "--listen", link, "--load-a", "0"])
    procs.append(plant)
    plant.read_until(lambda s: s.startswith("plant serving 4 strings"), 30)
    node = NodeSection.of(id=1, state_dir=tmp_path, control_period_ms=50, estimation_period_ms=50, stale_ms=400,
                       overrun_ms=1000)
    hw = SimLinkHardware(link, string=0, timeout_s=0.3)
    logic = DoubleLogic(1, n_cells=96)
    rt = NodeRuntime(node, logic, hw)
    th = RuntimeThread(rt)
    try:
        m = wait_for(lambda: (s := hw.read()) and s[0], 10, "first measurement")
        assert len(m.v_cell_v) == 96 and len(m.t_cell_c) == 24 and 3.0 < m.v_cell_v.mean() < 4.2
        meas = wait_for(lambda: (s := hw.read()) and s[0].feedback.pos and s[0], 10, "main contactor feedback")
        assert meas.feedback == Contactors(True, True, False)
        # the bus is charged to the string voltage (the bus sensor samples every 100 ms, so the
        # first sample after the close may still hold the precharge-time reading)
        wait_for(lambda: (s := hw.read()) and abs(s[0].v_bus_v - s[0].v_string_v) < 3.0, 2, "bus at string voltage")
        assert _plant_state(link)["contactors"][0] == [True, True, False]
        plant.kill()
        # the runtime thread sets the reason and commands all-open in the same period; wait on
        # both (reading the reason alone can fall between the two assignments under load)
        wait_for(lambda: rt.fail_safe_reason is not None and rt.commanded == ALL_OPEN, 5,
                 "fail-safe, all open, after the plant died")
        assert rt.fail_safe_reason is not None and rt.commanded == ALL_OPEN
    finally:
        th.close()
