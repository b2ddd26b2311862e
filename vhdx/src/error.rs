//! The crate's error type: every failure names the structure and the file offset it concerns.

use std::io;

/// Everything that can go wrong while reading a VHDX image or chain.
///
/// Offsets are absolute file offsets once an error leaves the crate; pure decoders report
/// offsets relative to the bytes they were given and the caller shifts them with
/// [`Error::at`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{structure} at {offset:#x}: I/O error: {source}")]
    Io {
        structure: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{structure} at {offset:#x}: needs {needed} bytes but only {available} are there")]
    Truncated {
        structure: &'static str,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{structure} at {offset:#x}: signature is not {expected:?}")]
    BadSignature {
        structure: &'static str,
        offset: u64,
        expected: &'static str,
    },
    #[error("{structure} at {offset:#x}: CRC-32C is {actual:#010x}, stored {stored:#010x}")]
    BadChecksum {
        structure: &'static str,
        offset: u64,
        stored: u32,
        actual: u32,
    },
    #[error("{structure} at {offset:#x}: {field} = {value:#x}: {rule}")]
    InvalidField {
        structure: &'static str,
        offset: u64,
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
    #[error("{structure} at {offset:#x}: {reason}")]
    Invalid {
        structure: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("{structure} at {offset:#x}: not supported: {reason}")]
    Unsupported {
        structure: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("parent of {child}: {reason}")]
    Parent { child: String, reason: String },
    #[error("read of {len} bytes at virtual offset {offset:#x} ends past the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// An image file changed under the reader (shrank while mapped).
    #[error("{file}: {source}")]
    FileChanged {
        file: String,
        #[source]
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shift a relative offset (from a pure decoder) by `base`, the structure's file offset.
    #[must_use]
    pub fn at(mut self, base: u64) -> Self {
        match &mut self {
            Error::Io { offset, .. }
            | Error::Truncated { offset, .. }
            | Error::BadSignature { offset, .. }
            | Error::BadChecksum { offset, .. }
            | Error::InvalidField { offset, .. }
            | Error::Invalid { offset, .. }
            | Error::Unsupported { offset, .. } => *offset = offset.saturating_add(base),
            Error::Parent { .. } | Error::OutOfRange { .. } | Error::FileChanged { .. } => {}
        }
        self
    }

    /// The file offset this error concerns, when it has one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Io { offset, .. }
            | Error::Truncated { offset, .. }
            | Error::BadSignature { offset, .. }
            | Error::BadChecksum { offset, .. }
            | Error::InvalidField { offset, .. }
            | Error::Invalid { offset, .. }
            | Error::Unsupported { offset, .. } => Some(*offset),
            Error::Parent { .. } | Error::OutOfRange { .. } | Error::FileChanged { .. } => None,
        }
    }

    pub(crate) fn invalid(structure: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        Error::Invalid {
            structure,
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            structure,
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn field(
        structure: &'static str,
        offset: u64,
        field: &'static str,
        value: u64,
        rule: &'static str,
    ) -> Self {
        Error::InvalidField {
            structure,
            offset,
            field,
            value,
            rule,
        }
    }
}

/// Fails with [`Error::Truncated`] unless `bytes` holds at least `needed` bytes.
pub(crate) fn require_len(structure: &'static str, bytes: &[u8], needed: usize) -> Result<()> {
    if bytes.len() < needed {
        return Err(Error::Truncated {
            structure,
            offset: 0,
            needed: needed as u64,
            available: bytes.len() as u64,
        });
    }
    Ok(())
}
