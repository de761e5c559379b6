"""``mbms demo``: the pack engine on a simulated pack, printed as a readable timeline.

One string of the pack (default: the shipped ``packs/example_pack.toml``, 96s4p LG M50) is simulated
by the plant (:mod:`mbms.plant`: every series element its own equivalent circuit with seeded
capacity/resistance/SOC spread, a thermal model, and sensors with noise, offsets and gain
error). The engine sees only the plant's measurements. It is started from the OCV of the first
sample and driven through rest → discharge → rest → charge, the load obeying the engine's
limits; an open sense wire is injected on one element, the engine confirms the fault after its
debounce and commands OPEN in that same step; the contactors open (current 0), the wire is
repaired and the fault is reset.
"""

from __future__ import annotations

import argparse

import numpy as np

from mbms.cli import data_file
from mbms.engine import Action, Engine, PackConfig, StepResult
from mbms.paths import pack_file
from mbms.plant import Plant


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="drive the pack engine on a simulated pack, print a timeline")
    p.add_argument("--config", type=data_file(pack_file), default=None,
                   help="pack file: a path or a shipped name (default: example_pack)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dt", type=float, default=1.0, help="step (s)")
    p.add_argument("--every", type=float, default=300.0, help="timeline row every this many s")
    p.add_argument("--fault-at", type=float, default=3000.0, help="open sense wire at (s)")
    p.add_argument("--fault-cell", type=int, default=41)
    p.set_defaults(func=run)


def one_string_plant(cfg: PackConfig, seed: int) -> Plant:
    """The pack as a one-string plant with realistic sensor errors (AFE class: ±1 mV noise,
    0.5 mV channel offsets; a Hall current sensor with 0.5 % gain error and 50 mA offset)."""
    return Plant(
        {
            "strings": [
                {
                    "series": cfg.pack.series,
                    "parallel": cfg.pack.parallel,
                    "cell": cfg.pack.cell,
                    "initial_soc": 0.85,
                    "r_extra_ohm": cfg.pack.r_extra_ohm,
                    "variation": {"capacity_sigma": 0.01, "resistance_sigma": 0.03, "soc_sigma": 0.004},
                    "sensors": {
                        "temp_sensors": cfg.pack.temp_sensors,
                        "cell_voltage": {"noise": 0.001, "offset_sigma": 0.0005, "lsb": 0.0001},
                        "cell_temp": {"noise": 0.1, "offset_sigma": 0.2, "lsb": 0.1},
                        "current": {"noise": 0.05, "offset": 0.05, "gain_error": 0.005, "lsb": 0.01},
                    },
                }
            ],
            "bus": {"capacitance_f": 0.002},
        },
        seed=seed,
    )


def _fmt_faults(r: StepResult) -> str:
    if not r.faults:
        return "-"
    parts = [f"{f.rule}[{'pack' if f.pack_level else f.index}]:{f.level}" for f in r.faults[:3]]
    more = f" +{len(r.faults) - 3}" if len(r.faults) > 3 else ""
    return ", ".join(parts) + more


