"""A batched numpy implementation of the pack engine's step: the same math as
``rust_core/src/engine.rs`` (EKF SOC, coulomb count, R0 from current steps, sensor
plausibility, three-level protection with debounce and latching, SOF limits with derating
and rate limits, passive balancing), written as whole-array operations over the cells.

It exists to check the Rust core (``tests/test_engine_reference.py``: same inputs, same
outputs) and as the baseline of ``mbms bench core``. The cell model's second RC pair and
one-state hysteresis are carried as in the Rust step (open-loop states entering the
measurement, the OCV and the limits). Not covered (raise NotImplementedError when they would
act): the rest-point OCV correction and AWTLS capacity update (event-driven, not per step),
the active-balancing plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mbms.engine import PACK_INDEX, RULES, Action, Engine, Level, PackConfig, Thresholds
from mbms.types import Fault

TIME_EPS_S = 1e-9
IEKF_GATE_DZ = 0.02  # engine.rs: iterated update where the SOC step would exceed this
IEKF_ITERS = 3
VOLTAGE_GATE_SIGMA = 3.0  # soc_ekf.rs: Huber gate of the voltage update (σ)


def _chord_factor(phi: float, s: float, i0_c: npt.NDArray[np.float64], ia_c: float, ib_c: float) -> npt.NDArray[np.float64]:
    """soh.rs r0_chord_factor: a step ia -> ib's resistance over the R0 table (Butler-Volmer chord);
    phi, s: the cell file's r0_step_ct_fraction and r0_step_pulse_ratio."""
    if phi <= 0.0:
        return np.full_like(i0_c, s)
    w = 0.5 / i0_c
    if abs(ib_c - ia_c) > 1e-9:
        chord = (np.arcsinh(ib_c * w) - np.arcsinh(ia_c * w)) / (ib_c - ia_c)
    else:
        chord = w / np.sqrt(1.0 + (ia_c * w) ** 2)
    return np.asarray(s * ((1.0 - phi) + phi * chord / np.arcsinh(w)), dtype=np.float64)


class _Rule:
    """Vectorised debounce state of one rule over its indices (see protection.rs)."""

    def __init__(self, name: str, th: tuple[float, float, float], hyst: float,
                 delay: tuple[float, float, float], upper: bool, n: int) -> None:
        sign = 1.0 if upper else -1.0
        self.name = name
        self.sign = sign
        self.th = np.array([sign * x for x in th])[:, None]
        self.clear = self.th - hyst
        self.delay = np.array(delay)[:, None]
        self.since = np.full((3, n), np.nan)
        self.active = np.zeros((3, n), dtype=bool)
        self.present = np.zeros((3, n), dtype=bool)

    @classmethod
    def fault_only(cls, name: str, delay: float, n: int) -> _Rule:
        r = cls(name, (np.inf, np.inf, 0.5), 0.0, (0.0, 0.0, delay), True, n)
        r.clear = np.array([np.inf, np.inf, 0.5])[:, None]
        return r

    def eval(self, t: float, x_raw: npt.ArrayLike) -> None:
        """Same per-level state machine as ``protection::evaluate``; NaN holds the state."""
        x = self.sign * np.asarray(x_raw, dtype=float)[None, :]
        known = ~np.isnan(x)
        act = self.active
        with np.errstate(invalid="ignore"):
            present = np.where(act, ~(x < self.clear), x > self.th)
        clear_now = act & ~present
        clear_now[2] = False  # faults latch
        active = act & ~clear_now
        since = np.where(clear_now, np.nan, self.since)
        pending = ~act & present
        since = np.where(pending & np.isnan(since), t, since)
        confirm = pending & (t - since >= self.delay - TIME_EPS_S)
        active = active | confirm
        since = np.where(~act & ~present, np.nan, since)
        self.present = np.where(known, present, self.present)
        self.active = np.where(known, active, act)
        self.since = np.where(known, since, self.since)

    def reset(self) -> None:
        clear = self.active[2] & ~self.present[2]
        self.active[2] &= ~clear
        self.since[2][clear] = np.nan

    def collect(self, pack_level: bool) -> list[Fault]:
        out = []
        lvl = np.where(self.active[2], 2, np.where(self.active[1], 1, np.where(self.active[0], 0, -1)))
        for k in np.flatnonzero(lvl >= 0):
            out.append(Fault(self.name, Level(int(lvl[k])).name.lower(), PACK_INDEX if pack_level else int(k)))
        return out


@dataclass
class NumpyResult:
    action: Action
    faults: tuple[Fault, ...]
    soc: np.ndarray
    soc_sigma: np.ndarray
    soc_cc: np.ndarray
    soc_min: float
    soc_max: float
    soc_mean: float
    soe_wh: float
    ocv_string_v: float
    r_string_ohm: float
    dcl_a: float
    ccl_a: float
    dcl_peak_a: float
    ccl_peak_a: float
    balance: np.ndarray
    soh_resistance: float


