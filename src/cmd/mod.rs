//! One module per command group.

pub mod blob;
pub mod vhdx;
