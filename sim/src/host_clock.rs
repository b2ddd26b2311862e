//! A Hyper-V host's clock: the simulated true time plus the host's skew. The agent and its
//! state machine read their host's clock; the storage account and the event queue keep true
//! time. Every conversion between the two goes through here.

/// One host's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HostClock {
    /// Host time minus true time.
    skew_nanos: i64,
}

impl HostClock {
    /// The host's reading at true time `true_now`.
    pub(crate) fn host_time(&self, true_now: u64) -> u64 {
        true_now.saturating_add_signed(self.skew_nanos)
    }

    /// The true time at which the host's clock reads `host_time`.
    pub(crate) fn true_time(&self, host_time: u64) -> u64 {
        host_time.saturating_add_signed(self.skew_nanos.saturating_neg())
    }

    /// From now on the host's clock is `seconds` off true time.
    pub(crate) fn set_skew_secs(&mut self, seconds: i64) {
        self.skew_nanos = seconds.saturating_mul(crate::time::SEC as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SEC;

    #[test]
    fn host_and_true_time_convert_both_ways_and_saturate() {
        let mut c = HostClock::default();
        assert_eq!(c.host_time(5 * SEC), 5 * SEC);
        c.set_skew_secs(-3);
        assert_eq!(c.host_time(5 * SEC), 2 * SEC);
        assert_eq!(c.true_time(2 * SEC), 5 * SEC);
        assert_eq!(c.host_time(SEC), 0, "never before the epoch");
        c.set_skew_secs(i64::MAX);
        assert_eq!(c.host_time(u64::MAX - 1), u64::MAX);
    }
}