def run(args: argparse.Namespace) -> int:
    cfg = PackConfig.from_toml(args.config or pack_file("example_pack"))
    eng = Engine(cfg)
    n, nt = cfg.pack.series, cfg.pack.temp_sensors
    plant = one_string_plant(cfg, args.seed)
    lim = cfg.limits
    # the profile: (until_s, current_a, label)
    profile = [
        (120.0, 0.0, "rest"),
        (1920.0, 0.7 * lim.max_discharge_a, "discharge"),
        (2400.0, 0.0, "rest"),
        (4800.0, -0.9 * lim.max_charge_a, "charge"),
        (5400.0, 0.0, "rest"),
    ]
    true_soc = plant.cell_soc(0)
    print(f"mbms demo: {cfg.pack.name or 'pack'} {n}s{cfg.pack.parallel}p of {cfg.pack.cell}, "
          f"{nt} temperature sensors, step {args.dt:g} s, seed {args.seed}")
    print("plant: mbms.plant (per-element equivalent circuits, thermal model, noisy sensors); "
          "the engine sees only the measurements")
    print(f"true SOC {true_soc.min():.3f}..{true_soc.max():.3f}; "
          f"open sense wire on element {args.fault_cell} at t={args.fault_at:g} s")
    print()
    hdr = (f"{'t [s]':>7} {'phase':<10} {'I [A]':>6} {'SOC mean/min/max (true mean)':>30} "
           f"{'sigma':>6} {'DCL/CCL [A]':>12} {'bal':>4} {'SOE kWh':>8} {'action':<9} faults")
    print(hdr)
    print("-" * len(hdr))
    plant.set_command(0, neg=True, pos=True, pre=False)
    t = 0.0
    next_row = 0.0
    contactors_open = False
    wire_open_until = args.fault_at + 300.0
    wire_open = False
    last_action = Action.NONE
    end = profile[-1][0]
    r: StepResult | None = None
    while t <= end:
        label, i_req = next((lb, i) for until, i, lb in profile if t < until or until == end)
        # the inverter follows the engine's limits (of the previous step); open contactors: 0 A
        if contactors_open or r is None:
            i = 0.0
        elif i_req >= 0.0:
            i = min(i_req, r.dcl_a)
        else:
            i = max(i_req, -r.ccl_a)
        if not wire_open and args.fault_at <= t < wire_open_until:
            plant.inject(kind="sensor_open_wire", string=0, sensor="cell_voltage", channel=args.fault_cell)
            wire_open = True
            print(f"{'':7} fault injected at t={t:g} s: open sense wire on element {args.fault_cell}")
        elif wire_open and t >= wire_open_until:
            plant.inject(kind="sensor_repaired", string=0, sensor="cell_voltage", channel=args.fault_cell)
            wire_open = False
        m = plant.measure(0)
        r = eng.step(t, m.v_cell_v, m.t_cell_c, m.i_a)
        event = r.action != last_action
        if t >= next_row or event:
            sig = float(r.soc_sigma.max())
            print(f"{t:7.0f} {label:<10} {m.i_a:6.1f} "
                  f"{r.soc_mean:8.3f} {r.soc_min:6.3f} {r.soc_max:6.3f} ({plant.cell_soc(0).mean():.3f}) "
                  f"{sig:6.4f} {r.dcl_a:5.1f}/{r.ccl_a:5.1f} {int(r.balance.sum()):>4} "
                  f"{r.soe_wh / 1000:8.2f} {r.action.name:<9} {_fmt_faults(r)}"
                  + ("   <- action changed" if event else ""))
            if not event:
                next_row += args.every
        if r.action == Action.OPEN and not contactors_open:
            contactors_open = True
            plant.set_command(0, neg=False, pos=False, pre=False)
            print(f"{'':7} contactors OPEN at t={t:g} s (same step as the fault was confirmed)")
        if contactors_open and not wire_open and t >= wire_open_until + 10.0:
            eng.reset_faults(t)
            if eng.result().action < Action.RAMP_DOWN:
                contactors_open = False
                plant.set_command(0, neg=True, pos=True, pre=False)
                print(f"{'':7} sense wire repaired, faults reset at t={t:g} s: contactors closed again")
        last_action = r.action
        plant.set_load_a(i)
        plant.step(args.dt)
        t += args.dt
    assert r is not None
    true_soc = plant.cell_soc(0)
    err = np.abs(r.soc - true_soc)
    print()
    print(f"final SOC error vs the simulated pack: mean {err.mean() * 100:.2f} %, "
          f"max {err.max() * 100:.2f} %; coulomb count alone: "
          f"max {np.abs(r.soc_cc - true_soc).max() * 100:.2f} %")
    print(f"string OCV {r.ocv_string_v:.1f} V, string resistance {r.r_string_ohm * 1000:.1f} mOhm "
          f"(inputs to current sharing between parallel strings)")
    return 0
