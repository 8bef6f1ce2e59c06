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
    /// A key file problem.
    #[error("{0}")]
    Key(String),
    /// The client was configured wrongly.
    #[error("{0}")]
    Config(String),
}
