//! Protection stage: one [`RuleBank`] per rule (per cell, per temperature sensor or per pack),
//! fed by the other stages as they read their inputs, and the step's action: the most severe
//! level of any active fault.

use crate::protection::{Action, ActiveFault, CompiledRule, Rule, RuleBank, Thresholds};

use super::state::rule_by_name;
use super::ProtectionConfig;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub(super) struct Protection {
    /// index = `Rule` discriminant
    banks: Vec<RuleBank>,
}

impl Protection {
    pub fn new(pr: &ProtectionConfig, n: usize, n_t: usize) -> Self {
        let bank = |rule: Rule, t: &Thresholds, upper: bool, len: usize| {
            RuleBank::new(rule, CompiledRule::new(t, upper), len)
        };
        let sensor_rule = |rule: Rule, len: usize| {
            RuleBank::new(rule, CompiledRule::fault_only(pr.sensors.fault_delay_s), len)
        };
        // order = Rule discriminant
        let banks = vec![
            bank(Rule::CellOvervoltage, &pr.cell_overvoltage_v, true, n),
            bank(Rule::CellUndervoltage, &pr.cell_undervoltage_v, false, n),
            bank(Rule::OvertempCharge, &pr.overtemp_charge_c, true, n_t),
            bank(Rule::UndertempCharge, &pr.undertemp_charge_c, false, n_t),
            bank(Rule::OvertempDischarge, &pr.overtemp_discharge_c, true, n_t),
            bank(Rule::UndertempDischarge, &pr.undertemp_discharge_c, false, n_t),
            bank(Rule::OvercurrentCharge, &pr.overcurrent_charge_a, true, 1),
            bank(Rule::OvercurrentDischarge, &pr.overcurrent_discharge_a, true, 1),
            bank(Rule::VoltageSpread, &pr.voltage_spread_v, true, 1),
            bank(Rule::TempSpread, &pr.temp_spread_c, true, 1),
            sensor_rule(Rule::VoltageSensor, n),
            sensor_rule(Rule::TempSensor, n_t),
            sensor_rule(Rule::CurrentSensor, 1),
        ];
        debug_assert!(banks.iter().enumerate().all(|(k, b)| b.rule as usize == k));
        Protection { banks }
    }

    #[inline]
    pub fn bank(&mut self, rule: Rule) -> &mut RuleBank {
        &mut self.banks[rule as usize]
    }

    /// The three per-cell voltage banks at once (sensor, over-, under-voltage), for the
    /// sensing pass over the cells.
    #[inline]
    pub fn voltage_banks(&mut self) -> (&mut RuleBank, &mut RuleBank, &mut RuleBank) {
        let (b_lo, b_hi) = self.banks.split_at_mut(Rule::VoltageSensor as usize);
        let (b_ov, b_rest) = b_lo.split_at_mut(1);
        (&mut b_hi[0], &mut b_ov[0], &mut b_rest[0])
    }

    /// The active faults into `faults` and the step's action.
    pub fn collect(&self, faults: &mut Vec<ActiveFault>) -> Action {
        faults.clear();
        let mut action = Action::None;
        for b in &self.banks {
            let pack_level = b.states.len() == 1;
            action = action.max(b.collect(pack_level, faults));
        }
        action
    }

    /// Clear every latched fault whose condition is gone.
    pub fn reset(&mut self) {
        for b in &mut self.banks {
            b.reset();
        }
    }

    /// The latched faults as (rule, index), in rule order.
    pub fn latched(&self) -> Vec<(Rule, usize)> {
        self.banks.iter().flat_map(|b| b.latched().map(move |k| (b.rule, k))).collect()
    }

    /// Length of a rule's bank (cells, sensors or 1).
    pub fn len(&self, rule: Rule) -> usize {
        self.banks[rule as usize].states.len()
    }

    pub fn restore_latched(&mut self, rule: Rule, k: usize) {
        self.banks[rule as usize].restore_latched(k);
    }
}

/// One latched fault in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Latch {
    /// the rule's name ([`Rule::name`]), not its number: rules may be added or reordered
    pub rule: String,
    /// cell, sensor, or 0 for a pack rule
    pub index: usize,
}

/// State of the protection stage in the state file, version 1 (see [`super::state`]):
/// latched faults survive a restart (safety: a latched fault needs an explicit reset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProtectionStateV1 {
    pub version: u32,
    pub latched: Vec<Latch>,
}

impl Protection {
    pub fn export(&self) -> ProtectionStateV1 {
        ProtectionStateV1 {
            version: 1,
            latched: self.latched().into_iter().map(|(r, k)| Latch { rule: r.name().to_string(), index: k }).collect(),
        }
    }

    /// The latched faults of a state: known rules, indexes inside the pack.
    pub fn check(&self, s: &ProtectionStateV1) -> Result<Vec<(Rule, usize)>, String> {
        s.latched
            .iter()
            .map(|l| {
                let rule = rule_by_name(&l.rule).ok_or_else(|| format!("protection.latched: unknown rule {:?}", l.rule))?;
                if l.index >= self.len(rule) {
                    return Err(format!("protection.latched: {} index {} out of range (0..{})", l.rule, l.index, self.len(rule)));
                }
                Ok((rule, l.index))
            })
            .collect()
    }
}
