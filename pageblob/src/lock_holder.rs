//! The record in a store directory's `owner.lock`: which process holds the store for writing.
//! JSON, written by [`crate::store_lock::WriterLock`] and read back for the "in use by" error.

use serde::{Deserialize, Serialize};

/// Who holds a store for writing, as its `owner.lock` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// The holder's command line (shortened).
    pub command: String,
    /// The holder keeps the store busy until it exits (a server): readers must not wait.
    #[serde(default)]
    pub serving: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PID {} ({})", self.pid, self.command)
    }
}

/// Longest command line kept in `owner.lock`.
const MAX_COMMAND_CHARS: usize = 200;

pub(crate) fn this_process(serving: bool) -> Holder {
    let mut command = std::env::args().collect::<Vec<_>>().join(" ");
    if command.chars().count() > MAX_COMMAND_CHARS {
        command = command.chars().take(MAX_COMMAND_CHARS).collect::<String>() + "…";
    }
    Holder {
        pid: std::process::id(),
        command,
        serving,
    }
}
