//! The client's error type: what a program can match on.

use crate::api::ApiError;

/// Everything a client call can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node refused the request; the inner error says why.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No endpoint could be reached.
    #[error("no garrison node reachable at {endpoints}: {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        last: String,
    },
    /// Retries ran out without learning the outcome; the transaction may or
    /// may not have committed (resubmit the same signed transaction later).
    #[error("gave up after {attempts} attempts; the outcome is unknown: {last}")]
    OutcomeUnknown {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The cluster carried the request out and refused it; nothing changed.
    #[error("refused: {0}")]
    Rejected(crate::api::Rejection),
    /// A node's reply did not decode (a node of another version, or a
    /// fault on the way).
    #[error("a node's reply did not decode: {0}")]
    Malformed(String),
    /// A key file problem.
    #[error("{0}")]
    Key(String),
    /// The client was configured wrongly.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// True when the request may have been carried out anyway (a
    /// transaction may have committed): resubmit the same signed bytes to
    /// learn its outcome. False when it was certainly refused.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::OutcomeUnknown { .. } | ClientError::Unreachable { .. } => true,
            ClientError::Api(e) => matches!(e, ApiError::Timeout | ApiError::Unavailable(_)),
            ClientError::Rejected(_)
            | ClientError::Malformed(_)
            | ClientError::Key(_)
            | ClientError::Config(_) => false,
        }
    }
}
