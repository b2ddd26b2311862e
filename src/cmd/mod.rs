//! One module per command group.

pub mod bench;
pub mod blob;
pub mod plan;
pub mod proxy;
pub mod register;
pub mod replicate;
pub mod sim;
pub mod vhdx;
