//! One module per command group.

pub mod blob;
pub mod register;
pub mod replicate;
pub mod sim;
pub mod vhdx;
