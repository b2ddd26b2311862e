//! Store errors carry Azure's HTTP status and error code, so every implementation (embedded,
//! served over HTTP, or a real account through the client) fails the same way.

/// Azure Blob service error codes used by page-blob operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ContainerNotFound,
    ContainerAlreadyExists,
    BlobNotFound,
    BlobAlreadyExists,
    InvalidHeaderValue,
    InvalidQueryParameterValue,
    MissingRequiredHeader,
    InvalidPageRange,
    InvalidRange,
    RequestBodyTooLarge,
    SnapshotsPresent,
    SnapshotCountExceeded,
    SnapshotOperationRateExceeded,
    OperationNotAllowedOnSnapshot,
    PreviousSnapshotNotFound,
    PreviousSnapshotCannotBeNewer,
    BlobOverwritten,
    SequenceNumberConditionNotMet,
    SequenceNumberIncrementTooLarge,
    ConditionNotMet,
    LeaseIdMissing,
    LeaseIdMismatchWithBlobOperation,
    LeaseIdMismatchWithLeaseOperation,
    LeaseAlreadyPresent,
    LeaseNotPresentWithBlobOperation,
    LeaseNotPresentWithLeaseOperation,
    LeaseIsBrokenAndCannotBeRenewed,
    LeaseIsBreakingAndCannotBeAcquired,
    LeaseIsBreakingAndCannotBeChanged,
    ServerBusy,
    OperationTimedOut,
    InternalError,
    InvalidInput,
    AuthenticationFailed,
    InvalidUri,
    UnsupportedHttpVerb,
    InvalidXmlDocument,
    ContainerBeingDeleted,
    IncrementalCopySourceMustBeSnapshot,
    IncrementalCopyBlobMismatch,
    IncrementalCopyOfEarlierSnapshotNotAllowed,
    OperationNotAllowedOnIncrementalCopyBlob,
}

impl ErrorCode {
    /// HTTP status Azure answers with.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidHeaderValue
            | InvalidQueryParameterValue
            | MissingRequiredHeader
            | PreviousSnapshotCannotBeNewer
            | InvalidInput
            | InvalidUri
            | InvalidXmlDocument => 400,
            AuthenticationFailed => 403,
            ContainerBeingDeleted
            | IncrementalCopySourceMustBeSnapshot
            | IncrementalCopyBlobMismatch
            | IncrementalCopyOfEarlierSnapshotNotAllowed
            | OperationNotAllowedOnIncrementalCopyBlob => 409,
            UnsupportedHttpVerb => 405,
            ContainerNotFound | BlobNotFound => 404,
            ContainerAlreadyExists
            | BlobAlreadyExists
            | SnapshotsPresent
            | SnapshotCountExceeded
            | SnapshotOperationRateExceeded
            | OperationNotAllowedOnSnapshot
            | PreviousSnapshotNotFound
            | BlobOverwritten
            | SequenceNumberIncrementTooLarge
            | LeaseAlreadyPresent
            | LeaseNotPresentWithLeaseOperation
            | LeaseIdMismatchWithLeaseOperation
            | LeaseIsBrokenAndCannotBeRenewed
            | LeaseIsBreakingAndCannotBeAcquired
            | LeaseIsBreakingAndCannotBeChanged => 409,
            SequenceNumberConditionNotMet
            | ConditionNotMet
            | LeaseIdMissing
            | LeaseIdMismatchWithBlobOperation
            | LeaseNotPresentWithBlobOperation => 412,
            RequestBodyTooLarge => 413,
            InvalidPageRange | InvalidRange => 416,
            InternalError | OperationTimedOut => 500,
            ServerBusy => 503,
        }
    }

    /// The code string of `x-ms-error-code`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            ContainerNotFound => "ContainerNotFound",
            ContainerAlreadyExists => "ContainerAlreadyExists",
            BlobNotFound => "BlobNotFound",
            BlobAlreadyExists => "BlobAlreadyExists",
            InvalidHeaderValue => "InvalidHeaderValue",
            InvalidQueryParameterValue => "InvalidQueryParameterValue",
            MissingRequiredHeader => "MissingRequiredHeader",
            InvalidPageRange => "InvalidPageRange",
            InvalidRange => "InvalidRange",
            RequestBodyTooLarge => "RequestBodyTooLarge",
            SnapshotsPresent => "SnapshotsPresent",
            SnapshotCountExceeded => "SnapshotCountExceeded",
            SnapshotOperationRateExceeded => "SnapshotOperationRateExceeded",
            OperationNotAllowedOnSnapshot => "OperationNotAllowedOnSnapshot",
            PreviousSnapshotNotFound => "PreviousSnapshotNotFound",
            PreviousSnapshotCannotBeNewer => "PreviousSnapshotCannotBeNewer",
            BlobOverwritten => "BlobOverwritten",
            SequenceNumberConditionNotMet => "SequenceNumberConditionNotMet",
            SequenceNumberIncrementTooLarge => "SequenceNumberIncrementTooLarge",
            ConditionNotMet => "ConditionNotMet",
            LeaseIdMissing => "LeaseIdMissing",
            LeaseIdMismatchWithBlobOperation => "LeaseIdMismatchWithBlobOperation",
            LeaseIdMismatchWithLeaseOperation => "LeaseIdMismatchWithLeaseOperation",
            LeaseAlreadyPresent => "LeaseAlreadyPresent",
            LeaseNotPresentWithBlobOperation => "LeaseNotPresentWithBlobOperation",
            LeaseNotPresentWithLeaseOperation => "LeaseNotPresentWithLeaseOperation",
            LeaseIsBrokenAndCannotBeRenewed => "LeaseIsBrokenAndCannotBeRenewed",
            LeaseIsBreakingAndCannotBeAcquired => "LeaseIsBreakingAndCannotBeAcquired",
            LeaseIsBreakingAndCannotBeChanged => "LeaseIsBreakingAndCannotBeChanged",
            ServerBusy => "ServerBusy",
            OperationTimedOut => "OperationTimedOut",
            InternalError => "InternalError",
            InvalidInput => "InvalidInput",
            AuthenticationFailed => "AuthenticationFailed",
            InvalidUri => "InvalidUri",
            UnsupportedHttpVerb => "UnsupportedHttpVerb",
            InvalidXmlDocument => "InvalidXmlDocument",
            ContainerBeingDeleted => "ContainerBeingDeleted",
            IncrementalCopySourceMustBeSnapshot => "IncrementalCopySourceMustBeSnapshot",
            IncrementalCopyBlobMismatch => "IncrementalCopyBlobMismatch",
            IncrementalCopyOfEarlierSnapshotNotAllowed => {
                "IncrementalCopyOfEarlierSnapshotNotAllowed"
            }
            OperationNotAllowedOnIncrementalCopyBlob => "OperationNotAllowedOnIncrementalCopyBlob",
        }
    }
}

