//! `mbms-consensus-sim`: run seeded fault schedules through the deterministic simulator
//! and print schedules run, violations (with a replay command) and latency percentiles.
//!
//! Usage: mbms-consensus-sim [--seeds N] [--first-seed S] [--peers P] [--min-peers M]
//!                           [--duration-ms D] [--threads T] [--seed S --verbose] [--json]
//!                           [--adversary on|off] (default: the attacker in about half of the faulty schedules)

use mbms_sim::protocol::{percentile, run_many, run_schedule, SimParams};

fn usage() -> ! {
    eprintln!(
        "usage: mbms-consensus-sim [--seeds N] [--first-seed S] [--peers P] [--min-peers M] \
         [--duration-ms D] [--threads T] [--seed S [--verbose]] [--json] [--bus-load] [--adversary on|off]"
    );
    std::process::exit(2)
}

fn main() {
    let mut seeds: u64 = 1000;
    let mut first: u64 = 0;
    let mut peers: usize = 5;
    let mut min_peers: Option<usize> = None;
    let mut duration_ms: u64 = 6000;
    let mut threads: usize = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut one: Option<u64> = None;
    let mut verbose = false;
    let mut json = false;
    let mut bus_load = false;
    let mut adversary: Option<bool> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let num = |i: usize| -> u64 {
        args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
    };
    while i < args.len() {
        match args[i].as_str() {
            "--seeds" => { seeds = num(i); i += 1; }
            "--first-seed" => { first = num(i); i += 1; }
            "--peers" => { peers = num(i) as usize; i += 1; }
            "--min-peers" => { min_peers = Some(num(i) as usize); i += 1; }
            "--duration-ms" => { duration_ms = num(i); i += 1; }
            "--threads" => { threads = num(i) as usize; i += 1; }
            "--seed" => { one = Some(num(i)); i += 1; }
            "--verbose" => verbose = true,
            "--json" => json = true,
            "--bus-load" => bus_load = true,
            "--adversary" => {
                adversary = match args.get(i + 1).map(String::as_str) {
                    Some("on") => Some(true),
                    Some("off") => Some(false),
                    _ => usage(),
                };
                i += 1;
            }
            _ => usage(),
        }
        i += 1;
    }
    if !(1..=64).contains(&peers) {
        usage();
    }
    let params = SimParams {
        peers_min: min_peers.unwrap_or(3.min(peers)).min(peers),
        peers_max: peers,
        duration_ms,
        verbose,
        adversary,
        ..SimParams::default()
    };
    if bus_load {
        let r = mbms_sim::protocol::measure_bus_load(peers, duration_ms, first.max(1), 500_000.0, &params.base);
        println!("{r:#?}");
        return;
    }
    let replay = |seed: u64| {
        format!(
            "cargo run --release -p mbms-consensus --bin mbms-consensus-sim -- --seed {seed} --peers {} --min-peers {} --duration-ms {duration_ms} --verbose",
            params.peers_max, params.peers_min
        )
    };
    if let Some(seed) = one {
        let r = run_schedule(seed, &params);
        for line in &r.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: scenario {}, {} peers, {} closes, {} aborts, {} messages, agree {:?} periods, cold close {:?} periods",
            r.scenario, r.peers, r.closes, r.aborts, r.messages, r.agree_periods, r.cold_close_periods
        );
        for v in &r.violations {
            println!("VIOLATION {v}");
        }
        std::process::exit(if r.violations.is_empty() { 0 } else { 1 });
    }
    let t0 = std::time::Instant::now();
    let s = run_many(first, seeds, &params, threads);
    let wall = t0.elapsed().as_secs_f64();
    let p = |v: &Vec<f64>, q: f64| percentile(v, q);
    if json {
        println!(
            "{{\"schedules\": {}, \"violations\": {}, \"failing_seeds\": {:?}, \"agree_p50_periods\": {:.2}, \"agree_p99_periods\": {:.2}, \"detect_p50_periods\": {:.2}, \"detect_p99_periods\": {:.2}, \"cold_close_p50_periods\": {:.2}, \"cold_close_p99_periods\": {:.2}, \"grant_p99_periods\": {:.2}, \"wall_s\": {:.2}}}",
            s.schedules,
            s.violations,
            s.failing.iter().map(|f| f.0).collect::<Vec<_>>(),
            p(&s.agree_periods, 50.0),
            p(&s.agree_periods, 99.0),
            p(&s.detect_periods, 50.0),
            p(&s.detect_periods, 99.0),
            p(&s.cold_close_periods, 50.0),
            p(&s.cold_close_periods, 99.0),
            p(&s.grant_periods, 99.0),
            wall
        );
    } else {
        println!("schedules run:      {}  ({:.1} s wall, {} threads, {}..={} peers, {} ms each)", s.schedules, wall, threads, params.peers_min, params.peers_max, duration_ms);
        println!("violations:         {}", s.violations);
        println!("closes / aborts:    {} / {}", s.closes, s.aborts);
        println!("messages:           {} (mean {:.1} bytes)", s.messages, s.message_bytes as f64 / s.messages.max(1) as f64);
        println!(
            "attacker (S7):      {} schedules, {} deliveries, {} accepted (late genuine), dropped {:?}",
            s.adversarial, s.attack_deliveries, s.attack_accepted, s.attack_dropped
        );
        for (name, v) in [
            ("agree after heal", &s.agree_periods),
            ("agree after close", &s.agree_clean_periods),
            ("detect dead peer", &s.detect_periods),
            ("close all, cold", &s.cold_close_periods),
            ("request to grants", &s.grant_periods),
        ] {
            println!(
                "{name:<18}  p50 {:6.2}  p90 {:6.2}  p99 {:6.2}  max {:6.2} periods  (n={})",
                p(v, 50.0), p(v, 90.0), p(v, 99.0), p(v, 100.0), v.len()
            );
        }
    }
    for (seed, v) in &s.failing {
        eprintln!("FAILED seed {seed}: {}", v.first().cloned().unwrap_or_default());
        eprintln!("  replay: {}", replay(*seed));
    }
    std::process::exit(if s.violations == 0 { 0 } else { 1 });
}
