"""The Rust cell model against PyBaMM's equivalent-circuit model (Thevenin) with the same
parameters, on the committed traces made by ``scripts/make_reference_traces.py``.

Both models are the same equations (OCV(SOC) - R0 i - RC pairs); the PyBaMM run is the exact
continuous-time response to a current held constant over each 1 s sample (zero-order hold), which
is what ``CellModel.simulate`` computes step by step. So the terminal voltages must agree to well
under a millivolt; a sign, capacity, time-constant or table-interpolation mismatch would show up
as tens of millivolts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbms import _core
from mbms.paths import cell_file

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("key", ["nmc", "lfp"])
def test_terminal_voltage_matches_pybamm_thevenin(key: str) -> None:
    trace = np.load(DATA / f"thevenin_{key}.npz")
    model = _core.CellModel.from_toml(cell_file(str(trace["cell_file"])).read_text())
    current = trace["i_a"].astype(np.float64)
    v, soc = model.simulate(float(trace["soc0"]), current.tolist(), float(trace["dt_s"]), float(trace["temp_c"]))
    v = np.asarray(v)
    soc = np.asarray(soc)
    # the profile is dynamic: it must actually move the voltage and the SOC
    assert np.ptp(trace["v_v"]) > 0.1
    assert np.ptp(trace["soc"]) > 0.05
    rms_v = float(np.sqrt(np.mean((v - trace["v_v"]) ** 2)))
    max_soc = float(np.max(np.abs(soc - trace["soc"])))
    assert rms_v <= 1e-3, f"terminal-voltage RMS error {rms_v * 1e3:.3f} mV > 1 mV"
    assert max_soc <= 1e-4, f"SOC differs by up to {max_soc:.2e}"
