//! The page-blob store over HTTP: the Azure Blob REST API (path-style URLs, Shared Key) served
//! from any [`PageBlobStore`](super::PageBlobStore).

pub mod client;
pub mod proxy;
pub mod server;
pub mod shared_key;
pub mod xml;
