"""What a simulation run leaves behind: ``summary.json``, the time series (CSV) and PNG plots."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from mbms.sim.fast import RunResult
from mbms.sim.scenario import NetworkEvent

PHASE_NAMES = ("open", "requesting", "precharging", "closing", "closed", "isolated")


def percentiles_ms(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
        "n": int(a.size),
    }


ACTIONS = ("normal", "warning → derate", "alarm → ramp down", "fault → open")


def _mmss(t_s: float) -> str:
    m, sec = divmod(int(round(t_s)), 60)
    return f"{m:3d}:{sec:02d}"


#: Phase value of an isolated string (mbms.types.Phase.ISOLATED: the consensus core's phase 5).
_ISOLATED = 5



def _network_text(ne: NetworkEvent) -> str:
    """One network event for the report; each kind reads only its own fields (the others are
    None in the normalised event)."""
    if ne.kind == "loss":
        return f"network: loss {ne.value:.0%} per receiver"
    if ne.kind == "duplicate":
        return f"network: duplicates {ne.value:.0%}"
    if ne.kind == "delay":
        return f"network: delay up to {ne.max_ms} ms"
    if ne.kind == "partition":
        return f"network: partition {[list(g) for g in ne.groups or ()]}"
    if ne.kind == "heal":
        return "network: healed"
    if ne.kind == "kill":
        return f"node {ne.node} killed"
    if ne.kind == "restart":
        return f"node {ne.node} restarted"
    raise KeyError(ne.kind)

def timeline(res: RunResult) -> list[dict[str, Any]]:
    """What happened, in order: contactor changes, isolations, protection level changes (from the
    records), and the scenario's injected plant faults and network events.

    Every entry has ``t_s`` and ``event`` (text); the nodes' decisions also have ``pack`` (1-based)
    and ``decision``: ``close`` (first close onto the bus), ``rejoin`` (a later close), ``isolate``
    (the string opened and its node reports itself isolated on a confirmed fault, S1) or ``open``
    (any other open). Both modes write the
    same entries, so their decisions can be compared (tests/test_modes_agree.py).
    """
    ev: list[tuple[float, int, str, dict[str, Any]]] = []
    t = res.sys("t_s")
    state = res.per_string("state")
    action = res.per_string("action")
    phase = res.per_string("phase")
    # the agreed DCL as text: in processes mode it comes by telemetry and is unknown (NaN) until
    # the first limits frame after a change of the closed set
    dcl = ["unknown" if not np.isfinite(x) else f"{x:.0f} A" for x in res.sys("system_dcl_a")]
    n = state.shape[1] if state.ndim == 2 else 0
    for k in range(n):
        prev_state, prev_act, closed_before = 0.0, 0.0, False
        for r in range(len(t)):
            st = state[r, k]
            if st == 2 and prev_state != 2:
                what, decision = ("rejoined the bus", "rejoin") if closed_before else ("closed onto the bus", "close")
                ev.append((t[r], 2, f"pack {k + 1} {what} (agreed DCL {dcl[r]})",
                           {"pack": k + 1, "decision": decision}))
                closed_before = True
            elif st != 2 and prev_state == 2:
                # an open on a confirmed fault (S1) if the node reports itself isolated around it
                # (its phase comes by telemetry in processes mode: up to a record either side)
                near = phase[max(0, r - 2):r + 3, k]
                if np.any(near[np.isfinite(near)].astype(int) == _ISOLATED):
                    ev.append((t[r], 2, f"pack {k + 1} isolated itself on a fault, opened (agreed DCL now "
                                        f"{dcl[r]})", {"pack": k + 1, "decision": "isolate"}))
                else:
                    ev.append((t[r], 2, f"pack {k + 1} opened (agreed DCL now {dcl[r]})",
                               {"pack": k + 1, "decision": "open"}))
            a = action[r, k]
            if np.isfinite(a) and a != prev_act and 0 <= int(a) < len(ACTIONS):
                ev.append((t[r], 1, f"pack {k + 1} protection: {ACTIONS[int(a)]}", {"pack": k + 1}))
                prev_act = a
            prev_state = st
    for e in res.scenario.events:
        f = dict(e.fault)
        kind = f.pop("kind", "?")
        pack = f.pop("string", None)
        detail = ", ".join(f"{a}={b}" for a, b in f.items())
        where = f" in pack {pack + 1}" if isinstance(pack, int) else ""
        ev.append((e.at_s, 0, f"plant: {kind.replace('_', ' ')}{where}" + (f" ({detail})" if detail else ""), {}))
    for ne in res.scenario.network:
        ev.append((ne.at_s, 0, _network_text(ne), {}))
    ev.sort(key=lambda x: (x[0], x[1]))
    return [{"t_s": round(float(a), 1), "event": c, **extra} for a, _, c, extra in ev]


def decisions(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes' decisions of a run (closes, rejoins, opens, isolations) from its summary's
    timeline, in order: ``{"t_s", "pack", "decision"}``."""
    return [{"t_s": e["t_s"], "pack": e["pack"], "decision": e["decision"]}
            for e in summary["timeline"] if "decision" in e]


