"""``mbms sim``: the multi-node simulation (the project's main job).

With no arguments it runs the embedded default scenario: 4 strings of 96 series cells, one
weaker, one mismatched, a dynamic load, a fault in one string mid-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mbms.cli import data_file
from mbms.paths import scenario_file



def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sim", help="simulate a parallel-string battery with one BMU node per pack")
    p.add_argument("--scenario", metavar="FILE", type=data_file(scenario_file),
                   help="scenario TOML, or a shipped scenario's name (partition, kill_restart, ...); "
                        "default: the embedded story")
    p.add_argument("--packs", type=int, help="number of packs (strings), overrides the scenario")
    p.add_argument("--duration", type=float, metavar="S", help="simulated seconds")
    p.add_argument("--seed", type=int, help="seed of all randomness (same seed, same run)")
    p.add_argument("--mode", choices=["fast", "processes"], help="fast (one process, virtual clock) or processes")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                   help="processes mode: plant seconds per wall second (the nodes stay on wall time)")
    p.add_argument("--hardware", choices=["sim", "linux"], default="sim",
                   help="processes mode: the nodes read the plant over the sim link (sim) or through the Linux "
                        "drivers (LTC6813, IVT-S, iso165C, gpiod) on the plant's emulated devices (linux)")
    p.add_argument("--out", metavar="DIR",
                   help="write summary.json, timeseries.csv and PNG plots (the 'plots' extra) here")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="PATH=VALUE",
                   help="change one scenario setting, e.g. plant.thermal.ambient_c=40 or "
                        "plant.strings.*.variation.resistance_sigma=0.05 (repeatable; mbms.sim.overrides)")
    p.add_argument("--protocol", action="store_true",
                   help="replay one seeded fault schedule of the peer protocol (--seed) with its trace, "
                        "as `mbms campaign` reports them")
    p.add_argument("--peers-min", type=int, default=3, help="--protocol: fewest peers of the schedule draw")
    p.add_argument("--peers-max", type=int, default=5, help="--protocol: most peers of the schedule draw")
    p.add_argument("--duration-ms", type=int, default=6000, help="--protocol: simulated ms of the schedule")
    p.add_argument("--adversary", choices=("on", "off", "mixed"), default="mixed",
                   help="--protocol: the attacker in this schedule (mixed: as the seed draws it)")
    p.add_argument("--sabotage", default=None,
                   help="--protocol: a checker self-test that breaks one rule (mbms._core.SABOTAGE_MODES)")
    p.add_argument("--check", action="store_true",
                   help="check the scenario with --set/--packs/... applied (every key, the packs' engine and cell "
                        "files, plant, network, events: the build a run starts with) and exit: 0 ok, 2 errors")
    p.add_argument("--quiet", action="store_true", help="no live view, only the summary")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.set_defaults(func=run)


def load_scenario(args: argparse.Namespace) -> Any:
    from mbms.sim.scenario import Scenario

    from mbms.sim.overrides import apply_settings, parse_setting

    sc = Scenario.from_toml(args.scenario) if args.scenario else Scenario.default()
    sc = sc.with_overrides(packs=args.packs, duration_s=args.duration, seed=args.seed, mode=args.mode)
    return apply_settings(sc, [parse_setting(s) for s in args.settings])


#: ``--adversary`` / a campaign's ``protocol.adversary`` as the simulator takes it (None: drawn per seed).
ADVERSARY: dict[str, bool | None] = {"on": True, "off": False, "mixed": None}


def run_protocol(args: argparse.Namespace) -> int:
    """One seeded schedule of the protocol simulator, its trace and its violations."""
    from mbms import _core
    from mbms.errors import ConfigError

    if args.seed is None:
        raise ConfigError("--seed", "--protocol replays one schedule: give its seed")
    try:
        violations, trace = _core.consensus_sim_replay(args.seed, peers_min=args.peers_min, peers_max=args.peers_max,
                                                       duration_ms=args.duration_ms, sabotage=args.sabotage,
                                                       adversary=ADVERSARY[args.adversary])
    except ValueError as exc:
        field, msg = exc.args if len(exc.args) == 2 else ("--protocol", str(exc))
        raise ConfigError(f"--{str(field).replace('_', '-')}", str(msg)) from None
    if not args.quiet:
        for line in trace:
            print(line)
    print(f"schedule seed {args.seed}: {len(violations)} violation(s)")
    for v in violations:
        print(f"  {v}", file=sys.stderr)
    return 1 if violations else 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mbms.sim import report

    if args.protocol:
        return run_protocol(args)
    console = Console(stderr=args.json, quiet=args.quiet and not args.json)
    sc = load_scenario(args)
    if args.check:
        from mbms.sim import fast

        fast.build(sc)  # what a fast run builds first; processes mode hands the same packs to its nodes
        print(f"{sc.source or 'default scenario'}: scenario {sc.name}: {sc.n_packs} packs, {sc.duration_s:.0f} s, "
              f"mode {sc.mode}")
        return 0
    plots = bool(args.out) and report.plots_available()
    if args.out and not plots:  # said before the run, not after it
        print("mbms sim: PNG plots skipped: matplotlib is not installed (pip install 'mbms[plots]'); "
              "summary.json and timeseries.csv are written", file=sys.stderr)
    if sc.mode == "processes":
        from mbms.sim import processes

        res = processes.run(sc, console=console, out=Path(args.out) if args.out else None,
                            time_scale=args.time_scale, hardware=args.hardware)
    else:
        res = _run_fast(sc, console, live=not args.quiet and not args.json)
    summ = report.summary(res)
    if args.out:
        out = Path(args.out)
        report.write_all(res, out, plots=plots)
        console.print(f"wrote {out}/summary.json, timeseries.csv" + (" and plots" if plots else ""))
    if args.json:
        print(json.dumps(summ, indent=2))
    else:
        _print_summary(Console(), summ)
    if summ["invariant_violations"]:
        print(f"mbms sim: {summ['invariant_violations']} safety invariant violation(s):", file=sys.stderr)
        for v in summ["violations"][:20]:
            print(f"  {v}", file=sys.stderr)
        return 1
    return 0


PHASES = ("open", "requesting", "precharging", "closing", "closed", "isolated")
ACTIONS = ("ok", "derate", "ramp-down", "OPEN")


def _run_fast(sc: Any, console: Any, live: bool) -> Any:
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mbms.sim import fast

    console.print(f"[bold]mbms sim[/] {sc.name}: {sc.n_packs} packs, {sc.duration_s:.0f} s simulated, seed {sc.seed}")
    if sc.description:
        console.print(f"[dim]{sc.description}[/]")
    progress = Progress(
        TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeRemainingColumn()
    )
    task = progress.add_task("sim", total=sc.duration_s)
    if not live:
        return fast.run(sc)
    from rich.console import Group

    with Live(Group(progress), console=console, refresh_per_second=8) as lv:

        def on_progress(t_s: float, sim: Any) -> None:
            progress.update(task, completed=t_s)
            lv.update(Group(_live_table(sim, t_s), progress))

        res = fast.run(sc, progress=on_progress, chunk_s=max(sc.duration_s / 200, 1.0))
    return res


def _live_table(sim: Any, t_s: float) -> Any:
    from rich.table import Table

    last = sim.last()
    tab = Table(title=f"t = {t_s / 60:5.1f} min", expand=False)
    for col in ("pack", "phase", "contactors", "SOC true/est", "I (A)", "own DCL/CCL (A)", "T max", "protection"):
        tab.add_column(col, justify="right")
    if last is None:
        return tab
    sys_row, rows = last
    ch = sim.string_channels()
    sch = sim.system_channels()
    for k, r in enumerate(rows):
        v = dict(zip(ch, r))
        alive = v["alive"] > 0
        phase = PHASES[int(v["phase"])] if alive and 0 <= int(v["phase"]) < len(PHASES) else "DOWN"
        state = ("open", "[yellow]precharge[/]", "[green]closed[/]")[int(v["state"])]
        act = ACTIONS[int(v["action"])] if alive else "-"
        if act == "OPEN":
            act = "[red]FAULT → open[/]"
        tab.add_row(
            str(k + 1), phase, state, f"{100 * v['soc_true']:.1f} / {100 * v['soc_est']:.1f} %",
            f"{v['i_a']:+.1f}", f"{v['local_dcl_a']:.0f} / {v['local_ccl_a']:.0f}", f"{v['t_max_c']:.1f} °C", act,
        )
    s = dict(zip(sch, sys_row))
    tab.caption = (
        f"bus {s['v_bus_v']:.1f} V · load {s['i_load_a']:+.1f} A (asked {s['i_request_a']:+.1f}) · "
        f"agreed DCL {s['system_dcl_a']:.0f} A / CCL {s['system_ccl_a']:.0f} A · speaker {int(s['speaker'])}"
    )
    return tab


def _faults_short(faults: list[dict[str, str]]) -> str:
    """[{rule: voltage_spread, level: warning}, {.., level: alarm}] -> "voltage_spread (alarm)":
    the highest level each rule reached."""
    order = {"warning": 0, "alarm": 1, "fault": 2}
    worst: dict[str, str] = {}
    for f in faults:
        rule, level = f["rule"], f["level"]
        if rule not in worst or order.get(level, 0) > order.get(worst[rule], 0):
            worst[rule] = level
    return ", ".join(f"{r} ({lvl})" for r, lvl in worst.items()) or "-"


def _print_summary(console: Any, summ: dict[str, Any]) -> None:
    from rich.table import Table

    from mbms.sim.report import _mmss

    tl = summ.get("timeline", [])
    if tl:
        console.print("[bold]what happened[/] (min:s)")
        shown = tl if len(tl) <= 40 else tl[:20] + [{"t_s": None, "event": f"... {len(tl) - 40} more ..."}] + tl[-20:]
        for e in shown:
            when = _mmss(e["t_s"]) if e["t_s"] is not None else "     "
            console.print(f"  {when}  {e['event']}", highlight=False)

    tab = Table(title=f"summary: {summ['scenario']} (seed {summ['seed']})")
    for col in ("pack", "SOC start", "SOC end", "connected", "isolations", "rejoins"):
        tab.add_column(col, justify="right")
    tab.add_column("protection seen (highest level)", overflow="fold")
    for p in summ["packs"]:
        tab.add_row(
            str(p["id"]), f"{100 * p['soc_start']:.1f} %", f"{100 * p['soc_end']:.1f} %",
            f"{p['time_connected_s']:.0f} s", str(p["isolations"]), str(p["rejoins"]),
            _faults_short(p["faults"]),
        )
    console.print(tab)
    s = summ["system"]
    lat = s["agree_latency_ms"]
    console.print(
        f"invariant violations (S1–S6): [bold]{summ['invariant_violations']}[/] · "
        f"limits agreed p50 {lat['p50']} ms / p99 {lat['p99']} ms · "
        f"max string over-current {s['max_string_overcurrent_a']} A · "
        f"energy out {s['energy_discharged_kwh']} kWh, in {s['energy_charged_kwh']} kWh · "
        f"{summ['duration_s']:.0f} s simulated in {summ['wall_s']} s ({summ['realtime_factor']}× real time)"
    )
    inv = summ.get("inverter")
    if inv:
        console.print(
            f"inverter link ({inv['protocol']}): longest pause between limit frames {inv['max_gap_ms']} ms "
            f"(inverter timeout {inv['timeout_ms']} ms), timeouts {inv['timeouts']}, {inv['limit_frames']} limit "
            f"frames, bus load {inv['bus_load_pct']} %, bad frames {inv['bad_frames']}"
        )
