"""``mbms demo``: the pack engine on a simulated pack, printed as a readable timeline.

A pack (default: ``hw/packs/example_pack.toml``, 96s4p LG M50) is simulated with the
equivalent-circuit model of its cell file, every series element with its own SOC and
capacity (seeded spread), ±1 mV voltage noise and 0.1 °C temperature noise. The engine is
started from the OCV of the first sample and driven through rest → discharge → rest →
charge; an open sense wire is injected on one element, the engine confirms the fault after
its debounce and commands OPEN in that same step; the contactors open (current 0), the wire
is repaired and the fault is reset.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbms.engine import Action, Engine, PackConfig, StepResult
from mbms.paths import hw_dir


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="drive the pack engine on a simulated pack, print a timeline")
    p.add_argument("--config", type=Path, default=None, help="pack file (default: example pack)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dt", type=float, default=1.0, help="step (s)")
    p.add_argument("--every", type=float, default=300.0, help="timeline row every this many s")
    p.add_argument("--fault-at", type=float, default=3000.0, help="open sense wire at (s)")
    p.add_argument("--fault-cell", type=int, default=41)
    p.set_defaults(func=run)


@dataclass
class Plant:
    """A pack of series elements: the cell file's model, OCV(z) + R0 + its RC pairs (one or
    two), per-element capacity, resistances and time constants at the pack temperature."""

    tables: dict
    soc: np.ndarray
    cap_ah: np.ndarray  # per element (all parallel cells)
    v1: np.ndarray
    v2: np.ndarray
    parallel: float
    rng: np.random.Generator
    temp_c: float = 25.0

    def _rows_at(self, name: str) -> np.ndarray:
        """Table rows (temperature x SOC grid) interpolated to the pack temperature."""
        rows, temps = self.tables[name], self.tables["temps"]
        if len(temps) == 1:
            return rows[0]
        return np.array([np.interp(self.temp_c, temps, rows[:, j]) for j in range(rows.shape[1])])

    def _tau(self, name: str) -> float:
        return float(np.interp(self.temp_c, self.tables["tau_temps"], self.tables[name]))

    def _grid(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.tables["ocv"]) - 1
        x = np.clip(z, 0.0, 1.0) * n
        k = np.minimum(x.astype(int), n - 1)
        return k, x - k

    def _lerp(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        k, f = self._grid(z)
        return y[k] + f * (y[k + 1] - y[k])

    def step(self, i_a: float, dt: float) -> None:
        a = np.exp(-dt / self._tau("tau1_s"))
        r1 = self._lerp(self._rows_at("r1"), self.soc) / self.parallel
        self.v1 = a * self.v1 + r1 * (1 - a) * i_a
        if self.tables["has_rc2"]:
            a2 = np.exp(-dt / self._tau("tau2_s"))
            r2 = self._lerp(self._rows_at("r2"), self.soc) / self.parallel
            self.v2 = a2 * self.v2 + r2 * (1 - a2) * i_a
        self.soc = self.soc - i_a * dt / (3600.0 * self.cap_ah)

    def voltages(self, i_a: float) -> np.ndarray:
        r0 = self._lerp(self._rows_at("r0"), self.soc) / self.parallel
        v = self._lerp(self.tables["ocv"], self.soc) - r0 * i_a - self.v1 - self.v2
        return v + 0.001 * self.rng.standard_normal(len(v))


def _fmt_faults(r: StepResult) -> str:
    if not r.faults:
        return "-"
    parts = [f"{f.rule}[{'pack' if f.pack_level else f.index}]:{f.level.name.lower()}" for f in r.faults[:3]]
    more = f" +{len(r.faults) - 3}" if len(r.faults) > 3 else ""
    return ", ".join(parts) + more


def run(args: argparse.Namespace) -> int:
    cfg = PackConfig.from_toml(args.config or hw_dir() / "packs" / "example_pack.toml")
    eng = Engine(cfg)
    tables = eng._core.tables()
    n, nt, par = cfg.pack.series, cfg.pack.temp_sensors, float(cfg.pack.parallel)
    rng = np.random.default_rng(args.seed)
    plant = Plant(
        tables=tables,
        soc=0.85 + 0.03 * (rng.random(n) - 0.5),
        cap_ah=tables["capacity_ah"] * par * (1.0 + 0.04 * (rng.random(n) - 0.5)),
        v1=np.zeros(n),
        v2=np.zeros(n),
        parallel=par,
        rng=rng,
    )
    lim = cfg.limits
    # the profile: (until_s, current_a, label)
    profile = [
        (120.0, 0.0, "rest"),
        (1920.0, 0.7 * lim.max_discharge_a, "discharge"),
        (2400.0, 0.0, "rest"),
        (4800.0, -0.9 * lim.max_charge_a, "charge"),
        (5400.0, 0.0, "rest"),
    ]
    print(f"mbms demo: {cfg.pack.name or 'pack'} {n}s{cfg.pack.parallel}p of {cfg.pack.cell}, "
          f"{nt} temperature sensors, step {args.dt:g} s, seed {args.seed}")
    print("plant: the cell file's equivalent-circuit model (no model error; DFN references are "
          "in the accuracy harness)")
    print(f"true SOC {plant.soc.min():.3f}..{plant.soc.max():.3f}, capacity spread ±2 %; "
          f"open sense wire on element {args.fault_cell} at t={args.fault_at:g} s")
    print()
    hdr = (f"{'t [s]':>7} {'phase':<10} {'I [A]':>6} {'SOC mean/min/max (true mean)':>30} "
           f"{'sigma':>6} {'DCL/CCL [A]':>12} {'bal':>4} {'SOE kWh':>8} {'action':<9} faults")
    print(hdr)
    print("-" * len(hdr))
    t = 0.0
    next_row = 0.0
    contactors_open = False
    wire_open_until = args.fault_at + 300.0
    last_action = Action.NONE
    end = profile[-1][0]
    while t <= end:
        label, i_req = next((lb, i) for until, i, lb in profile if t < until or until == end)
        # the inverter follows the engine's limits (of the previous step); open contactors: 0 A
        if contactors_open:
            i = 0.0
        elif i_req >= 0.0:
            i = min(i_req, eng.result().dcl_a) if t > 0 else 0.0
        else:
            i = max(i_req, -eng.result().ccl_a) if t > 0 else 0.0
        plant.temp_c = 25.0 + 3.0 * abs(i) / max(lim.max_discharge_a, 1.0)
        v = plant.voltages(i)
        if args.fault_at <= t < wire_open_until:
            v[args.fault_cell] = 0.02  # open sense wire: the AFE reads ~0 V
            if t - args.fault_at < args.dt:
                print(f"{'':7} fault injected at t={t:g} s: element {args.fault_cell} reads 0.02 V")
        temps = plant.temp_c + 0.1 * rng.standard_normal(nt)
        r = eng.step(t, v, temps, i)
        event = r.action != last_action
        if t >= next_row or event:
            sig = float(r.soc_sigma.max())
            print(f"{t:7.0f} {label:<10} {i:6.1f} "
                  f"{r.soc_mean:8.3f} {r.soc_min:6.3f} {r.soc_max:6.3f} ({plant.soc.mean():.3f}) "
                  f"{sig:6.4f} {r.dcl_a:5.1f}/{r.ccl_a:5.1f} {int(r.balance.sum()):>4} "
                  f"{r.soe_wh / 1000:8.2f} {r.action.name:<9} {_fmt_faults(r)}"
                  + ("   <- action changed" if event else ""))
            if not event:
                next_row += args.every
        if r.action == Action.OPEN and not contactors_open:
            contactors_open = True
            print(f"{'':7} contactors OPEN at t={t:g} s (same step as the fault was confirmed)")
        if contactors_open and t >= wire_open_until + 10.0:
            eng.reset_faults(t)
            if eng.result().action < Action.RAMP_DOWN:
                contactors_open = False
                print(f"{'':7} sense wire repaired, faults reset at t={t:g} s: contactors may close")
        last_action = r.action
        plant.step(i, args.dt)
        t += args.dt
    err = np.abs(r.soc - plant.soc)
    print()
    print(f"final SOC error vs the simulated pack: mean {err.mean() * 100:.2f} %, "
          f"max {err.max() * 100:.2f} %; coulomb count alone: "
          f"max {np.abs(r.soc_cc - plant.soc).max() * 100:.2f} %")
    print(f"string OCV {r.ocv_string_v:.1f} V, string resistance {r.r_string_ohm * 1000:.1f} mOhm "
          f"(inputs to current sharing between parallel strings)")
    return 0
