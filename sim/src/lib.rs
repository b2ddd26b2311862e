//! `sim`: the deterministic disaster-recovery simulator (VMM, Hyper-V hosts, Azure) that will
//! drive the real data path.
//!
//! Empty until the simulator issue lands; it exists now so the workspace has its final shape.

#![forbid(unsafe_code)]
