"""``mbms bench afe``: the acquisition budget of the LTC6813-1 chain per control period, for 96
and 400 cells, stated and measured side by side.

Stated: the bytes one acquisition clocks on the isoSPI wire at ``--spi-hz`` (1 MHz, the isoSPI
maximum) plus the datasheet conversion times (ADCV and ADAX, one each per acquisition for the
whole chain) and the wake-up. Measured: the driver (:class:`mbms.hardware.ltc6813.Ltc6813Chain`)
acquiring from the byte-level chain emulator served by another process over the emulated spidev
socket: wall time per acquisition (socket round trips stand in for the wire; the PLADC polls
wait out the emulated conversion) and the driver's own CPU time, and the same for the open-wire
check (ADOW, 4 conversions + 2 x 6 reads) that runs every ``open_wire_every`` acquisitions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from mbms.emulators.device_server import chain_layout
from mbms.hardware import ltc6813 as L


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", type=int, nargs="+", default=[96, 400])
    parser.add_argument("--temps-per-4-cells", type=int, default=1, help="NTCs per 4 cells (default 1)")
    parser.add_argument("--spi-hz", type=int, default=L.F_SPI_MAX_HZ)
    parser.add_argument("--period-ms", type=float, default=100.0, help="control period (ms)")
    parser.add_argument("--open-wire-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)


def measure(n_cells: int, n_temps: int, args: argparse.Namespace) -> dict[str, Any]:
    ics, m, k = chain_layout(n_cells, n_temps)
    stated = L.stated_budget_s(n_cells, m, k, args.spi_hz)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "afe.sock")
        emu = subprocess.Popen([sys.executable, "-c", f"from mbms.emulators.afe_chain import serve; serve({path!r}, {ics}, {m}, {k})"],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert emu.stdout is not None
            emu.stdout.readline()
            ch = L.Ltc6813Chain(L.open_spi(f"emu://{path}", args.spi_hz), ics, m, k)
            ch.acquire()  # connect, first configuration
            wall, cpu = [], []
            for _ in range(args.repeats):
                w0, c0 = time.perf_counter(), time.process_time()
                ch.acquire()
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
            ow_wall, ow_cpu = [], []
            for _ in range(max(3, args.repeats // 10)):
                w0, c0 = time.perf_counter(), time.process_time()
                ch.open_wire_check()
                ow_wall.append(time.perf_counter() - w0)
                ow_cpu.append(time.process_time() - c0)
        finally:
            emu.kill()
            emu.wait()
    ow_bytes = 4 * (4 + 2 * 5) + 2 * 6 * (4 + 8 * ics)
    ow_stated = ow_bytes * 8 / args.spi_hz + 4 * L.T_CONV_ADCV_S
    per_period_stated = stated["total_s"] + ow_stated / args.open_wire_every
    per_period_meas = float(np.mean(wall)) + float(np.mean(ow_wall)) / args.open_wire_every
    return {
        "cells": n_cells, "temps": n_temps, "ics": ics, "cells_per_ic": m, "temps_per_ic": k,
        "stated_ms": {"wire": stated["wire_s"] * 1e3, "conversion": stated["conversion_s"] * 1e3,
                      "wake": stated["wake_s"] * 1e3, "acquisition": stated["total_s"] * 1e3,
                      "open_wire_check": ow_stated * 1e3, "per_period": per_period_stated * 1e3,
                      "bytes": stated["bytes"]},
        "measured_ms": {"acquisition_mean": float(np.mean(wall)) * 1e3, "acquisition_p99": float(np.percentile(wall, 99)) * 1e3,
                        "driver_cpu_mean": float(np.mean(cpu)) * 1e3, "open_wire_check_mean": float(np.mean(ow_wall)) * 1e3,
                        "per_period": per_period_meas * 1e3},
        "period_ms": args.period_ms,
        "share_of_period_stated": per_period_stated * 1e3 / args.period_ms,
        "share_of_period_measured": per_period_meas * 1e3 / args.period_ms,
    }


def run(args: argparse.Namespace) -> int:
    rows = [measure(n, max(1, n * args.temps_per_4_cells // 4), args) for n in args.cells]
    if args.json:
        print(json.dumps({"afe": rows}, indent=2))
        return 0
    print(f"LTC6813-1 chain acquisition per control period ({args.period_ms:.0f} ms), isoSPI {args.spi_hz / 1e6:g} MHz, "
          f"open-wire check every {args.open_wire_every} acquisitions")
    print(f"{'cells':>6} {'ICs':>4} {'stated acq':>11} {'measured acq':>13} {'p99':>7} {'driver CPU':>11} "
          f"{'stated ADOW':>12} {'meas. ADOW':>11} {'stated/period':>14} {'meas./period':>13}")
    for r in rows:
        s, m = r["stated_ms"], r["measured_ms"]
        print(f"{r['cells']:>6} {r['ics']:>4} {s['acquisition']:>9.2f}ms {m['acquisition_mean']:>11.2f}ms "
              f"{m['acquisition_p99']:>5.1f}ms {m['driver_cpu_mean']:>9.2f}ms {s['open_wire_check']:>10.2f}ms "
              f"{m['open_wire_check_mean']:>9.2f}ms {r['share_of_period_stated']:>13.1%} {r['share_of_period_measured']:>12.1%}")
    print("stated = wire bytes at the SPI clock + datasheet conversion and wake-up times; measured = the driver "
          "against the byte-level emulator in another process over the emulated spidev socket")
    return 0
