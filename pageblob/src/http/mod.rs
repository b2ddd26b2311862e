//! The page-blob store over HTTP: the Azure Blob REST API (path-style URLs, Shared Key) served
//! from any [`PageBlobStore`](super::PageBlobStore).

#[cfg(feature = "server")]
mod blob_read;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod coalescing_io;
#[cfg(feature = "server")]
pub mod connections;
#[cfg(feature = "client")]
mod exchange;
pub mod listing;
#[cfg(feature = "client")]
mod pipelined;
pub mod proxy;
pub mod sas;
#[cfg(feature = "server")]
pub mod server;
pub mod shared_key;
#[cfg(feature = "server")]
pub mod structured_body;
pub mod xml;
