//! What a location keeps of its plugins, in its replicated state and so in
//! its snapshots: each plugin that runs there with its module, the index it
//! was bound at, and its record (runs, failures, suspension). Nothing here
//! runs a plugin; [`super::host`] does, and only on nodes built with the
//! `plugins` feature.

use std::collections::BTreeMap;

use garrison_client::plugins::{
    DeployedPlugin, LocationPlugins, PluginRecord, PluginSet, PluginStatus,
};
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

/// The plugins of one location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginState {
    /// The version of the plugin set taken last (0: none).
    pub version: u64,
    /// The engine fingerprint the set names.
    pub engine: String,
    /// The plugins that run here, by name.
    pub plugins: BTreeMap<String, PluginRun>,
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
        }
    }
}