class NumpyEngine:
    """Batched numpy engine with the Rust engine's step semantics."""

    def __init__(self, config: PackConfig) -> None:
        tabs = Engine(config)._core.tables()  # the very tables the Rust engine evaluates
        if config.balancing.active_plan:
            raise NotImplementedError("the numpy reference has no active-balancing plan")
        self.cfg = config
        self.tab = tabs
        n = config.pack.series
        nt = config.pack.temp_sensors
        self.n, self.nt = n, nt
        self.par = float(config.pack.parallel)
        self.scale = float(len(tabs["ocv"]) - 1)
        self.last = len(tabs["ocv"]) - 1
        self.sensor_of = (np.arange(n) * nt) // n
        # engine.rs Engine::new: the cells start on the pack file's capacity ratio
        cap = tabs["capacity_ah"] * config.estimator.capacity_prior_ratio
        self.z = np.full(n, 0.5)
        self.v1 = np.zeros(n)
        self.v2 = np.zeros(n)
        self.h = np.zeros(n)
        r2, tau2 = tabs["r2"], tabs["tau2_s"]
        # the second RC pair's tables: present exactly when the cell has one (has_rc2)
        self.rc2 = (r2, tau2) if tabs["has_rc2"] and r2 is not None and tau2 is not None else None
        self.has_rc2 = self.rc2 is not None
        self.hyst = tabs["hysteresis_m_v"] > 0.0
        self.p00 = np.full(n, 0.25)
        self.p01 = np.zeros(n)
        self.p11 = np.full(n, 1e-6)
        # soc_ekf.rs carried_miss_variance: the raised part of the last update's variance (V²)
        self.miss = np.zeros(n)
        # cells.rs: the consider sensitivity (dz/dδ, dv1/dδ) to the RC polarisation's relative
        # error δ (cell_model.rs CellEstimator::rc_polarisation_rel_error)
        self.sens_z = np.zeros(n)
        self.sens_v = np.zeros(n)
        # ... and (dz/dε, dv1/dε, dv2/dε) to the RC time constants' relative error ε
        # (CellEstimator::rc_time_constant_rel_error)
        self.sens_tz = np.zeros(n)
        self.sens_tv = np.zeros(n)
        self.sens_t2 = np.zeros(n)
        self.zcc = np.full(n, 0.5)
        self.inv_qc = np.full(n, 1.0 / (3600.0 * cap))
        self.cap_ah = np.full(n, cap)
        self.r0_ratio = np.ones(n)
        self.r0_n = np.zeros(n)  # R0 observations per cell (soh.rs r0_running_gain)
        # the SOH ratio (rest.rs r0_soh_ratio): the same mean over steps at or above the cell
        # file's r0_soh_min_temp_c
        self.r0_soh_ratio = np.ones(n)
        self.r0_soh_n = np.zeros(n)
        self.v_prev = np.full(n, np.nan)
        self.v_stuck = np.zeros(n, dtype=np.int64)
        self.v_valid = np.zeros(n, dtype=bool)
        self.t_prev = np.full(nt, np.nan)
        self.t_stuck = np.zeros(nt, dtype=np.int64)
        self.t_used = np.full(nt, tabs["t_ref_c"])
        self.t_model = np.full(nt, np.nan)  # model temperature with a deadband (engine.rs)
        self.initialized = False
        self.iterated_updates = 0  # cell-updates that took the IEKF branch (for tests)
        self.persisting_failures = 0  # cell-updates with a persisting model failure (for tests)
        self.t_last: float | None = None
        self.i_prev = 0.0
        self.i_offset_a = 0.0  # rest.rs RestSoh::zero_current
        # rest.rs RestSoh::integrate: charge of a unit cell counted since the last anchor (this
        # reference takes no anchors: since the start)
        self.q_since_ah = 0.0
        self.i_prev_valid = False
        self.rest_since = np.nan
        self.load_c = 0.0
        self.rest_done = False
        self.lim = np.zeros(4)  # dcl, ccl, dcl_peak, ccl_peak
        self.balance = np.zeros(n, dtype=bool)
        self.bal_decided_t = np.nan
        p = config.protection

        def rule(name: str, t: Thresholds, upper: bool, size: int) -> _Rule:
            return _Rule(name, (t.warning, t.alarm, t.fault), t.hysteresis,
                         (t.warning_delay_s, t.alarm_delay_s, t.fault_delay_s), upper, size)

        d = p.sensors.fault_delay_s
        self.rules = [
            rule("cell_overvoltage", p.cell_overvoltage_v, True, n),
            rule("cell_undervoltage", p.cell_undervoltage_v, False, n),
            rule("overtemp_charge", p.overtemp_charge_c, True, nt),
            rule("undertemp_charge", p.undertemp_charge_c, False, nt),
            rule("overtemp_discharge", p.overtemp_discharge_c, True, nt),
            rule("undertemp_discharge", p.undertemp_discharge_c, False, nt),
            rule("overcurrent_charge", p.overcurrent_charge_a, True, 1),
            rule("overcurrent_discharge", p.overcurrent_discharge_a, True, 1),
            rule("voltage_spread", p.voltage_spread_v, True, 1),
            rule("temp_spread", p.temp_spread_c, True, 1),
            _Rule.fault_only("voltage_sensor", d, n),
            _Rule.fault_only("temp_sensor", d, nt),
            _Rule.fault_only("current_sensor", d, 1),
        ]
        assert tuple(r.name for r in self.rules) == RULES
        self.R = {r.name: r for r in self.rules}

    # -- tables ------------------------------------------------------------------------------

    def _locate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.clip(z, 0.0, 1.0) * self.scale
        k = np.minimum(x.astype(np.int64), self.last - 1)
        return k, x - k

    @staticmethod
    def _lerp(y: np.ndarray, k: np.ndarray, f: np.ndarray) -> np.ndarray:
        y0: np.ndarray = y[k]
        y1: np.ndarray = y[k + 1]
        out: np.ndarray = y0 + f * (y1 - y0)
        return out

    def _rows(self, rows: np.ndarray, k: np.ndarray, f: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              tf: np.ndarray) -> np.ndarray:
        a = self._lerp_rows(rows, lo, k, f)
        b = self._lerp_rows(rows, hi, k, f)
        out: np.ndarray = a + tf * (b - a)
        return out

    @staticmethod
    def _lerp_rows(rows: np.ndarray, r: np.ndarray, k: np.ndarray, f: np.ndarray) -> np.ndarray:
        y0: np.ndarray = rows[r, k]
        y1: np.ndarray = rows[r, k + 1]
        out: np.ndarray = y0 + f * (y1 - y0)
        return out

    def _temp_sel(self, temp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.tab["temps"]
        n = len(t)
        lo = np.zeros(len(temp), dtype=np.int64)
        hi = np.zeros(len(temp), dtype=np.int64)
        f = np.zeros(len(temp))
        if n == 1:
            return lo, hi, f
        top = temp >= t[-1]
        mid = (temp > t[0]) & ~top
        j = np.searchsorted(t, temp[mid], side="left")
        k = j - 1
        lo[mid], hi[mid] = k, k + 1
        f[mid] = (temp[mid] - t[k]) / (t[k + 1] - t[k])
        lo[top] = hi[top] = n - 1
        return lo, hi, f

    def _soc_from_ocv(self, v: np.ndarray, dtemp: np.ndarray) -> np.ndarray:
        ocv, dd = self.tab["ocv"], self.tab["docv_dt"]

        def at(k: np.ndarray) -> np.ndarray:
            o: np.ndarray = ocv[k] + dd[k] * dtemp
            return o

        lo = np.zeros(len(v), dtype=np.int64)
        hi = np.full(len(v), self.last)
        while np.any(hi - lo > 1):
            act = hi - lo > 1
            mid = (lo + hi) // 2
            below = at(mid) < v
            lo = np.where(act & below, mid, lo)
            hi = np.where(act & ~below, mid, hi)
        a, b = at(lo), at(hi)
        f = np.where(b > a, (v - a) / np.where(b > a, b - a, 1.0), 0.5)
        z = (lo + f) / self.scale
        z = np.where(v >= at(np.full(len(v), self.last)), 1.0, z)
        return np.where(~(v > at(np.zeros(len(v), dtype=np.int64))), 0.0, z)

    # -- step ----------------------------------------------------------------------------------

    def step(self, t_s: float, v: np.ndarray, temps: np.ndarray, i_a: float) -> NumpyResult:
        cfg, tab = self.cfg, self.tab
        est, sens, lc = cfg.estimator, cfg.protection.sensors, cfg.limits
        dt = 0.0 if self.t_last is None else t_s - self.t_last
        self.t_last = t_s
        R = self.R
        i_valid = bool(np.isfinite(i_a) and abs(i_a) <= sens.current_max_abs_a)
        i = i_a if i_valid else 0.0
        charging = i < -est.rest_current_a
        R["current_sensor"].eval(t_s, [0.0 if i_valid else 1.0])
        i_prot = i if i_valid else np.nan
        R["overcurrent_discharge"].eval(t_s, [i_prot])
        R["overcurrent_charge"].eval(t_s, [-i_prot])

        # temperature sensors
        same = temps == self.t_prev
        self.t_stuck = np.where(same, self.t_stuck + 1, 0)
        self.t_prev = temps.copy()
        stuck = (sens.stuck_samples > 0) & (self.t_stuck >= sens.stuck_samples)
        t_valid = np.isfinite(temps) & (temps >= sens.temp_min_c) & (temps <= sens.temp_max_c) & ~stuck
        R["temp_sensor"].eval(t_s, np.where(t_valid, 0.0, 1.0))
        tx = np.where(t_valid, temps, np.nan)
        ninf, pinf = np.full(self.nt, -np.inf), np.full(self.nt, np.inf)
        R["overtemp_charge"].eval(t_s, tx if charging else ninf)
        R["undertemp_charge"].eval(t_s, tx if charging else pinf)
        R["overtemp_discharge"].eval(t_s, ninf if charging else tx)
        R["undertemp_discharge"].eval(t_s, pinf if charging else tx)
        self.t_used = np.where(t_valid, temps, self.t_used)
        if t_valid.any():
            tv = temps[t_valid]
            tmin, tmax = tv.min(), tv.max()
            fd = min(1.0, np.interp(tv, lc.discharge_temp_derating.x, lc.discharge_temp_derating.factor).min())
            fc = min(1.0, np.interp(tv, lc.charge_temp_derating.x, lc.charge_temp_derating.factor).min())
            t_spread = tmax - tmin
        else:
            fd = fc = 0.0
            t_spread = np.nan
        with np.errstate(invalid="ignore"):
            move = ~(np.abs(self.t_used - self.t_model) <= tab["model_temp_deadband_c"])
        self.t_model = np.where(move, self.t_used, self.t_model)
        tu = self.t_model
        tau1 = np.interp(tu, tab["tau_temps"], tab["tau1_s"])
        a1_s = np.exp(-dt / tau1)
        da1_s = a1_s * dt / tau1  # ∂a1/∂ε (sensing.rs SensorStep::da1)
        dcont_s = np.exp(-lc.continuous_horizon_s / tau1)
        dpeak_s = np.exp(-lc.peak_horizon_s / tau1)
        if self.rc2 is not None:
            tau2 = np.interp(tu, tab["tau_temps"], self.rc2[1])
            a2_s = np.exp(-dt / tau2)
            da2_s = a2_s * dt / tau2
        dtemp_s = tu - tab["t_ref_c"]
        # soh.rs ChordCoeffs::at: the step-resistance model's exchange current (Arrhenius)
        i0_s = tab["r0_step_i0_c"] * np.exp(
            -tab["r0_step_i0_ea_kj_per_mol"] * 1e3 / tab["gas_constant_j_per_mol_k"] * (1.0 / (tu + 273.15) - 1.0 / (tab["t_ref_c"] + 273.15)))
        lo_s, hi_s, tf_s = self._temp_sel(tu)
        R["temp_spread"].eval(t_s, [t_spread])

        so = self.sensor_of
        start_up = not self.initialized  # predict only on the start-up step (engine.rs)
        if not self.initialized:
            ok = (v >= sens.cell_v_min_v) & (v <= sens.cell_v_max_v) & (v > sens.open_wire_v)
            z0 = self._soc_from_ocv(np.where(ok, v, 3.0), dtemp_s[so])
            self.z = np.where(ok, z0, 0.5)
            self.zcc = self.z.copy()
            self.v1[:] = 0.0
            self.v2[:] = 0.0
            self.h[:] = 0.0
            # start sigma: the larger of the configured one and the voltage uncertainty over
            # the OCV slope at the start SOC, capped at 0.3 (engine.rs, Engine::initialize)
            k0, f0 = self._locate(self.z)
            slope0 = (tab["ocv"][k0 + 1] - tab["ocv"][k0]) * self.scale
            sig_y: float | np.ndarray = math.sqrt(est.voltage_noise_v**2 + est.model_error_v**2)
            if abs(i) / self.par > est.rest_current_a / self.par:
                # a first sample under load: σ_y gains the polarisation (R0 + R1 + R2)·|i| the
                # reading cannot see (engine/cells.rs, Cells::initialize)
                lo0, hi0, tf0 = lo_s[so], hi_s[so], tf_s[so]
                r_sum = self._rows(tab["r0"], k0, f0, lo0, hi0, tf0) + self._rows(tab["r1"], k0, f0, lo0, hi0, tf0)
                if self.rc2 is not None:
                    r_sum = r_sum + self._rows(self.rc2[0], k0, f0, lo0, hi0, tf0)
                sig_y = np.hypot(sig_y, r_sum * (i / self.par))
            with np.errstate(divide="ignore"):
                from_ocv = np.where(slope0 > 0.0, sig_y / np.where(slope0 > 0.0, slope0, 1.0), np.inf)
            sig0 = np.minimum(np.maximum(est.initial_soc_sigma, from_ocv), 0.3)
            self.p00 = np.where(ok, sig0 * sig0, 0.25)
            self.p01[:] = 0.0
            self.p11[:] = 1e-6
            self.miss[:] = 0.0
            self.sens_z[:] = 0.0
            self.sens_v[:] = 0.0
            self.sens_tz[:] = 0.0
            self.sens_tv[:] = 0.0
            self.sens_t2[:] = 0.0
            self.initialized = True

        # rest / R0 step / throughput
        at_rest = abs(i) < est.rest_current_a
        if at_rest:
            if np.isnan(self.rest_since):
                self.rest_since = t_s - dt  # a sample stands for the period before it (rest.rs)
            if not self.rest_done and t_s - self.rest_since >= est.rest_time_s:
                raise NotImplementedError("rest-point correction is not in the numpy reference")
        else:
            # rest.rs RestEvent::EndPoint: a rest of rest_end_min_s ending before rest_time_s
            if not self.rest_done and est.rest_end_min_s > 0.0 and t_s - dt - self.rest_since >= est.rest_end_min_s:
                raise NotImplementedError("rest-point correction is not in the numpy reference")
            self.rest_since = np.nan
            self.rest_done = False
        di = i - self.i_prev
        # rest.rs RestSoh::r0_step_min_a: the cell file's C-rate of the parallel group
        step_min_a = tab["r0_step_min_c"] * tab["capacity_ah"] * self.par
        r0_step = step_min_a > 0.0 and i_valid and self.i_prev_valid and abs(di) >= step_min_a and 0.0 < dt <= 1.0
        self.i_prev, self.i_prev_valid = i, i_valid
        # rest.rs RestSoh::zero_current: the sensor's offset learnt after a minute of rest
        i_est = i
        if i_valid:
            off_tau = est.current_offset_tau_s
            if off_tau > 0.0 and dt > 0.0 and not np.isnan(self.rest_since) and t_s - self.rest_since >= tab["offset_settle_s"]:
                off_lim = 3.0 * est.current_offset_a
                off_g = min(dt / off_tau, 1.0)
                self.i_offset_a = min(max(self.i_offset_a + off_g * (i - self.i_offset_a), -off_lim), off_lim)
            i_est = i - self.i_offset_a
        i_cell = i_est / self.par
        eta = tab["coulombic_efficiency"] if i_est < 0.0 else 1.0
        eta_i = eta * i_cell
        self.q_since_ah += eta_i * dt / 3600.0
        var_i = (est.current_noise_a / self.par) ** 2
        q_z_dt = est.soc_process_noise * dt
        q_v1_dt = est.v1_process_noise * dt
        # soc_ekf::measurement_variance and offset_noise (the cell file's model error, counted
        # once per correlation time; the current offset as a random walk of the SOC)
        # soc_ekf::load_c_rate: the recent load: the present C-rate in discharge, the charge's
        # peak while charging, an e^(-dt/relax) release in the rest band
        c_signed = i_cell / tab["capacity_ah"]
        c_rest = est.rest_current_a / self.par / tab["capacity_ah"]
        relax = tab["model_error_relax_s"]
        if c_signed <= -c_rest:
            self.load_c = max(abs(c_signed), self.load_c)
        elif c_signed >= c_rest:
            self.load_c = abs(c_signed)
        else:
            self.load_c = max(abs(c_signed), self.load_c * math.exp(-dt / relax) if relax > 0.0 and dt >= 0.0 else 0.0)
        sc = tab["model_error_v_per_c"] * self.load_c
        corr = max(tab["model_error_corr_s"] / dt, 1.0) if dt > 0.0 else 1.0
        r_meas = est.voltage_noise_v**2 + est.model_error_v**2 + tab["model_error_v"] ** 2 + sc * sc * corr
        var_off = (est.current_offset_a / self.par) ** 2 * tab["offset_horizon_s"] / dt if dt > 0.0 else 0.0
        p = tab
        vmin = p["v_min_v"] + lc.voltage_margin_v
        vmax = p["v_max_v"] - lc.voltage_margin_v

        # cells: plausibility and protection
        cnt = np.where(v == self.v_prev, self.v_stuck + 1, 0)
        self.v_stuck = cnt
        stuck = (sens.stuck_samples > 0) & (cnt >= sens.stuck_samples)
        valid = (v >= sens.cell_v_min_v) & (v <= sens.cell_v_max_v) & (v > sens.open_wire_v) & ~stuck
        prev_valid = self.v_valid
        v_prev = self.v_prev
        self.v_prev = v.copy()
        self.v_valid = valid
        R["voltage_sensor"].eval(t_s, np.where(valid, 0.0, 1.0))
        vp = np.where(valid, v, np.nan)
        R["cell_overvoltage"].eval(t_s, vp)
        R["cell_undervoltage"].eval(t_s, vp)

        # EKF
        a1 = a1_s[so]
        da1 = da1_s[so]
        v1_prev = self.v1
        lo, hi, tf = lo_s[so], hi_s[so], tf_s[so]
        inv_qc = self.inv_qc
        z_pred = self.z - (eta_i * dt) * inv_qc
        k, f = self._locate(z_pred)
        # the learnt ratio scales the RC resistances only upwards, by the cell's share (engine/cells.rs)
        rc_scale = 1.0 + tab["r0_ratio_rc_share"] * (np.maximum(self.r0_ratio, 1.0) - 1.0)
        r1 = self._rows(tab["r1"], k, f, lo, hi, tf) * rc_scale
        g = dt * inv_qc
        b1 = r1 * (1.0 - a1)
        z = self.z - eta_i * g
        v1 = a1 * self.v1 + b1 * i_cell
        p00 = self.p00 + q_z_dt + (var_i + var_off) * g * g
        p01 = a1 * self.p01 - var_i * g * b1
        p11 = a1 * a1 * self.p11 + q_v1_dt + var_i * b1 * b1
        r0_nom = self._rows(tab["r0"], k, f, lo, hi, tf)
        c_a = tab["capacity_ah"] * self.par  # the string current of 1 C
        phi, ratio = tab["r0_step_ct_fraction"], tab["r0_step_pulse_ratio"]
        if r0_step:
            # the step's own resistance factor (soh.rs r0_step_factor), raw currents as rest.rs
            r0_sn = r0_nom * _chord_factor(phi, ratio, i0_s[so], (i - di) / c_a, i / c_a)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = -(v - v_prev) / (di / self.par)
            ok = valid & prev_valid & np.isfinite(r) & (r > 0.2 * r0_sn) & (r < 5.0 * r0_sn)
            # soh.rs r0_running_gain: the table counts as r0_prior_weight observations
            gain = np.maximum(est.r0_gain, 1.0 / (tab["r0_prior_weight"] + self.r0_n + 1.0))
            self.r0_ratio = np.where(ok, self.r0_ratio + gain * (r / r0_sn - self.r0_ratio), self.r0_ratio)
            self.r0_n = np.where(ok, np.minimum(self.r0_n + 1.0, tab["r0_count_cap"]), self.r0_n)
            ok_soh = ok & (tu[so] >= tab["r0_soh_min_temp_c"])
            gain_soh = np.maximum(est.r0_gain, 1.0 / (tab["r0_prior_weight"] + self.r0_soh_n + 1.0))
            self.r0_soh_ratio = np.where(ok_soh, self.r0_soh_ratio + gain_soh * (r / r0_sn - self.r0_soh_ratio), self.r0_soh_ratio)
            self.r0_soh_n = np.where(ok_soh, np.minimum(self.r0_soh_n + 1.0, tab["r0_count_cap"]), self.r0_soh_n)
        r0 = r0_nom * self.r0_ratio
        # the model's drop R0(i)·i: the chord from rest to this load (sensing.rs r0_load_factors)
        g_load = _chord_factor(phi, ratio, i0_s[so], 0.0, i_cell / tab["capacity_ah"])
        u0 = r0 * g_load * i_cell
        # second RC pair (open loop, exact ZOH like v1) and one-state hysteresis
        if self.rc2 is not None:
            a2 = a2_s[so]
            r2 = self._rows(self.rc2[0], k, f, lo, hi, tf) * rc_scale
            self.sens_t2 = a2 * self.sens_t2 + da2_s[so] * (self.v2 - r2 * i_cell)
            self.v2 = a2 * self.v2 + r2 * (1.0 - a2) * i_cell
        if self.hyst:
            ah = math.exp(-abs(tab["hysteresis_gamma"] * eta * i_cell * dt / (3600.0 * tab["capacity_ah"])))
            hm = tab["hysteresis_m_v"] * math.copysign(1.0, i_est)  # Rust f64::signum: +1 at 0
            self.h = ah * self.h - (1.0 - ah) * hm
        v2c, hc = self.v2, self.h
        ocv_tab = tab["ocv"]
        slope = (ocv_tab[k + 1] - ocv_tab[k]) * self.scale
        ocv_pred = self._lerp(ocv_tab, k, f) + self._lerp(tab["docv_dt"], k, f) * dtemp_s[so] + hc
        # IEKF relinearisation where the innovation is beyond the gate (engine.rs, pass 2 (a))
        v1_pred = a1 * self.v1 + r1 * (1.0 - a1) * i_cell
        innov0 = v - (ocv_pred - u0 - v1_pred - v2c)
        with np.errstate(invalid="ignore"):
            pz = self.p00
            gate = valid & (not start_up) & (np.abs(slope * pz * innov0) > IEKF_GATE_DZ * (slope * slope * pz + r_meas))
        if gate.any():
            g_ = np.flatnonzero(gate)
            self.iterated_updates += len(g_)
            zp = z[g_]
            q00, q01, q11 = p00[g_], p01[g_], p11[g_]
            y = v[g_] + u0[g_] + v1[g_] + v2c[g_]
            dts = dtemp_s[so][g_]

            def ocv_at(zz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                kk, ff = self._locate(zz)
                return ((ocv_tab[kk + 1] - ocv_tab[kk]) * self.scale,
                        self._lerp(ocv_tab, kk, ff) + self._lerp(tab["docv_dt"], kk, ff) * dts + hc[g_])

            zi = zp.copy()
            h_i, o_i = ocv_at(zi)
            for _ in range(IEKF_ITERS):
                q0 = q00 * h_i - q01
                q1 = q01 * h_i - q11
                s_i = h_i * q0 - q1 + r_meas
                zi = np.clip(zp + q0 / s_i * (y - (o_i + h_i * (zp - zi))), 0.0, 1.0)
                h_i, o_i = ocv_at(zi)
            slope = slope.copy()
            ocv_pred = ocv_pred.copy()
            slope[g_] = h_i
            ocv_pred[g_] = o_i + h_i * (zp - zi)
        # Joseph-form update where the voltage is trusted (not on the start-up step)
        upd = valid & (not start_up)
        hz = slope
        innov = np.where(valid, v, 0.0) - (ocv_pred - u0 - v1 - v2c)
        ph0 = p00 * hz - p01
        ph1 = p01 * hz - p11
        # Huber: beyond 3σ of its spread an innovation is taken as on the gate (soc_ekf.rs)
        hph = hz * ph0 - ph1
        g2 = VOLTAGE_GATE_SIGMA * VOLTAGE_GATE_SIGMA
        r_rob = np.where(innov * innov > g2 * (hph + r_meas), innov * innov / g2 - hph, r_meas)
        # a model failure is carried to the next sample, decaying as the RC1 voltage does, and
        # while it persists (beyond the gate again) counted once per τ1 (soc_ekf.rs
        # failure_voltage_r)
        carried = self.miss * a1 * a1
        persists = (r_rob > r_meas) & (carried > 0.0)
        count = np.where(persists, 1.0 / np.maximum(1.0 - a1, 1e-12), 1.0)
        r_v = np.maximum(r_rob, r_meas + carried * count)
        self.persisting_failures += int(np.sum(persists & valid & (not start_up)))
        s = hph + r_v
        inv_s = 1.0 / s
        k0 = ph0 * inv_s
        k1 = ph1 * inv_s
        m00 = 1.0 - k0 * hz
        m01 = k0
        m10 = -k1 * hz
        m11 = 1.0 + k1
        t00 = m00 * p00 + m01 * p01
        t01 = m00 * p01 + m01 * p11
        t10 = m10 * p00 + m11 * p01
        t11 = m10 * p01 + m11 * p11
        u00 = t00 * m00 + t01 * m01 + r_v * k0 * k0
        u01 = t00 * m10 + t01 * m11 + r_v * k0 * k1
        u11 = t10 * m10 + t11 * m11 + r_v * k1 * k1
        zu = np.clip(z + k0 * innov, -0.1, 1.1)
        self.z = np.where(upd, zu, z)
        self.v1 = np.where(upd, v1 + k1 * innov, v1)
        self.p00 = np.where(upd, u00, p00)
        self.p01 = np.where(upd, u01, p01)
        self.p11 = np.where(upd, u11, p11)
        self.miss = np.where(upd, np.maximum(r_rob - r_meas, carried), carried)
        # the consider sensitivity: predicted with the RC1 input, updated with (I - KH) and
        # the open-loop v2's share of the innovation (cells.rs block_math_impl)
        def consider_update(s_z: np.ndarray, s_v: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # soc_ekf.rs consider_update: S <- (I - KH) S + K u where the update was taken
            return np.where(upd, m00 * s_z + m01 * s_v + k0 * u, s_z), np.where(upd, m10 * s_z + m11 * s_v + k1 * u, s_v)

        self.sens_z, self.sens_v = consider_update(self.sens_z, a1 * self.sens_v + r1 * (1.0 - a1) * i_cell, v2c)
        # the time constants': a1 moves by ∂a1/∂ε = a1·Δt/τ1, so ∂v1/∂ε gains that times
        # (v1 − R1·i) of the previous step; the update as above with ∂v2/∂ε
        self.sens_tz, self.sens_tv = consider_update(self.sens_tz, a1 * self.sens_tv + da1 * (v1_prev - r1 * i_cell), self.sens_t2)
        self.zcc = self.zcc - (eta_i * dt) * inv_qc
        zo = np.clip(self.z, 0.0, 1.0)
        # cells.rs: the reported σ adds the consider term of the capacity, y²·var(capacity),
        # var the AWTLS prior's until a capacity observation (none here)
        y = self.q_since_ah / tab["capacity_ah"]
        # no less than the cell file's floor (cell_model.rs CellEstimator::soc_sigma_floor)
        # and the RC polarisation's consider terms (cell_model.rs rc_polarisation_rel_error,
        # rc_time_constant_rel_error)
        consider = (
            (y * y) * (est.capacity_prior_sigma * est.capacity_prior_sigma)
            + (tab["rc_polarisation_rel_error"] * self.sens_z) ** 2
            + (tab["rc_time_constant_rel_error"] * self.sens_tz) ** 2
        )
        sigma = np.sqrt(np.maximum(self.p00 + consider, tab["soc_sigma_floor"] ** 2))

        # pack quantities, limits per cell
        dz = zo - np.clip(z_pred, 0.0, 1.0)
        ocv = ocv_pred + slope * dz
        soe = float(np.sum((self._lerp(tab["energy"], k, f) + (ocv - hc) * dz) * self.cap_ah)) * self.par
        vd = ocv - v2c
        v1n = self.v1
        dc, dp = dcont_s[so], dpeak_s[so]
        # the learnt ratio raises the limits' resistance, never lowers it (engine/cells.rs)
        # (R1 already takes the ratio only upwards)
        r0l = r0 / np.minimum(self.r0_ratio, 1.0)
        inv_c = 1.0 / (r0l + r1 * (1.0 - dc) + slope * lc.continuous_horizon_s * inv_qc)
        inv_p = 1.0 / (r0l + r1 * (1.0 - dp) + slope * lc.peak_horizon_s * inv_qc)

        def lim(h: np.ndarray, inv: np.ndarray) -> float:
            x = h * inv
            return float(np.min(np.where(x > 0.0, x, 0.0)))

        ld_c = lim(vd - v1n * dc - vmin, inv_c)
        lc_c = lim(vmax - vd + v1n * dc, inv_c)
        ld_p = lim(vd - v1n * dp - vmin, inv_p)
        lc_p = lim(vmax - vd + v1n * dp, inv_p)
        vv = v[valid]
        R["voltage_spread"].eval(t_s, [vv.max() - vv.min() if vv.size else np.nan])

        faults: list[Fault] = []
        for r in self.rules:
            faults += r.collect(r.since.shape[1] == 1)
        action = Action(max((int(Level[f.level.upper()]) + 1 for f in faults), default=0))

        soc_min, soc_max = float(zo.min()), float(zo.max())
        fsd = float(np.interp(soc_min, lc.discharge_soc_derating.x, lc.discharge_soc_derating.factor))
        fsc = float(np.interp(soc_max, lc.charge_soc_derating.x, lc.charge_soc_derating.factor))
        tgt = np.array([
            min(self.par * ld_c, lc.max_discharge_a * fd * fsd),
            min(self.par * lc_c, lc.max_charge_a * fc * fsc),
            min(self.par * ld_p, lc.max_discharge_peak_a * fd * fsd),
            min(self.par * lc_p, lc.max_charge_peak_a * fc * fsc),
        ])
        if action == Action.DERATE:
            tgt = tgt * lc.warning_factor
        if action == Action.RAMP_DOWN:
            tgt = np.minimum(tgt, np.maximum(self.lim - lc.alarm_ramp_a_per_s * dt, 0.0))
        if action == Action.OPEN or not i_valid:
            tgt = np.zeros(4)
        tgt = np.maximum(np.nan_to_num(tgt, nan=0.0), 0.0)
        self.lim = np.where(tgt <= self.lim, tgt,
                            np.minimum(self.lim + lc.recover_a_per_s * max(dt, 0.0), tgt))

        # balancing
        bc = cfg.balancing
        allowed = action < Action.RAMP_DOWN and i_valid and abs(i) <= bc.max_current_a
        active = bc.mode != "off" and allowed
        due = not (t_s - self.bal_decided_t < bc.decision_period_s - TIME_EPS_S)
        self.bal_decided_t = (t_s if due else self.bal_decided_t) if active else np.nan
        if active and not due:
            # hold between decisions; cells that may no longer bleed stop at once
            t_ok = np.where(t_valid, self.t_used, np.inf)[so] < bc.inhibit_temp_c
            self.balance = self.balance & valid & (v >= bc.min_cell_v) & t_ok
        elif bc.mode == "off" or not allowed or not valid.any():
            self.balance = np.zeros(self.n, dtype=bool)
        else:
            x = zo if bc.mode == "soc" else v
            x_min = x[valid].min()
            t_ok = np.where(t_valid, self.t_used, np.inf)[so] < bc.inhibit_temp_c
            thr = np.where(self.balance, x_min + bc.threshold - bc.hysteresis, x_min + bc.threshold)
            want = valid & (v >= bc.min_cell_v) & t_ok & (x > thr)
            if bc.max_cells > 0 and want.sum() > bc.max_cells:
                idx = np.flatnonzero(want)
                order = idx[np.lexsort((idx, -x[idx]))]
                want = np.zeros(self.n, dtype=bool)
                want[order[: bc.max_cells]] = True
            self.balance = want

        return NumpyResult(
            action=action,
            faults=tuple(faults),
            soc=zo,
            soc_sigma=sigma,
            soc_cc=self.zcc.copy(),
            soc_min=soc_min,
            soc_max=soc_max,
            soc_mean=float(zo.sum() / self.n),
            soe_wh=soe,
            ocv_string_v=float(ocv.sum()),
            r_string_ohm=float(r0.sum() / self.par + cfg.pack.r_extra_ohm),
            dcl_a=float(self.lim[0]),
            ccl_a=float(self.lim[1]),
            dcl_peak_a=float(self.lim[2]),
            ccl_peak_a=float(self.lim[3]),
            balance=self.balance.copy(),
            soh_resistance=float(self.r0_soh_ratio.mean()),
        )

    def reset_faults(self) -> None:
        for r in self.rules:
            r.reset()
