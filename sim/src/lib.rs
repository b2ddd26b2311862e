//! `sim`: the deterministic disaster-recovery simulator. A scenario ([`scenario`]) describes a
//! Hyper-V host's VMs and disks, their workload, the replication policy, the storage profile,
//! the network and the faults; [`world::run`] builds that world around the real data path —
//! the `vhdx` writer for the VM disks, the change tracker, the replication agent and
//! replicator state machine, the page-blob emulator — and runs it on a virtual clock with seeded
//! randomness, then checks that every retained point restores byte-exact. The same scenario and
//! seed always give the same trace hash.
//!
//! Modules: [`scenario`] (the file format), [`world`] (the event loop), `sim_disk` (a simulated
//! disk, its host's link and one costed cycle), `flows` (DR operations as vault jobs), `audit`
//! and `content` (the checker's proofs and disk models), [`report`] (what a run returns), [`swarm`] (many seeds), [`planner`] (capacity
//! planning checked by simulation), [`timeline`] (an SVG of a run), [`junit`] and [`markdown`]
//! (reports for CI systems), [`reproduce`] (the one-line commands that rerun a run or seed),
//! [`peak_hours`], [`fuzz_targets`].

#![forbid(unsafe_code)]

mod audit;
mod content;
mod env;
mod event_queue;
mod final_checks;
mod flows;
pub mod fuzz_targets;
mod host_clock;
mod invariants;
pub mod junit;
pub mod markdown;
pub mod peak_hours;
pub mod planner;
pub mod report;
pub mod reproduce;
pub mod scenario;
mod sim_disk;
pub mod swarm;
mod time;
pub mod timeline;
pub mod world;
mod xml_text;

pub use env::Storage;
pub use report::{HealthEvent, ItemDisk, ReplicatedItem, Report};
pub use scenario::Scenario;
pub use world::{run, run_in, run_then, Teardown};

/// The scenario `drplane sim run` uses when given none.
pub const QUICKSTART: &str = include_str!("../../scenarios/quickstart.toml");
