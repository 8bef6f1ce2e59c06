//! The client API a node serves: the one door through which clients reach
//! the cluster.
//!
//! - [`service`]: the tarpc service: ingress checks, routing of writes to
//!   leaders, reads with their consistency, event subscriptions;
//! - [`limits`]: the token buckets and watchdogs that bound what one
//!   connection or one player can take;
//! - [`http`]: the same service over HTTP/JSON and Server-Sent Events, for
//!   clients in other languages.

pub mod http;
pub mod limits;
pub mod service;
