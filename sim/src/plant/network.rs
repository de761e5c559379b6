//! The DC bus node: C·dV/dt = A − G·V, where every closed string is a Thevenin source
//! (E_k, R_k) constant over the step (A = Σ E_k/R_k + converter injections − load current,
//! G = Σ 1/R_k + bleed conductance). Its exact solution over a step is an exponential towards
//! V∞ = A/G with τ = C/G. When main contactors are closed τ = R·C is microseconds against
//! steps of milliseconds, and the step-average of the solution is the algebraic sharing of
//! brief §4 (V = (Σ OCV_j/R_j − I)/G) plus the charge the capacitor gives up, so the same
//! formula covers precharge (τ = R_pre·C, tens of ms) and the stiff closed bus.
//!
//! Branch currents are (E_k − V(t))/R_k; the integrals below give their step averages
//! (charge conservation) and ∫I² (losses) in closed form.

/// The bus voltage trajectory over one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusStep {
    pub dt: f64,
    pub v0: f64,
    pub v1: f64,
    /// ∫V dt over the step
    pub int_v: f64,
    /// ∫V² dt over the step
    pub int_v2: f64,
    /// V∞ and the decaying part D·e^{−t/τ} (g > 0), or a linear ramp (g = 0)
    v_inf: f64,
    d: f64,
    m1: f64, // ∫e^{−t/τ} dt = τ(1 − e^{−dt/τ})
    m2: f64, // ∫e^{−2t/τ} dt = τ/2 (1 − e^{−2dt/τ})
    linear: bool,
}

/// Solve C dV/dt = a − g·V over `dt` from `v0` (g ≥ 0, c > 0).
pub fn solve_bus(v0: f64, c: f64, g: f64, a: f64, dt: f64) -> BusStep {
    if g * dt <= 1e-12 * c {
        // no conductance: the capacitor integrates the net current
        let v1 = v0 + a * dt / c;
        return BusStep {
            dt,
            v0,
            v1,
            int_v: 0.5 * (v0 + v1) * dt,
            int_v2: dt * (v0 * v0 + v0 * v1 + v1 * v1) / 3.0,
            v_inf: 0.0,
            d: 0.0,
            m1: 0.0,
            m2: 0.0,
            linear: true,
        };
    }
    let v_inf = a / g;
    let tau = c / g;
    let x = dt / tau;
    let d = v0 - v_inf;
    let m1 = -tau * (-x).exp_m1();
    let m2 = -0.5 * tau * (-2.0 * x).exp_m1();
    let v1 = v_inf + d * (-x).exp();
    BusStep {
        dt,
        v0,
        v1,
        int_v: v_inf * dt + d * m1,
        int_v2: v_inf * v_inf * dt + 2.0 * v_inf * d * m1 + d * d * m2,
        v_inf,
        d,
        m1,
        m2,
        linear: false,
    }
}

impl BusStep {
    /// Mean bus voltage over the step.
    pub fn v_avg(&self) -> f64 {
        self.int_v / self.dt
    }

    /// Step-average current of a branch with source `e` and resistance `r` into the bus.
    pub fn i_avg(&self, e: f64, r: f64) -> f64 {
        (e - self.v_avg()) / r
    }

    /// ∫I² dt of that branch (for its ohmic loss R·∫I²).
    pub fn int_i2(&self, e: f64, r: f64) -> f64 {
        let s = if self.linear {
            let (u0, u1) = (e - self.v0, e - self.v1);
            self.dt * (u0 * u0 + u0 * u1 + u1 * u1) / 3.0
        } else {
            let a = e - self.v_inf;
            a * a * self.dt - 2.0 * a * self.d * self.m1 + self.d * self.d * self.m2
        };
        s / (r * r)
    }

    /// Largest |current| of that branch within the step (V is monotone: at an end point).
    pub fn i_peak(&self, e: f64, r: f64) -> f64 {
        (e - self.v0).abs().max((e - self.v1).abs()) / r
    }
}

/// The bus voltage at which a constant-power load `p_w` is in equilibrium with sources
/// (a0 = Σ E/R + injections, g = Σ 1/R): the upper root of g·V² − a0·V + p = 0. `None` if the
/// sources cannot deliver `p_w` (beyond the maximum power point).
pub fn constant_power_voltage(a0: f64, g: f64, p_w: f64) -> Option<f64> {
    if g <= 0.0 {
        return None;
    }
    let disc = a0 * a0 - 4.0 * g * p_w;
    if disc < 0.0 {
        return None;
    }
    let v = (a0 + disc.sqrt()) / (2.0 * g);
    (v > 0.0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_matches_fine_euler() {
        let (c, g, a, v0, dt) = (2e-3, 1.0 / 20.0, 400.0 / 20.0, 0.0, 0.05);
        let s = solve_bus(v0, c, g, a, dt);
        let (mut v, mut iv, mut iv2, mut ii2) = (v0, 0.0, 0.0, 0.0);
        let n = 200_000;
        let h = dt / n as f64;
        for _ in 0..n {
            let vm = v + 0.5 * h * (a - g * v) / c; // midpoint
            iv += vm * h;
            iv2 += vm * vm * h;
            ii2 += ((400.0 - vm) / 20.0).powi(2) * h;
            v += h * (a - g * vm) / c;
        }
        assert!((s.v1 - v).abs() < 1e-6, "{} vs {v}", s.v1);
        assert!((s.int_v - iv).abs() / iv < 1e-8);
        assert!((s.int_v2 - iv2).abs() / iv2 < 1e-8);
        assert!((s.int_i2(400.0, 20.0) - ii2).abs() / ii2 < 1e-8);
    }

    #[test]
    fn charge_is_conserved() {
        let (c, v0, dt) = (1e-3, 390.0, 0.1);
        let branches = [(400.0, 0.05), (395.0, 0.08), (402.0, 0.06)];
        let i_load = 150.0;
        let g: f64 = branches.iter().map(|b| 1.0 / b.1).sum();
        let a: f64 = branches.iter().map(|b| b.0 / b.1).sum::<f64>() - i_load;
        let s = solve_bus(v0, c, g, a, dt);
        let sum_i: f64 = branches.iter().map(|b| s.i_avg(b.0, b.1)).sum();
        let i_cap = c * (s.v1 - s.v0) / dt;
        assert!((sum_i - i_load - i_cap).abs() < 1e-9, "{sum_i} {i_load} {i_cap}");
        // stiff: the end voltage is the algebraic §4 bus voltage
        assert!((s.v1 - a / g).abs() < 1e-9);
    }

    #[test]
    fn constant_power_root() {
        let v = constant_power_voltage(400.0 / 0.1, 1.0 / 0.1, 40_000.0).unwrap();
        assert!((v * (400.0 - v) / 0.1 - 40_000.0).abs() < 1e-6);
        assert!(v > 200.0);
        assert!(constant_power_voltage(4000.0, 10.0, 1e7).is_none());
    }
}
