//! Units of simulated time: nanoseconds on the virtual clock.

pub(crate) const SEC: u64 = 1_000_000_000;
pub(crate) const MIN: u64 = 60 * SEC;
