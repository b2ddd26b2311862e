//! Scenarios: the world to build (hosts, VMs, disks, workload), the replication policy, the
//! storage profile and network, the faults to inject and the DR steps to take. A scenario
//! starts as a [`ScenarioFile`] (read from TOML by [`Scenario::parse`], or built as a value) and
//! becomes a [`Scenario`] by [`Scenario::from_file`], which checks every field against the
//! limits and names a bad one with the rule it breaks.
//!
//! Files: `file` (the file's structure), `model` (the validated scenario and the limits),
//! `validate` (one validator per section).

mod file;
mod model;
mod validate;

pub use file::*;
pub use model::*;
