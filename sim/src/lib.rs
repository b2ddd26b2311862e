//! `sim`: the deterministic disaster-recovery simulator. A scenario ([`scenario`]) describes a
//! Hyper-V host's VMs and disks, their workload, the replication policy, the storage profile,
//! the network and the faults; [`world::run`] builds that world around the real data path —
//! the `vhdx` writer for the VM disks, the change tracker, the replication agent and
//! replicator state machine, the page-blob emulator — and runs it on a virtual clock with seeded
//! randomness, then checks that every retained point restores byte-exact. The same scenario and
//! seed always give the same trace hash.
//!
//! Built so far (issue 6 in progress): host, VMs with VHDX disks and workload generators,
//! replication with tracked deltas, app-consistent points, retention, WAN outages and host
//! crashes (resync), restore checks, RPO and snapshot-limit checks.

#![forbid(unsafe_code)]

mod audit;
mod content;
mod flows;
pub mod fuzz_targets;
pub mod peak_hours;
pub mod planner;
pub mod report;
pub mod scenario;
mod sim_disk;
pub mod swarm;
mod time;
pub mod timeline;
pub mod world;

pub use report::{HealthEvent, ItemDisk, ReplicatedItem, Report};
pub use scenario::Scenario;
pub use world::run;

/// The scenario `drplane sim run` uses when given none.
pub const QUICKSTART: &str = include_str!("../../scenarios/quickstart.toml");
