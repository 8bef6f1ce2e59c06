//! AccessControlManager: the cluster's access policy (roles, their
//! permissions, who holds them) and the one function that decides whether a
//! player may do something.
//!
//! The policy is replicated twice over, on purpose. Its source of truth is
//! the meta group (see [`crate::security::admin`]), where administrative transactions
//! change it; every change gets a new `version` (the meta log index that made
//! it). Each location's log then receives the whole policy as an entry of its
//! own ([`crate::state::location::LocationCommand::Policy`]), and location apply
//! checks every transaction against the policy as of that log index. So all
//! replicas of a location decide the same, and a revocation binds every
//! transaction ordered after it in that location's log. An administrative
//! transaction is answered only after every location has applied the new
//! policy (or the request timed out; a background task finishes the rest),
//! so a transaction submitted after a revocation's receipt is checked
//! against it.
//!
//! [`Policy::check`] is pure: the same policy and question give the same
//! answer on every replica.

use std::collections::BTreeMap;

use garrison_client::policy::Permission;
pub use garrison_client::policy::{Policy, ADMIN_ROLE};
use serde::Deserialize;

/// The default roles file, shipped with garrison (`policy/roles.toml`).
pub const DEFAULT_ROLES_TOML: &str = include_str!("../../policy/roles.toml");

/// One role in a roles file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// Its permissions.
    pub permissions: Vec<Permission>,
}

/// A roles file (`policy/roles.toml`): the roles a cluster starts with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesFile {
    /// The role of players without an assignment.
    pub default_role: Option<String>,
    /// The roles, by name.
    pub roles: BTreeMap<String, RoleSpec>,
}

impl RolesFile {
    /// Parses and checks a roles file; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RolesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let policy = file.policy();
        policy.check_roles()?;
        if !policy.roles.contains_key(ADMIN_ROLE) {
            return Err(format!(
                "the roles file must define the role {ADMIN_ROLE:?}"
            ));
        }
        Ok(file)
    }

    /// The policy this file describes, with no assignments and version 0.
    pub fn policy(&self) -> Policy {
        Policy {
            version: 0,
            roles: self
                .roles
                .iter()
                .map(|(name, spec)| (name.clone(), spec.permissions.clone()))
                .collect(),
            assignments: BTreeMap::new(),
            default_role: self.default_role.clone(),
            events: Default::default(),
        }
    }
}