def summary(res: RunResult) -> dict[str, Any]:
    rep = res.report
    soc = res.per_string("soc_true")
    packs = []
    for k, p in enumerate(rep["packs"]):
        packs.append(
            {
                "id": k + 1,
                "soc_start": round(float(soc[0, k]), 4) if len(soc) else None,
                "soc_end": round(float(soc[-1, k]), 4) if len(soc) else None,
                "faults": p.get("faults_seen", []),
                "time_connected_s": round(p["time_connected_s"], 1),
                "isolations": p["isolations"],
                "rejoins": p["rejoins"],
                "fault_resets": p.get("resets", 0),
                "rx_ok": p.get("rx_ok", 0),
                "rx_dropped": p.get("rx_dropped", 0),
            }
        )
    sc = res.scenario
    out = {
        "scenario": sc.name,
        "source": sc.source,
        "seed": sc.seed,
        "mode": sc.mode,
        "packs_n": sc.n_packs,
        "duration_s": sc.duration_s,
        "wall_s": round(res.wall_s, 3),
        "realtime_factor": round(sc.duration_s / res.wall_s, 1) if res.wall_s > 0 else None,
        "invariant_violations": len(rep["violations"]),
        "timeline": timeline(res),
        "violations": list(rep["violations"]),
        "packs": packs,
        "system": {
            "agree_latency_ms": percentiles_ms(rep["agree_latencies_ms"]),
            "detect_latency_ms": percentiles_ms(rep["detect_latencies_ms"]),
            "max_string_overcurrent_a": round(float(rep["max_string_overcurrent_a"]), 3),
            "energy_discharged_kwh": round(rep["energy_discharged_j"] / 3.6e6, 4),
            "energy_charged_kwh": round(rep["energy_charged_j"] / 3.6e6, 4),
            "string_closes": [
                {"t_s": round(t / 1000, 2), "pack": k + 1, "dv_v": round(dv, 3)} for (t, k, dv) in rep["closes"]
            ],
        },
    }
    if "inverter" in rep:  # processes mode: what the simulated inverter heard on its CAN channel
        out["inverter"] = dict(rep["inverter"])
    return out


def write_csv(res: RunResult, path: Path) -> None:
    n = res.strings.shape[1] if res.strings.ndim == 3 else 0
    header = list(res.system_channels) + [f"s{k + 1}_{c}" for k in range(n) for c in res.string_channels]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in range(res.system.shape[0]):
            row = list(res.system[r]) + list(res.strings[r].reshape(-1))
            w.writerow([f"{v:.6g}" for v in row])


def write_plots(res: RunResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res.sys("t_s") / 60.0
    n = res.strings.shape[1]
    files: list[Path] = []

    def save(fig: Any, name: str) -> None:
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)

    fig, ax = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    ax[0].plot(t, res.sys("v_bus_v"), color="k")
    ax[0].set_ylabel("bus voltage (V)")
    ax[1].plot(t, res.sys("i_request_a"), color="0.7", label="requested")
    ax[1].plot(t, res.sys("i_load_a"), color="C0", label="delivered")
    ax[1].set_ylabel("bus current (A, +discharge)")
    ax[1].set_xlabel("time (min)")
    ax[1].legend(loc="upper right")
    save(fig, "bus.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    for k in range(n):
        ax.plot(t, res.per_string("i_a")[:, k], label=f"pack {k + 1}")
    ax.set_ylabel("string current (A)")
    ax.set_xlabel("time (min)")
    ax.legend(loc="upper right", ncol=min(n, 4))
    save(fig, "string_currents.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    for k in range(n):
        c = f"C{k % 10}"
        ax.plot(t, 100 * res.per_string("soc_true")[:, k], color=c, label=f"pack {k + 1} true")
        ax.plot(t, 100 * res.per_string("soc_est")[:, k], color=c, ls="--", label=f"pack {k + 1} estimated")
    ax.set_ylabel("SOC (%)")
    ax.set_xlabel("time (min)")
    ax.legend(loc="upper right", ncol=2, fontsize=7)
    save(fig, "soc.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, res.sys("system_dcl_a"), color="C3", label="agreed discharge limit")
    ax.plot(t, -res.sys("system_ccl_a"), color="C2", label="agreed charge limit (−)")
    ax.plot(t, res.sys("i_load_a"), color="C0", label="bus current")
    ax.set_ylabel("current (A)")
    ax.set_xlabel("time (min)")
    ax.legend(loc="upper right")
    save(fig, "limits.png")

    fig, ax = plt.subplots(figsize=(10, 0.6 * n + 1.5))
    state = res.per_string("state")
    colors = {0: "0.85", 1: "orange", 2: "C2"}
    for k in range(n):
        s = state[:, k]
        start = 0
        for i in range(1, len(s) + 1):
            if i == len(s) or s[i] != s[start]:
                ax.barh(k + 1, t[min(i, len(t) - 1)] - t[start], left=t[start], color=colors.get(int(s[start]), "k"))
                start = i
    ax.set_yticks(range(1, n + 1), [f"pack {k + 1}" for k in range(n)])
    ax.set_xlabel("time (min)   grey open · orange precharge · green closed")
    save(fig, "contactors.png")

    fig, ax = plt.subplots(2, 1, sharex=True, figsize=(10, 5))
    for k in range(n):
        ax[0].plot(t, res.per_string("t_max_c")[:, k], label=f"pack {k + 1}")
        ax[1].step(t, res.per_string("action")[:, k], where="post", label=f"pack {k + 1}")
    ax[0].set_ylabel("max cell temp (°C)")
    ax[0].legend(loc="upper right", ncol=min(n, 4))
    ax[1].set_yticks([0, 1, 2, 3], ["none", "derate", "ramp-down", "open"])
    ax[1].set_ylabel("protection action")
    ax[1].set_xlabel("time (min)")
    save(fig, "faults.png")
    return files


def plots_available() -> bool:
    """Whether the optional plotting package (the ``plots`` extra: matplotlib) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def write_all(res: RunResult, out: Path, plots: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summ = summary(res)
    (out / "summary.json").write_text(json.dumps(summ, indent=2) + "\n")
    write_csv(res, out / "timeseries.csv")
    if plots:
        write_plots(res, out)
    return summ
