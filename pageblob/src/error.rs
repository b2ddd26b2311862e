//! Store errors carry Azure's HTTP status and error code, so every implementation (embedded,
//! served over HTTP, or a real account through the client) fails the same way.

/// Defines [`ErrorCode`] from one table of `Code = HTTP status`: the enum, its status, its
/// name (the variant's own name, as Azure spells it) and the list of all codes.
macro_rules! error_codes {
    ($($code:ident = $status:literal,)+) => {
        /// Azure Blob service error codes used by page-blob operations.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($code,)+
        }

        impl ErrorCode {
            /// Every code, for parsing answers.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code,)+];

            /// HTTP status Azure answers with.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$code => $status,)+
                }
            }

            /// The code string of `x-ms-error-code`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => stringify!($code),)+
                }
            }
        }
    };
}

error_codes! {
    ContainerNotFound = 404,
    ContainerAlreadyExists = 409,
    ContainerBeingDeleted = 409,
    BlobNotFound = 404,
    BlobAlreadyExists = 409,
    InvalidHeaderValue = 400,
    InvalidQueryParameterValue = 400,
    MissingRequiredHeader = 400,
    InvalidInput = 400,
    InvalidResourceName = 400,
    InvalidMetadata = 400,
    MetadataTooLarge = 400,
    Md5Mismatch = 400,
    Crc64Mismatch = 400,
    InvalidUri = 400,
    InvalidXmlDocument = 400,
    InvalidPageRange = 416,
    InvalidRange = 416,
    RequestBodyTooLarge = 413,
    SnapshotsPresent = 409,
    SnapshotCountExceeded = 409,
    SnapshotOperationRateExceeded = 409,
    OperationNotAllowedOnSnapshot = 409,
    PreviousSnapshotNotFound = 409,
    PreviousSnapshotCannotBeNewer = 400,
    BlobOverwritten = 409,
    SequenceNumberConditionNotMet = 412,
    SequenceNumberIncrementTooLarge = 409,
    ConditionNotMet = 412,
    LeaseIdMissing = 412,
    LeaseIdMismatchWithBlobOperation = 412,
    LeaseIdMismatchWithLeaseOperation = 409,
    LeaseAlreadyPresent = 409,
    LeaseNotPresentWithBlobOperation = 412,
    LeaseNotPresentWithLeaseOperation = 409,
    LeaseIsBrokenAndCannotBeRenewed = 409,
    LeaseIsBreakingAndCannotBeAcquired = 409,
    LeaseIsBreakingAndCannotBeChanged = 409,
    IncrementalCopySourceMustBeSnapshot = 409,
    IncrementalCopyBlobMismatch = 409,
    IncrementalCopyOfEarlierSnapshotNotAllowed = 409,
    OperationNotAllowedOnIncrementalCopyBlob = 409,
    AuthenticationFailed = 403,
    AuthorizationPermissionMismatch = 403,
    AuthorizationResourceTypeMismatch = 403,
    AuthorizationServiceMismatch = 403,
    AuthorizationSourceIPMismatch = 403,
    AuthorizationProtocolMismatch = 403,
    UnsupportedHttpVerb = 405,
    ServerBusy = 503,
    OperationTimedOut = 500,
    InternalError = 500,
    NotImplemented = 501,
}

impl ErrorCode {
    /// The code named by an `x-ms-error-code` value.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The service said no: an Azure status and code, with a message saying what and where.
    #[error("{} {}: {message}", code.status(), code.as_str())]
    Service { code: ErrorCode, message: String },
    /// The store's own storage failed (disk full, permissions, a damaged store directory).
    #[error("store I/O at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The persisted store is damaged beyond the torn tail a crash can leave.
    #[error("store damaged: {0}")]
    Corrupt(String),
    /// Another process is writing the store directory.
    #[error("store {dir} is in use by {holder}")]
    InUse {
        dir: String,
        holder: super::lock_holder::Holder,
    },
    /// The store was opened for reading and something tried to change it.
    #[error("store {0} was opened read-only")]
    ReadOnly(String),
    /// The store exists with another profile than the one asked for.
    #[error("the store was created with profile {created}, not {wanted}")]
    ProfileMismatch {
        created: super::types::Profile,
        wanted: super::types::Profile,
    },
    /// The directory is not a store (and may not become one).
    #[error("{dir} is not a drplane store: {why}")]
    NotAStore { dir: String, why: String },
}

impl StoreError {
    pub fn service(code: ErrorCode, message: impl Into<String>) -> StoreError {
        StoreError::Service {
            code,
            message: message.into(),
        }
    }

    /// The Azure code, when the service refused the operation.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            StoreError::Service { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_from_its_name_and_names_are_unique() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..=503).contains(&code.status()));
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::parse("NoSuchCode"), None);
    }
}
