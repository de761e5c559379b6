//! A switching device with closing/opening delay, and its faults.

/// States (or feedbacks) of the three devices of a string: the one `Contactors` type, the
/// protocol's (issue 9: defined once; the plant, the node and the bindings share it).
pub use mbms_consensus::Contactors;

#[derive(Debug, Clone, Default)]
pub struct Contactor {
    /// Commanded state (coil energised).
    pub cmd: bool,
    /// Real state of the main contact.
    pub closed: bool,
    cmd_t: f64,
    pub welded: bool,
    pub fails_to_close: bool,
    pub feedback_wrong: bool,
}

impl Contactor {
    pub fn command(&mut self, on: bool, t_s: f64) {
        if on != self.cmd {
            self.cmd = on;
            self.cmd_t = t_s;
        }
    }

    /// Move the contact once the closing/opening time since the command has passed
    /// (evaluated at step boundaries).
    pub fn update(&mut self, t_s: f64, close_time_s: f64, open_time_s: f64) {
        if self.cmd == self.closed {
            return;
        }
        let delay = if self.cmd { close_time_s } else { open_time_s };
        if t_s - self.cmd_t + 1e-12 < delay {
            return;
        }
        if self.cmd && self.fails_to_close {
            return;
        }
        if !self.cmd && self.welded {
            return;
        }
        self.closed = self.cmd;
    }

    /// When the contact will move by itself (command given, delay running), if it will: the
    /// plant splits its step there, so a close happens at its true instant.
    pub fn pending_move_at(&self, close_time_s: f64, open_time_s: f64) -> Option<f64> {
        if self.cmd == self.closed || (self.cmd && self.fails_to_close) || (!self.cmd && self.welded) {
            return None;
        }
        Some(self.cmd_t + if self.cmd { close_time_s } else { open_time_s })
    }

    /// What the auxiliary contact reports.
    pub fn feedback(&self) -> bool {
        self.closed != self.feedback_wrong
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_and_faults() {
        let mut c = Contactor::default();
        c.command(true, 0.0);
        c.update(0.02, 0.03, 0.01);
        assert!(!c.closed);
        c.update(0.03, 0.03, 0.01);
        assert!(c.closed);
        c.welded = true;
        c.command(false, 0.1);
        c.update(1.0, 0.03, 0.01);
        assert!(c.closed, "a welded contact stays closed");
        let mut d = Contactor { fails_to_close: true, ..Default::default() };
        d.command(true, 0.0);
        d.update(1.0, 0.03, 0.01);
        assert!(!d.closed && !d.feedback());
        d.feedback_wrong = true;
        assert!(d.feedback(), "wrong feedback reports closed while open");
    }
}
