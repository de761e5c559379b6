//! Balancing stage: passive bleeding decided every `decision_period_s` (and held between
//! decisions, except that a cell that may no longer bleed stops at once), and the
//! active-balancing transfer plan.

use crate::balancing::{self, BalanceMode, BalancingConfig};
use crate::protection::Action;

use super::sensing::Sensing;
use super::EngineOutput;

#[derive(Debug, Clone)]
pub(super) struct Balancer {
    /// cells bleeding since the last decision, and when it was taken (NaN: none pending)
    pub on: Vec<u32>,
    pub decided_t: f64,
    scratch: Vec<(f64, u32)>,
}

impl Balancer {
    pub fn new() -> Self {
        Balancer { on: Vec::new(), decided_t: f64::NAN, scratch: Vec::new() }
    }

    /// This step's bleed switches into `o.balance` and the transfer plan into `o.transfers`
    /// (`o.soc` must be this step's).
    #[allow(clippy::too_many_arguments)]
    pub fn step(&mut self, bc: &BalancingConfig, t_s: f64, v_cell_v: &[f64], i: f64, i_valid: bool, action: Action, sensing: &Sensing, sensor_of: &[u32], cap_ah: &[f64], par: f64, o: &mut EngineOutput) {
        let n = v_cell_v.len();
        let allowed = action < Action::RampDown && i_valid && i.abs() <= bc.max_current_a;
        let x: &[f64] = match bc.mode {
            BalanceMode::Soc => &o.soc,
            _ => v_cell_v,
        };
        let t_used = &sensing.t_used;
        let t_valid = &sensing.t_valid;
        let temp_of = |k: usize| {
            let s = sensor_of[k] as usize;
            if t_valid[s] {
                t_used[s]
            } else {
                f64::INFINITY
            }
        };
        let active = bc.mode != BalanceMode::Off && allowed;
        let due = !(t_s - self.decided_t < bc.decision_period_s - crate::protection::TIME_EPS_S);
        if !active || due {
            balancing::decide(bc, x, v_cell_v, temp_of, &sensing.v_valid, allowed, &mut o.balance, &mut self.scratch);
            self.on.clear();
            if active {
                self.decided_t = t_s;
                let on = &o.balance;
                self.on.extend((0..n as u32).filter(|&k| on[k as usize]));
            } else {
                self.decided_t = f64::NAN;
            }
        } else {
            // between decisions: hold, but a cell that may no longer bleed (voltage invalid
            // or below min_cell_v, temperature at the inhibit limit) stops in this step
            let (on, valid) = (&mut o.balance, &sensing.v_valid);
            self.on.retain(|&k| {
                let k = k as usize;
                let keep = valid[k] && v_cell_v[k] >= bc.min_cell_v && temp_of(k) < bc.inhibit_temp_c;
                on[k] = keep;
                keep
            });
        }
        if bc.active_plan && allowed {
            let cap: Vec<f64> = cap_ah.iter().map(|c| c * par).collect();
            let thr = if bc.mode == BalanceMode::Soc { bc.threshold } else { 0.02 };
            let max_pairs = if bc.max_cells > 0 { bc.max_cells / 2 } else { n / 2 };
            balancing::transfer_plan(&o.soc, &cap, thr, max_pairs.max(1), &mut o.transfers);
        } else {
            o.transfers.clear();
        }
    }
}
