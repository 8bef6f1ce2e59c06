//! The binary's log: what goes to standard error, and what is left out.
//!
//! `GARRISON_LOG` (an `EnvFilter` directive, like `RUST_LOG`) chooses the
//! levels; the log then holds everything it asks for. Without it the
//! default is `warn,garrison=info,openraft=error`, less one kind of line:
//! openraft's report, from every group, of every message that could not
//! reach a peer ("Unreachable node: ..."). When a node is down each of its
//! peers' groups reports each retry, which buries everything else (with
//! 10,000 locations, thousands of lines a second). The node's peer pool
//! says it once instead, when the peer becomes unreachable and when it is
//! back (`raft/src/network/client.rs`). Commands other than `node` and
//! `dev` also leave out tarpc's warnings ([`COMMAND_FILTER`]): they say
//! themselves what failed.

use std::fmt::Debug;

use tracing::field::Field;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The filter used when `GARRISON_LOG` is not set.
pub const DEFAULT_FILTER: &str = "warn,garrison=info,openraft=error";

/// The same for the commands that only talk to a cluster (`status`, `tx`,
/// ...): tarpc's warnings about each broken connection are left out too,
/// since the command reports what failed itself.
pub const COMMAND_FILTER: &str = "warn,garrison=info,openraft=error,tarpc=error";

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "GARRISON_LOG";

/// Sends the log to standard error, filtered as the module docs say; a
/// `node` (or `dev`, whose nodes are children) logs with
/// [`DEFAULT_FILTER`], any other command with [`COMMAND_FILTER`].
pub fn init(node: bool) {
    let explicit = EnvFilter::try_from_env(LOG_ENV).ok();
    let quiet = explicit.is_none().then_some(QuietUnreachablePeers);
    let default = if node { DEFAULT_FILTER } else { COMMAND_FILTER };
    tracing_subscriber::registry()
        .with(explicit.unwrap_or_else(|| EnvFilter::new(default)))
        .with(quiet)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only for a terminal, not in a node's log file.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

/// Drops openraft's events about a peer it could not reach (see the
/// module docs); every other event passes.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuietUnreachablePeers;

impl<S: Subscriber> Layer<S> for QuietUnreachablePeers {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        !is_unreachable_peer_report(event)
    }
}

/// openraft's `Unreachable` error displays as "Unreachable node: ...";
/// it is logged as a field (`err`, `error`) of events from openraft's
/// modules.
fn is_unreachable_peer_report(event: &Event<'_>) -> bool {
    if !event.metadata().target().starts_with("openraft") {
        return false;
    }
    let mut unreachable = false;
    event.record(&mut |_: &Field, value: &dyn Debug| {
        unreachable = unreachable || format!("{value:?}").starts_with("Unreachable node");
    });
    unreachable
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(quiet: bool, emit: impl FnOnce()) -> String {
        logged_with(DEFAULT_FILTER, quiet, emit)
    }

    fn logged_with(filter: &str, quiet: bool, emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(filter))
            .with(quiet.then_some(QuietUnreachablePeers))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// The events openraft 0.9 logs when a peer is down, shaped as it
    /// logs them (`replication` and `core::raft_core`), and three that
    /// must stay.
    fn emit_all() {
        let unreachable = "Unreachable node: peer node 2 unreachable: connecting to 127.0.0.1:7502: Connection refused (os error 111)";
        tracing::error!(target: "openraft::replication", err = %unreachable, "RPCError");
        tracing::error!(
            target: "openraft::core::raft_core",
            error = %unreachable,
            target = 2,
            "while requesting vote"
        );
        tracing::error!(target: "openraft::storage", err = %"disk full", "StorageError");
        tracing::error!(target: "garrison::server", err = %unreachable, "own report");
        tracing::warn!(target: "openraft::replication", err = %unreachable, "below the filter");
    }

    #[test]
    fn openraft_reports_of_unreachable_peers_are_left_out_and_nothing_else() {
        let quiet = logged(true, emit_all);
        assert!(!quiet.contains("RPCError"), "{quiet}");
        assert!(!quiet.contains("while requesting vote"), "{quiet}");
        assert!(quiet.contains("StorageError"), "{quiet}");
        assert!(quiet.contains("own report"), "{quiet}");
        assert!(!quiet.contains("below the filter"), "{quiet}");
        assert_eq!(quiet.lines().count(), 2, "{quiet}");
        // Without the layer (GARRISON_LOG set), they are all there.
        let all = logged(false, emit_all);
        assert!(all.contains("RPCError") && all.contains("while requesting vote"));
        assert_eq!(all.lines().count(), 4, "{all}");
    }

    #[test]
    fn commands_leave_out_tarpc_warnings_and_nodes_keep_them() {
        let emit = || {
            tracing::warn!(target: "tarpc::client", "Connection broken");
            tracing::warn!(target: "garrison::cli", "own warning");
        };
        let command = logged_with(COMMAND_FILTER, true, emit);
        assert!(!command.contains("Connection broken"), "{command}");
        assert!(command.contains("own warning"), "{command}");
        let node = logged_with(DEFAULT_FILTER, true, emit);
        assert!(node.contains("Connection broken") && node.contains("own warning"));
    }
}
