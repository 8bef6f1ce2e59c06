//! The Rust client of garrison: keys, signed transactions, and the client API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), garrison_client::ClientError> {
//! use garrison_client::{Client, Keypair, Op, Player, Value};
//! let client = Client::connect(&["127.0.0.1:7401".to_string()]).await?;
//! let mut player = Player::new(Keypair::generate());
//! let receipt = player
//!     .transact(&client, "hill", vec![Op::Put { entity: "unit/1".into(), fields: vec![("hp".into(), Value::Int(10))] }])
//!     .await?;
//! println!("{:?} at index {}", receipt.outcome, receipt.index);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`tx`]: transactions, their canonical bytes, signing and ingress checks.
//! - [`api`]: the tarpc service nodes serve to clients, and its types.
//! - [`events`]: events of the applied log, cursors, filters and reads.
//! - [`keys`]: generating, saving and loading player keys.
//! - [`token`]: session tokens and login challenges.
//! - [`policy`]: access-control vocabulary and administrative operations.
//! - [`client`]: [`Client`] (endpoints, retries, leader affinity) and
//!   [`Player`] (sequence numbers, exactly-once submission).
//! - [`tls`]: optional TLS on the client port (`ClientOptions::tls`).
//! - [`error`]: the error type, [`ClientError`].

pub mod api;
pub mod client;
pub mod error;
pub mod events;
pub mod keys;
pub mod plugins;
pub mod policy;
pub mod rules;
pub mod tls;
pub mod token;
pub mod tx;

pub use api::{
    ApiError, Entity, EntityRead, Event, EventKind, LocationRead, Outcome, ReadMode, Rejection,
    TxReceipt,
};
pub use client::{Client, ClientOptions, Player};
pub use error::ClientError;
pub use keys::Keypair;
pub use tx::{Op, SignedTransaction, Transaction, TxError, Value};
