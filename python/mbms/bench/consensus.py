"""``mbms bench consensus``: seeded fault schedules through the deterministic simulator of
the peer coordination (S1–S7 checked after every step; the attacker of S7 in about half of the
faulty schedules, or in all with ``--adversary on``), liveness latencies, and the CAN bus load
of the authenticated protocol measured on simulated traffic. Figures next to the brief's targets.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from mbms import _core

TARGETS = {
    "violations": "0",
    "agree_p99_periods": "<= 3",
    "detect_p99_periods": "<= 3",
    # brief §5: with authentication, stuffed bits counted (exact stuffing of the real frames)
    "bus_load_classic_500k_16peers_exact": "<= 0.12",
    "bus_load_classic_500k_16peers_exact_peak": "<= 0.15",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=2000, help="number of seeded schedules")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--peers", type=int, default=5, help="most peers per schedule")
    p.add_argument("--min-peers", type=int, default=3, help="fewest peers per schedule")
    p.add_argument("--duration-ms", type=int, default=6000, help="simulated time per schedule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bus-peers", type=int, default=16, help="peers for the bus-load figure")
    p.add_argument("--adversary", choices=("on", "off", "mixed"), default="mixed",
                   help="the S7 attacker: in every schedule, none, or about half of the faulty ones")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = _core.consensus_sim(
        args.seeds,
        first_seed=args.first_seed,
        peers_min=min(args.min_peers, args.peers),
        peers_max=args.peers,
        duration_ms=args.duration_ms,
        threads=args.threads,
        adversary={"on": True, "off": False}.get(args.adversary),
    )
    wall = time.perf_counter() - t0
    bus = _core.consensus_bus_load(peers=args.bus_peers, duration_ms=10000, seed=1, bitrate=500000.0)
    return {
        "schedules": s["schedules"],
        "violations": s["violations"],
        "failing": s["failing"],
        "agree_p50_periods": s["agree_p50_periods"],
        "agree_p99_periods": s["agree_p99_periods"],
        "agree_clean_p50_periods": s["agree_clean_p50_periods"],
        "agree_clean_p99_periods": s["agree_clean_p99_periods"],
        "detect_p50_periods": s["detect_p50_periods"],
        "detect_p99_periods": s["detect_p99_periods"],
        "detect_max_periods": s["detect_max_periods"],
        "cold_close_p50_periods": s["cold_close_p50_periods"],
        "cold_close_p99_periods": s["cold_close_p99_periods"],
        "grant_p50_periods": s["grant_p50_periods"],
        "grant_p99_periods": s["grant_p99_periods"],
        "closes": s["closes"],
        "aborts": s["aborts"],
        "mean_message_len": s["mean_message_len"],
        "sim_wall_s": wall,
        "schedules_per_s": s["schedules"] / wall if wall > 0 else float("nan"),
        "bus_load_classic_500k_16peers": bus["classic_worst_mean"],
        "bus_load_classic_500k_16peers_peak": bus["classic_worst_peak"],
        "bus_load_classic_500k_16peers_steady": bus["classic_worst_steady"],
        "bus_load_classic_500k_16peers_exact": bus["classic_exact_mean"],
        "bus_load_classic_500k_16peers_exact_peak": bus["classic_exact_peak"],
        "bus_load_classic_500k_16peers_24byte": bus["classic_24byte_mean"],
        "bus_load_classic_500k_16peers_24byte_peak": bus["classic_24byte_peak"],
        "bus_load_classic_500k_16peers_untagged": bus["classic_untagged_mean"],
        "bus_load_classic_500k_16peers_untagged_peak": bus["classic_untagged_peak"],
        "adversarial_schedules": s["adversarial_schedules"],
        "attack_deliveries": s["attack_deliveries"],
        "attack_accepted": s["attack_accepted"],
        "attack_dropped": s["attack_dropped"],
        "bus_load_fd_500k_2m_16peers": bus["fd_worst_mean"],
        "bus_max_message_len": bus["max_message_len"],
        "bus_peers": bus["peers"],
    }


def run(args: argparse.Namespace) -> int:
    r = measure(args)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"schedules             {r['schedules']}  ({r['sim_wall_s']:.1f} s, {r['schedules_per_s']:.0f}/s)")
        print(f"violations            {r['violations']:<10} target {TARGETS['violations']}")
        for seed, v in r["failing"][:5]:
            print(f"  seed {seed}: {v}")
        print(f"agree after heal      p50 {r['agree_p50_periods']:.2f}  p99 {r['agree_p99_periods']:.2f} periods   (includes restarted peers listening)")
        print(f"agree after a close   p50 {r['agree_clean_p50_periods']:.2f}  p99 {r['agree_clean_p99_periods']:.2f} periods   target {TARGETS['agree_p99_periods']} (healthy network)")
        print(f"detect dead peer      p50 {r['detect_p50_periods']:.2f}  p99 {r['detect_p99_periods']:.2f} periods   target {TARGETS['detect_p99_periods']}")
        print(f"close all from cold   p50 {r['cold_close_p50_periods']:.2f}  p99 {r['cold_close_p99_periods']:.2f} periods")
        print(f"request to grants     p50 {r['grant_p50_periods']:.2f}  p99 {r['grant_p99_periods']:.2f} periods   target <= 3 (close agreed)")
        print(f"attacker (S7)         {r['adversarial_schedules']} schedules, {r['attack_deliveries']} deliveries, "
              f"{r['attack_accepted']} accepted (late genuine), dropped {r['attack_dropped']}")
        print(
            f"CAN load with tags, {r['bus_peers']} peers @100 ms, classic 500k, stuffed bits counted:"
            f" mean {r['bus_load_classic_500k_16peers_exact']:.4f} target {TARGETS['bus_load_classic_500k_16peers_exact']},"
            f" busiest second {r['bus_load_classic_500k_16peers_exact_peak']:.4f} target"
            f" {TARGETS['bus_load_classic_500k_16peers_exact_peak']}"
        )
        print(
            f"  the same traffic in the previous 24-byte layout (frames 8+8+7 bytes): mean"
            f" {r['bus_load_classic_500k_16peers_24byte']:.4f}, busiest second"
            f" {r['bus_load_classic_500k_16peers_24byte_peak']:.4f}"
        )
        print(
            f"  the same traffic without tags (frames 8+8+2 bytes): mean"
            f" {r['bus_load_classic_500k_16peers_untagged']:.4f}, busiest second"
            f" {r['bus_load_classic_500k_16peers_untagged_peak']:.4f}"
        )
        print(
            f"  (every frame stuffed worst-case: mean {r['bus_load_classic_500k_16peers']:.4f}, steady"
            f" {r['bus_load_classic_500k_16peers_steady']:.4f}, busiest second {r['bus_load_classic_500k_16peers_peak']:.4f};"
            f" FD 500k/2M {r['bus_load_fd_500k_2m_16peers']:.4f})"
        )
    return 0 if r["violations"] == 0 else 1
