//! AccessControlManager and TransactionAuthenticator: who may do what, and
//! proof that they asked.
//!
//! Signatures are checked at ingress (`garrison_client::tx`, the only
//! ed25519 user); everything that depends on state is decided in apply:
//!
//! - [`access`]: the roles file, and how the policy reaches apply;
//! - [`admin`]: the meta group's extension, the policy's source of truth and
//!   administrative transactions;
//! - [`propagate`]: carrying the policy into every location's log;
//! - [`sequence`]: per-player sequence numbers (replay protection) and
//!   remembered outcomes (exactly-once submission);
//! - [`audit`]: the bounded, replicated trail of who did what;
//! - [`session`]: login challenges, session tokens and the meta clock they
//!   expire on.

pub mod access;
pub mod admin;
pub mod audit;
pub mod propagate;
pub mod sequence;
pub mod session;
