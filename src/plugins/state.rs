//! What a location keeps of its plugins, in its replicated state and so in
//! its snapshots: each plugin that runs there with its module, the index it
//! was bound at, and its record (runs, failures, suspension). Nothing here
//! runs a plugin; [`super::host`] does, and only on nodes built with the
//! `plugins` feature.

use std::collections::{BTreeMap, VecDeque};

use garrison_client::events::EventId;
use garrison_client::plugins::{
    DeployedPlugin, LocationPlugins, PluginFailure, PluginRecord, PluginSet, PluginStatus,
};
use garrison_client::Op;
use serde::{Deserialize, Serialize};

/// One plugin at work in one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRun {
    /// The deploy: version and spec (with the module).
    pub deployed: DeployedPlugin,
    /// The log index of the entry that bound this version here: it sees
    /// the events of later entries only.
    pub bound_at: u64,
    /// What it did here.
    pub record: PluginRecord,
}

/// A plugin's transaction for another location, as the source's outbox
/// holds it and the target's log receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The location whose plugin proposed it.
    pub source: String,
    /// Its place in the source's outbox: with `source`, the idempotency
    /// key (a target takes each source's keys in increasing order, once).
    pub seq: u64,
    /// The plugin.
    pub plugin: String,
    /// Its version.
    pub version: u64,
    /// The role its deploy names: the target checks the operations
    /// against it, under the plugin's identity.
    pub role: String,
    /// The event in the source its call was for.
    pub cause: EventId,
    /// The operations.
    pub ops: Vec<Op>,
}

/// One entry of a location's outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The location it is for.
    pub target: String,
    /// What the target's log receives.
    pub delivery: Delivery,
}

/// How a target took a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReply {
    /// It had taken this key before: nothing happened now.
    pub duplicate: bool,
    /// Why the operations were refused, if they were.
    pub refused: Option<PluginFailure>,
}

/// Most items a location's outbox holds; a call that would pass it fails.
pub const MAX_OUTBOX_ITEMS: usize = 1_024;

/// The plugins of one location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginState {
    /// The version of the plugin set taken last (0: none).
    pub version: u64,
    /// The engine fingerprint the set names.
    pub engine: String,
    /// The plugins that run here, by name.
    pub plugins: BTreeMap<String, PluginRun>,
    /// Transactions plugins here proposed for other locations, oldest
    /// first, until their target took them.
    pub outbox: VecDeque<OutboxItem>,
    /// The next outbox key.
    pub next_seq: u64,
    /// Per source location, the last outbox key taken here.
    pub taken: BTreeMap<String, u64>,
}

impl PluginState {
    /// Takes `set` if it is newer, keeping only the plugins that run in
    /// `location`, bound at `index`. A plugin whose version did not change
    /// keeps its record; a new version starts afresh. Returns the version
    /// after.
    pub fn take(&mut self, set: &PluginSet, location: &str, index: u64) -> u64 {
        if set.version <= self.version {
            return self.version;
        }
        let mut old = std::mem::take(&mut self.plugins);
        for (name, deployed) in &set.plugins {
            if !deployed.spec.runs_in(location) {
                continue;
            }
            let run = match old.remove(name) {
                Some(run) if run.deployed.version == deployed.version => run,
                _ => PluginRun {
                    deployed: deployed.clone(),
                    bound_at: index,
                    record: PluginRecord::default(),
                },
            };
            self.plugins.insert(name.clone(), run);
        }
        self.version = set.version;
        self.engine = set.engine.clone();
        self.version
    }

    /// The outbox's oldest item has been taken by its target (`seq`):
    /// drops it, and counts a refusal in its plugin's record.
    pub fn delivered(&mut self, seq: u64, refused: Option<PluginFailure>) -> bool {
        let Some(front) = self.outbox.front() else {
            return false;
        };
        if front.delivery.seq != seq {
            return false;
        }
        let item = self.outbox.pop_front().expect("a front item");
        if let (Some(failure), Some(run)) = (refused, self.plugins.get_mut(&item.delivery.plugin)) {
            run.record.failures += 1;
            run.record.last_failure = Some((item.delivery.cause, failure));
        }
        true
    }

    /// Takes `delivery` into this location's bookkeeping: false if its key
    /// was taken before (a duplicate).
    pub fn take_delivery(&mut self, delivery: &Delivery) -> bool {
        let last = self.taken.entry(delivery.source.clone()).or_insert(0);
        if delivery.seq <= *last {
            return false;
        }
        *last = delivery.seq;
        true
    }

    /// Does any plugin still run here?
    pub fn active(&self) -> bool {
        self.plugins
            .values()
            .any(|p| p.record.suspended_at.is_none())
    }

    /// Why a node whose engine has fingerprint `engine` (`None`: it was
    /// built without plugins) must not apply this location's entries.
    pub fn refusal(&self, engine: Option<&str>) -> Option<String> {
        if !self.active() {
            return None;
        }
        match engine {
            Some(mine) if mine == self.engine => None,
            Some(mine) => Some(format!(
                "the location runs plugins validated by engine \"{}\"; this node's is \"{mine}\"",
                self.engine
            )),
            None => Some(
                "the location runs plugins; this node was built without the plugins feature".into(),
            ),
        }
    }

    /// The record as the API reports it (its `index` left 0).
    pub fn status(&self) -> LocationPlugins {
        LocationPlugins {
            index: 0,
            version: self.version,
            engine: self.engine.clone(),
            plugins: self
                .plugins
                .iter()
                .map(|(name, p)| PluginStatus {
                    name: name.clone(),
                    version: p.deployed.version,
                    hash: p.deployed.spec.hash,
                    record: p.record.clone(),
                })
                .collect(),
            outbox: self.outbox.len() as u64,
        }
    }
}