impl ErrorCode {
    /// Every code, for parsing answers.
    pub const ALL: [ErrorCode; 42] = {
        use ErrorCode::*;
        [
            ContainerNotFound,
            ContainerAlreadyExists,
            BlobNotFound,
            BlobAlreadyExists,
            InvalidHeaderValue,
            InvalidQueryParameterValue,
            MissingRequiredHeader,
            InvalidPageRange,
            InvalidRange,
            RequestBodyTooLarge,
            SnapshotsPresent,
            SnapshotCountExceeded,
            SnapshotOperationRateExceeded,
            OperationNotAllowedOnSnapshot,
            PreviousSnapshotNotFound,
            PreviousSnapshotCannotBeNewer,
            BlobOverwritten,
            SequenceNumberConditionNotMet,
            SequenceNumberIncrementTooLarge,
            ConditionNotMet,
            LeaseIdMissing,
            LeaseIdMismatchWithBlobOperation,
            LeaseIdMismatchWithLeaseOperation,
            LeaseAlreadyPresent,
            LeaseNotPresentWithBlobOperation,
            LeaseNotPresentWithLeaseOperation,
            LeaseIsBrokenAndCannotBeRenewed,
            LeaseIsBreakingAndCannotBeAcquired,
            LeaseIsBreakingAndCannotBeChanged,
            ServerBusy,
            OperationTimedOut,
            InternalError,
            InvalidInput,
            AuthenticationFailed,
            InvalidUri,
            UnsupportedHttpVerb,
            InvalidXmlDocument,
            ContainerBeingDeleted,
            IncrementalCopySourceMustBeSnapshot,
            IncrementalCopyBlobMismatch,
            IncrementalCopyOfEarlierSnapshotNotAllowed,
            OperationNotAllowedOnIncrementalCopyBlob,
        ]
    };

    /// The code named by an `x-ms-error-code` value.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
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
        for code in ErrorCode::ALL {
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
