//! The seam between consensus and game rules: the application trait that each
//! group's state machine calls.
//!
//! This crate replicates and persists; it never interprets a payload. A group's
//! [`GroupApp`] decides what an entry means. The root crate supplies the game's
//! app for location groups through an [`AppFactory`]; the meta group's app is
//! [`crate::meta::MetaApp`].
//!
//! # The apply contract
//!
//! `apply` is called on every replica with the same entries in the same order.
//! It must be a pure function of the app's state, the entry's payload and the
//! [`ApplyContext`]: no wall clock (use `log_time_ms`), no randomness, no I/O,
//! no hash-map iteration order, no caches, no thread timing. It must not fail:
//! a command that cannot be carried out is answered with a rejection inside the
//! reply bytes, leaving the state as it was. A panic in apply is a bug and
//! stops the node rather than let replicas diverge.
//!
//! `snapshot` and `restore` are inverses: restoring a snapshot and applying the
//! entries after it gives the state a replica that applied everything has.

use std::any::Any;

use crate::meta::Directory;
use crate::typ::{GroupId, Membership, NodeId};

/// What apply may know besides the payload: all of it comes from the log.
#[derive(Debug)]
pub struct ApplyContext<'a> {
    /// The group the entry belongs to.
    pub group: GroupId,
    /// The entry's log index.
    pub index: u64,
    /// The term of the leader that proposed the entry.
    pub term: u64,
    /// The node that proposed the entry as leader.
    pub leader: NodeId,
    /// The entry's log time in milliseconds since the Unix epoch, never
    /// smaller than the previous entry's.
    pub log_time_ms: u64,
    /// The group's membership as of this entry.
    pub membership: &'a Membership,
}

/// A replicated state machine's rules. See the module docs for the contract.
pub trait GroupApp: Send + Sync + 'static {
    /// Applies one committed payload and returns the encoded reply.
    fn apply(&mut self, ctx: &ApplyContext<'_>, payload: &[u8]) -> Vec<u8>;

    /// Answers a read-only query about the current state. Like apply, it
    /// must not fail: a query it cannot answer gets an error inside the reply.
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// Encodes the whole state.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a decoded snapshot; on error the state is
    /// left as it was.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;

    /// Told, after a successful [`GroupApp::restore`], the log index the
    /// snapshot ends at, for apps that tell readers outside the group what
    /// index their state reflects (garrison's entity cache). The state
    /// must not depend on it.
    fn restored_at(&mut self, _index: u64) {}

    /// Why this node must not apply the group's next entry, if it must
    /// not: its state needs something this node lacks (garrison: a plugin
    /// engine other than the one the state records). The group then stops
    /// on this node instead of diverging from the other replicas.
    fn refusal(&self) -> Option<String> {
        None
    }

    /// Gives read access to the concrete type, for queries.
    fn as_any(&self) -> &dyn Any;
}

/// Makes the app of a new location group, and the meta group's extension.
pub trait AppFactory: Send + Sync + 'static {
    /// A fresh, empty app for the location `location` held in group `group`.
    fn create(&self, group: GroupId, location: &str) -> Box<dyn GroupApp>;

    /// A fresh, empty extension of the meta group: the application's own
    /// cluster-wide state (for garrison, the access policy). The default
    /// extension refuses every command.
    fn meta_extension(&self) -> Box<dyn MetaExtension> {
        Box::new(NoExtension)
    }
}

/// Application state kept in the meta group beside the location directory,
/// under the same apply contract as [`GroupApp`].
///
/// The extension may create and remove locations, through the
/// [`Directory`] it is handed, in the same entry as its own changes: that
/// is how a signed administrative transaction both checks its signer's
/// permission and creates a location, atomically, on every replica.
pub trait MetaExtension: Send + Sync + 'static {
    /// Applies one committed extension payload and returns the encoded reply.
    /// Changes to `directory` are kept only if the extension makes them.
    fn apply(
        &mut self,
        ctx: &ApplyContext<'_>,
        directory: &mut Directory,
        payload: &[u8],
    ) -> Vec<u8>;

    /// Answers a read-only query.
    fn query(&self, directory: &Directory, query: &[u8]) -> Vec<u8>;

    /// Encodes the whole extension state.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole extension state; on error it is left as it was.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;

    /// Gives read access to the concrete type.
    fn as_any(&self) -> &dyn Any;
}

/// The extension of a meta group whose application has none: it holds
/// nothing and answers every payload with an empty reply.
#[derive(Debug, Default)]
pub struct NoExtension;

impl MetaExtension for NoExtension {
    fn apply(&mut self, _: &ApplyContext<'_>, _: &mut Directory, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn query(&self, _: &Directory, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
