"""``mbms bench TARGET``: benchmarks that print figures measured side by side in one run.

Each target is a module ``mbms.bench.<target>`` with ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS: dict[str, str] = {
    "core": "pack engine: ns per cell-step, Rust against batched numpy",
    "plant": "plant simulator: real-time factor",
    "consensus": "peer coordination: seeded fault schedules, latencies, CAN bus load",
    "sim": "whole-system fast simulation: real-time factor",
    "soc": "SOC accuracy vs the DFN reference traces: RMSE and max error beside the targets",
    "sharing": "current sharing: max string over-current of the default story, bare formula vs with uncertainty",
    "campaign": "campaign engine: jobs per second in process, on 1 and on N Dask workers (scale-out efficiency)",
    "s3": "joins under random load steps and plant freezes: S3 on the plant's truth at each main close",
    "mqtt": "control period and memory of a node with its MQTT gateway: no broker, live, mute, killed",
    "afe": "LTC6813 chain acquisition per control period for 96 and 400 cells: stated against measured",
    "flood": "close latencies of real nodes under a flood of forged peer frames, beside the same run unflooded",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, help_text in TARGETS.items():
        tp = targets.add_parser(name, help=help_text)
        tp.add_argument("--json", action="store_true", help="print one JSON object")
        tp.set_defaults(func=_runner(name), bench_parser=tp)
        # Arguments of the target are added lazily by its module (see _runner).
        tp.set_defaults(_bench_module=f"mbms.bench.{name}")
        try:
            module = importlib.import_module(f"mbms.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mbms.bench.{name}":
                raise
            continue
        module.add_arguments(tp)


def _runner(name: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(f"mbms.bench.{name}")
        return int(module.run(args) or 0)

    return run
