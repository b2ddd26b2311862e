//! Where a store is — a store directory (the [`Emulator`]) or an account's Blob endpoint (the
//! REST client, with the `client` feature) — and opening it to write or to read, with the
//! rules every command follows: one writer per directory, a directory created only when new or
//! empty, readers waiting for a writer mid-cycle and sent to a server's URL when one serves it.

use std::path::Path;
use std::sync::Arc;

use crate::clock::Clock;
use crate::data_log::Durability;
use crate::error::StoreError;
use crate::http::proxy::ProxySettings;
use crate::lock_holder::Holder;
use crate::types::Profile;
use crate::{Emulator, PageBlobStore};

/// A store's address and how to reach or keep it.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    /// A store directory, or an endpoint such as `http://127.0.0.1:10000/devstoreaccount1`.
    pub store: String,
    /// The endpoint's account (default: the URL path's first segment, else the development
    /// account).
    pub account: Option<String>,
    /// The endpoint's base64 key (default: the development key).
    pub key: Option<String>,
    /// Reach the endpoint through this HTTP proxy.
    pub proxy: Option<ProxySettings>,
    /// How a store directory keeps what it is told.
    pub durability: Durability,
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// (The store error is in the message, not a source: printed as a chain it would be said
    /// twice.)
    #[error("store {store}: {error}")]
    Store { store: String, error: StoreError },
    #[error("store {store} is served by {holder}: read it through the server's URL")]
    Served { store: String, holder: Holder },
    #[error("the account key is not base64")]
    Key,
    #[error("store {store}: {why}")]
    Endpoint { store: String, why: String },
}

/// The store directory `path` is in or is, if any: the nearest folder at or above it that
/// holds a store's description (`store.json`) and its blobs' folder (`homes`). Commands that
/// write files refuse to write there: a file put in place there could replace the store's own.
pub fn store_directory_above(path: &Path) -> Option<&Path> {
    path.ancestors()
        .find(|dir| dir.join("store.json").is_file() && dir.join("homes").is_dir())
}

impl StoreLocation {
    /// The store directory, when the store is not a URL.
    pub fn directory(&self) -> Option<&Path> {
        let url = self.store.starts_with("http://") || self.store.starts_with("https://");
        (!url).then(|| Path::new(&self.store))
    }

    fn failed(&self, error: StoreError) -> OpenError {
        OpenError::Store {
            store: self.store.clone(),
            error,
        }
    }

    /// The store to write (`clock`: a directory's). A directory must be a store, or new or empty (it is then created
    /// with `new_profile`, default standard); an existing one must have been created with
    /// `new_profile`, when given. Returns the store and, for a directory, its profile.
    pub fn open_writer(
        &self,
        new_profile: Option<Profile>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Box<dyn PageBlobStore>, Option<Profile>), OpenError> {
        let Some(dir) = self.directory() else {
            return Ok((self.open_endpoint()?, None));
        };
        let store = match new_profile {
            None if dir.join("store.json").exists() => {
                Emulator::open_existing(dir, self.durability, clock)
            }
            _ => Emulator::open(
                dir,
                new_profile.unwrap_or(Profile::Standard),
                self.durability,
                clock,
            ),
        }
        .map_err(|e| self.failed(e))?;
        let profile = store.profile();
        Ok((Box::new(store), Some(profile)))
    }

    /// The store to read (`clock`: a directory's). A directory is opened read-only (read-only media work) and must
    /// already be a store; while its writer is mid-cycle this waits for it, calling `waiting`
    /// first; a directory a server holds is refused, naming the server.
    pub fn open_reader(
        &self,
        clock: Arc<dyn Clock>,
        waiting: &dyn Fn(&Holder),
    ) -> Result<Box<dyn PageBlobStore>, OpenError> {
        let Some(dir) = self.directory() else {
            return self.open_endpoint();
        };
        let open = |wait| Emulator::open_read_only(dir, wait, Arc::clone(&clock));
        let store = match open(false) {
            Err(StoreError::InUse { holder, .. }) if !holder.serving => {
                waiting(&holder);
                open(true)
            }
            Err(StoreError::InUse { holder, .. }) => {
                return Err(OpenError::Served {
                    store: self.store.clone(),
                    holder,
                })
            }
            other => other,
        };
        Ok(Box::new(store.map_err(|e| self.failed(e))?))
    }

    /// The account named by the location: given, else from the URL path, else the
    /// development account.
    pub fn account(&self) -> String {
        match &self.account {
            Some(a) => a.clone(),
            None => self
                .store
                .split("://")
                .nth(1)
                .and_then(|r| r.split('/').nth(1))
                .filter(|a| !a.is_empty())
                .unwrap_or(crate::http::shared_key::DEV_ACCOUNT)
                .to_string(),
        }
    }

    /// The endpoint's client (it signs requests with the system clock).
    #[cfg(feature = "client")]
    fn open_endpoint(&self) -> Result<Box<dyn PageBlobStore>, OpenError> {
        use crate::http::client::HttpStore;
        use crate::http::shared_key::{decode_key, DEV_KEY};
        let account = self.account();
        let key = decode_key(self.key.as_deref().unwrap_or(DEV_KEY)).ok_or(OpenError::Key)?;
        let store = match &self.proxy {
            Some(proxy) => {
                HttpStore::with_proxy(&self.store, &account, &key, proxy).map_err(|e| {
                    OpenError::Endpoint {
                        store: self.store.clone(),
                        why: e.to_string(),
                    }
                })?
            }
            None => HttpStore::new(&self.store, &account, &key),
        };
        Ok(Box::new(store))
    }

    #[cfg(not(feature = "client"))]
    fn open_endpoint(&self) -> Result<Box<dyn PageBlobStore>, OpenError> {
        Err(OpenError::Endpoint {
            store: self.store.clone(),
            why: "this build has no Blob REST client (the pageblob crate's `client` feature)"
                .into(),
        })
    }
}
