//! Access control: actions, permissions, role scopes, the administrative
//! operations a signed transaction can carry, and the [`Policy`] with the
//! one function that decides whether a player may do something
//! ([`Policy::check`]).
//!
//! These are formats (they are signed and replicated), so they live beside
//! the transaction, and the decision is pure, so a client can predict it.
//! The server runs it inside apply (see `garrison::access` for how the
//! policy reaches every location's log).
//!
//! A *role* is a named list of [`Permission`]s. A player holds roles through
//! *assignments*, each scoped to one location or to every location; a player
//! with no assignment holds the cluster's default role, if one is set.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::api::Rejection;
use crate::events::EventRetention;
use crate::tx::PlayerKey;

/// The pseudo-location of administrative transactions: they are ordered by
/// the meta group, not by a location. (`@` cannot occur in a location name.)
pub const ADMIN_LOCATION: &str = "@cluster";
/// Longest role name, in bytes.
pub const MAX_ROLE_NAME_BYTES: usize = 64;
/// Most permissions one role may hold.
pub const MAX_PERMISSIONS_PER_ROLE: usize = 32;
/// Longest entity-key pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 128;
/// Most roles a cluster may define.
pub const MAX_ROLES: usize = 64;
/// Most role assignments a cluster may hold (the policy is copied into every
/// location's log, so it must stay small; most players hold the default role).
pub const MAX_ASSIGNMENTS: usize = 1024;
/// Largest policy, encoded canonically: it must fit in one log entry of
/// every location (a node refuses to start with a smaller
/// `max_proposal_bytes`).
pub const MAX_POLICY_BYTES: usize = 48 * 1024;

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Reading an entity, and the `Expect*` operations.
    Read,
    /// `Put`: creating an entity or setting its fields.
    Put,
    /// `Delete`.
    Delete,
    /// `Increment`.
    Increment,
    /// Creating locations.
    CreateLocation,
    /// Removing locations.
    RemoveLocation,
    /// Defining and deleting roles, assigning them, setting the default role.
    ManageRoles,
    /// Revoking other players' session tokens.
    RevokeTokens,
    /// Reading every player's audit trail (a player may always read its own).
    Audit,
    /// Deploying plugins (reserved for the plugin manager).
    DeployPlugins,
    /// `Emit`: recording a game event whose kind matches the permission's
    /// pattern (its owner is ignored).
    Emit,
    /// Deploying and removing rules of the complex event processor.
    DeployRules,
}

impl Action {
    /// True for the actions on entities; the others are administrative.
    pub fn is_entity_action(self) -> bool {
        matches!(
            self,
            Action::Read | Action::Put | Action::Delete | Action::Increment
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Action::Read => "read",
            Action::Put => "put",
            Action::Delete => "delete",
            Action::Increment => "increment",
            Action::CreateLocation => "create_location",
            Action::RemoveLocation => "remove_location",
            Action::ManageRoles => "manage_roles",
            Action::RevokeTokens => "revoke_tokens",
            Action::Audit => "audit",
            Action::DeployPlugins => "deploy_plugins",
            Action::Emit => "emit",
            Action::DeployRules => "deploy_rules",
        };
        f.write_str(name)
    }
}

/// Whose entities a permission covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Only entities the player owns (an entity a `Put` creates is owned by
    /// its signer), and entities that do not exist.
    #[default]
    Own,
    /// Every entity.
    Any,
}

fn every_entity() -> String {
    "*".into()
}

/// One permission of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// The actions it allows.
    pub actions: Vec<Action>,
    /// The entity keys it covers: a pattern where `*` matches any run of
    /// characters (`unit/*`, `*`). Ignored for administrative actions.
    #[serde(default = "every_entity")]
    pub entities: String,
    /// Whose entities it covers. Ignored for administrative actions.
    #[serde(default)]
    pub owner: Owner,
}

/// Where a role assignment holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// In every location, and for administrative actions.
    Everywhere,
    /// In one location only.
    Location(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Everywhere => f.write_str("everywhere"),
            Scope::Location(l) => write!(f, "location {l:?}"),
        }
    }
}

/// An administrative operation: the content of a transaction for
/// [`ADMIN_LOCATION`]. Each needs a permission of its signer (see
/// [`AdminOp::action`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Creates a location (nothing happens if it exists).
    CreateLocation {
        /// Its name.
        name: String,
    },
    /// Removes a location and its state on every node.
    RemoveLocation {
        /// Its name.
        name: String,
    },
    /// Defines a role, or replaces its permissions.
    DefineRole {
        /// The role's name.
        role: String,
        /// Its permissions.
        permissions: Vec<Permission>,
    },
    /// Deletes a role; it must not be assigned or the default.
    DeleteRole {
        /// The role's name.
        role: String,
    },
    /// Gives `player` the role `role` in `scope`.
    AssignRole {
        /// The player's key.
        player: PlayerKey,
        /// The role.
        role: String,
        /// Where it holds.
        scope: Scope,
    },
    /// Takes back an assignment; it must exist.
    UnassignRole {
        /// The player's key.
        player: PlayerKey,
        /// The role.
        role: String,
        /// Where it held.
        scope: Scope,
    },
    /// Sets (or clears) the role of players without assignments.
    SetDefaultRole {
        /// The role, or `None`: players without assignments may do nothing.
        role: Option<String>,
    },
    /// Revokes every session token of `player` issued before this
    /// operation (a player may always revoke its own: "log out everywhere").
    RevokeTokens {
        /// Whose tokens.
        player: PlayerKey,
    },
    /// Deploys a rule of the complex event processor, or replaces the rule
    /// of the same name (the name is in the text). The server parses and
    /// checks the text and stores its canonical form.
    DeployRule {
        /// The rule's text.
        text: String,
    },
    /// Removes a deployed rule.
    RemoveRule {
        /// Its name.
        name: String,
    },
    /// Deploys a WebAssembly plugin, or replaces the plugin of the same
    /// name from this deploy's index on (a rollback is a deploy of the old
    /// module). The server validates the module.
    DeployPlugin {
        /// The module and its settings.
        spec: crate::plugins::PluginSpec,
    },
    /// Removes a deployed plugin.
    RemovePlugin {
        /// Its name.
        name: String,
    },
}

impl AdminOp {
    /// The permission the signer needs.
    pub fn action(&self) -> Action {
        match self {
            AdminOp::CreateLocation { .. } => Action::CreateLocation,
            AdminOp::RemoveLocation { .. } => Action::RemoveLocation,
            AdminOp::DefineRole { .. }
            | AdminOp::DeleteRole { .. }
            | AdminOp::AssignRole { .. }
            | AdminOp::UnassignRole { .. }
            | AdminOp::SetDefaultRole { .. } => Action::ManageRoles,
            AdminOp::RevokeTokens { .. } => Action::RevokeTokens,
            AdminOp::DeployRule { .. } | AdminOp::RemoveRule { .. } => Action::DeployRules,
            AdminOp::DeployPlugin { .. } | AdminOp::RemovePlugin { .. } => Action::DeployPlugins,
        }
    }

    /// Checks the static limits; the error says which one is broken.
    pub fn check_limits(&self) -> Result<(), String> {
        match self {
            AdminOp::CreateLocation { name } | AdminOp::RemoveLocation { name } => {
                check_name("location name", name, crate::tx::MAX_NAME_BYTES)
            }
            AdminOp::DefineRole { role, permissions } => {
                check_name("role name", role, MAX_ROLE_NAME_BYTES)?;
                check_permissions(permissions)
            }
            AdminOp::DeleteRole { role } => check_name("role name", role, MAX_ROLE_NAME_BYTES),
            AdminOp::AssignRole {
                player,
                role,
                scope,
            } => {
                // A role given to a key nobody can sign with could leave the
                // cluster without a usable administrator.
                crate::tx::check_public_key(player).map_err(|e| e.to_string())?;
                check_name("role name", role, MAX_ROLE_NAME_BYTES)?;
                check_scope(scope)
            }
            AdminOp::UnassignRole { role, scope, .. } => {
                check_name("role name", role, MAX_ROLE_NAME_BYTES)?;
                check_scope(scope)
            }
            AdminOp::SetDefaultRole { role } => match role {
                Some(role) => check_name("role name", role, MAX_ROLE_NAME_BYTES),
                None => Ok(()),
            },
            AdminOp::RevokeTokens { .. } => Ok(()),
            AdminOp::DeployRule { text } => {
                let max = crate::rules::MAX_RULE_TEXT_BYTES;
                match text.len() {
                    0 => Err("the rule's text is empty".into()),
                    n if n > max => {
                        Err(format!("the rule's text is {n} bytes; the limit is {max}"))
                    }
                    _ => Ok(()),
                }
            }
            AdminOp::RemoveRule { name } => {
                check_name("rule name", name, crate::rules::MAX_RULE_NAME_BYTES)
            }
            AdminOp::DeployPlugin { spec } => spec.check_limits(),
            AdminOp::RemovePlugin { name } => {
                check_name("plugin name", name, crate::plugins::MAX_PLUGIN_NAME_BYTES)
            }
        }
    }
}

/// Checks a role's permissions: their count, and each pattern's length and
/// characters (those of entity keys, plus `*`).
pub fn check_permissions(permissions: &[Permission]) -> Result<(), String> {
    if permissions.len() > MAX_PERMISSIONS_PER_ROLE {
        return Err(format!(
            "a role has at most {MAX_PERMISSIONS_PER_ROLE} permissions, not {}",
            permissions.len()
        ));
    }
    for p in permissions {
        if p.actions.is_empty() {
            return Err("a permission names at least one action".into());
        }
        let distinct: std::collections::BTreeSet<&Action> = p.actions.iter().collect();
        if distinct.len() != p.actions.len() {
            return Err("a permission names each action once".into());
        }
        let pattern = &p.entities;
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "entity pattern must be 1 to {MAX_PATTERN_BYTES} bytes"
            ));
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_./:-*".contains(*c)))
        {
            return Err(format!(
                "entity pattern {pattern:?} contains {c:?}; use letters, digits, _ . / : - and *"
            ));
        }
    }
    Ok(())
}

fn check_scope(scope: &Scope) -> Result<(), String> {
    match scope {
        Scope::Everywhere => Ok(()),
        Scope::Location(l) => {
            check_name("location name", l, crate::tx::MAX_NAME_BYTES)?;
            match l
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "_./-".contains(*c)))
            {
                Some(c) => Err(format!(
                    "location name {l:?} contains {c:?}; use letters, digits and _ . / -"
                )),
                None => Ok(()),
            }
        }
    }
}

fn check_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes"));
    }
    Ok(())
}

/// True when `key` matches `pattern`, where `*` matches any run of
/// characters (including none, and including `/`).
pub fn pattern_matches(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = key.strip_prefix(first) else {
        return false;
    };
    let Some(mut last) = parts.next() else {
        // No `*`: the whole key must equal the pattern.
        return rest.is_empty();
    };
    // Each part between two `*`s, leftmost first, as early as it occurs.
    for next in parts {
        match rest.find(last) {
            Some(at) => rest = &rest[at + last.len()..],
            None => return false,
        }
        last = next;
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The role bootstrap admins hold everywhere; the roles file must define it.
pub const ADMIN_ROLE: &str = "admin";

/// One player's read permission in one location ([`Policy::reader`]).
pub struct Reader<'a> {
    policy: &'a Policy,
    player: &'a PlayerKey,
    roles: Vec<&'a str>,
}

impl Reader<'_> {
    /// May the player read `entity` (owned by `owner`; `None`: no such
    /// entity, or not an entity's business)? The same answer as
    /// [`Policy::check`] with [`Action::Read`].
    pub fn may_read(&self, entity: Option<&str>, owner: Option<&PlayerKey>) -> bool {
        self.policy
            .decide(&self.roles, self.player, Action::Read, entity, owner)
            .is_ok()
    }
}

/// The cluster's access policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The meta log index of the change that made this policy (0: none yet).
    pub version: u64,
    /// Every role's permissions, by name.
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// Each player's assignments: (role, scope).
    pub assignments: BTreeMap<PlayerKey, BTreeSet<(String, Scope)>>,
    /// The role of players without an assignment where they act.
    pub default_role: Option<String>,
    /// How many events each location keeps (set at bootstrap).
    pub events: EventRetention,
}

impl Policy {
    /// The first policy of a cluster: `roles` (a roles file's policy) with
    /// `admins` holding [`ADMIN_ROLE`] everywhere, at meta index `version`.
    pub fn bootstrap(roles: &Policy, admins: &[PlayerKey], version: u64) -> Result<Policy, String> {
        if admins.is_empty() {
            return Err("bootstrapping needs at least one admin key".into());
        }
        if !roles.roles.contains_key(ADMIN_ROLE) {
            return Err(format!("the roles must define the role {ADMIN_ROLE:?}"));
        }
        let mut policy = Policy {
            version,
            roles: roles.roles.clone(),
            assignments: BTreeMap::new(),
            default_role: roles.default_role.clone(),
            events: roles.events,
        };
        policy.events.check()?;
        for admin in admins {
            policy
                .assignments
                .entry(*admin)
                .or_default()
                .insert((ADMIN_ROLE.to_string(), Scope::Everywhere));
        }
        policy.check_roles()?;
        if !policy.someone_manages_roles() {
            return Err(format!("the role {ADMIN_ROLE:?} must allow manage_roles"));
        }
        Ok(policy)
    }

    /// The roles `player` holds in `location` (`None`: for administrative
    /// actions, where only roles assigned everywhere count), falling back to
    /// the default role.
    pub fn roles_of(&self, player: &PlayerKey, location: Option<&str>) -> Vec<&str> {
        let held: Vec<&str> = self
            .assignments
            .get(player)
            .into_iter()
            .flatten()
            .filter(|(_, scope)| match (scope, location) {
                (Scope::Everywhere, _) => true,
                (Scope::Location(l), Some(here)) => l == here,
                (Scope::Location(_), None) => false,
            })
            .map(|(role, _)| role.as_str())
            .collect();
        if held.is_empty() {
            self.default_role.iter().map(String::as_str).collect()
        } else {
            held
        }
    }

    /// Decides whether `player` may do `action` in `location` (`None` for
    /// administrative actions), on the entity `entity` owned by `owner`
    /// (`None`: it does not exist). The rejection says what is missing.
    pub fn check(
        &self,
        player: &PlayerKey,
        location: Option<&str>,
        action: Action,
        entity: Option<&str>,
        owner: Option<&PlayerKey>,
    ) -> Result<(), Rejection> {
        let roles = self.roles_of(player, location);
        self.check_as(&roles, player, action, entity, owner)
    }

    /// Decides as [`Policy::check`] does, for a player holding exactly
    /// `roles` (a plugin holds the one role its deploy names).
    pub fn check_as(
        &self,
        roles: &[&str],
        player: &PlayerKey,
        action: Action,
        entity: Option<&str>,
        owner: Option<&PlayerKey>,
    ) -> Result<(), Rejection> {
        let only_own = match self.decide(roles, player, action, entity, owner) {
            Ok(()) => return Ok(()),
            Err(only_own) => only_own,
        };
        let held = if roles.is_empty() {
            "none".to_string()
        } else {
            roles.join(", ")
        };
        let reason = match (only_own, entity) {
            (true, Some(e)) => format!(
                "{e:?} belongs to another player, and the player's roles here ({held}) allow {action} only on its own entities"
            ),
            (_, Some(e)) => {
                format!("no role the player holds here ({held}) allows {action} on {e:?}")
            }
            (_, None) => format!("no role the player holds ({held}) allows {action}"),
        };
        Err(Rejection::Denied {
            action,
            entity: entity.map(str::to_string),
            reason,
        })
    }

    /// [`Policy::check`] without its reason: `Err(true)` when a role
    /// allowed `action` only on the player's own entities.
    fn decide(
        &self,
        roles: &[&str],
        player: &PlayerKey,
        action: Action,
        entity: Option<&str>,
        owner: Option<&PlayerKey>,
    ) -> Result<(), bool> {
        let mut only_own = false;
        for role in roles {
            for p in self.roles.get(*role).into_iter().flatten() {
                if !p.actions.contains(&action) {
                    continue;
                }
                if !action.is_entity_action() && action != Action::Emit {
                    return Ok(());
                }
                let key = entity.unwrap_or_default();
                if !pattern_matches(&p.entities, key) {
                    continue;
                }
                if action == Action::Emit {
                    return Ok(());
                }
                match (p.owner, owner) {
                    (Owner::Any, _) | (Owner::Own, None) => return Ok(()),
                    (Owner::Own, Some(o)) if o == player => return Ok(()),
                    (Owner::Own, Some(_)) => only_own = true,
                }
            }
        }
        Err(only_own)
    }

    /// What `player` may read in `location`, decided as [`Policy::check`]
    /// decides `Read` but with the player's roles looked up once: for
    /// readers that ask about many entities in a row (an event read).
    pub fn reader<'a>(&'a self, player: &'a PlayerKey, location: &str) -> Reader<'a> {
        Reader {
            policy: self,
            player,
            roles: self.roles_of(player, Some(location)),
        }
    }

    /// Decides whether `signer` may carry out the administrative operation
    /// `op`: it needs the operation's action among its roles held
    /// everywhere, except that anyone may revoke its own tokens ("log out
    /// everywhere").
    pub fn check_admin(&self, signer: &PlayerKey, op: &AdminOp) -> Result<(), Rejection> {
        match op {
            AdminOp::RevokeTokens { player } if player == signer => Ok(()),
            op => self.check(signer, None, op.action(), None, None),
        }
    }

    /// Carries out an administrative operation on the policy (location
    /// operations are the directory's). On error the policy is unchanged.
    pub fn apply_admin(&mut self, op: &AdminOp) -> Result<(), Rejection> {
        let refuse = |why: String| Err(Rejection::AdminRefused(why));
        let mut next = self.clone();
        match op {
            AdminOp::CreateLocation { .. }
            | AdminOp::RemoveLocation { .. }
            | AdminOp::RevokeTokens { .. }
            | AdminOp::DeployRule { .. }
            | AdminOp::RemoveRule { .. }
            | AdminOp::DeployPlugin { .. }
            | AdminOp::RemovePlugin { .. } => return Ok(()),
            AdminOp::DefineRole { role, permissions } => {
                next.roles.insert(role.clone(), permissions.clone());
            }
            AdminOp::DeleteRole { role } => {
                if next.roles.remove(role).is_none() {
                    return refuse(format!("role {role:?} does not exist"));
                }
                if next.default_role.as_ref() == Some(role) {
                    return refuse(format!(
                        "role {role:?} is the default role; set another first"
                    ));
                }
                if next.assignments.values().flatten().any(|(r, _)| r == role) {
                    return refuse(format!(
                        "role {role:?} is still assigned; unassign it first"
                    ));
                }
            }
            AdminOp::AssignRole {
                player,
                role,
                scope,
            } => {
                if !next.roles.contains_key(role) {
                    return refuse(format!("role {role:?} does not exist"));
                }
                next.assignments
                    .entry(*player)
                    .or_default()
                    .insert((role.clone(), scope.clone()));
            }
            AdminOp::UnassignRole {
                player,
                role,
                scope,
            } => {
                let held = next.assignments.entry(*player).or_default();
                if !held.remove(&(role.clone(), scope.clone())) {
                    return refuse(format!(
                        "player {} does not hold role {role:?} {scope}",
                        hex::encode(player)
                    ));
                }
                if held.is_empty() {
                    next.assignments.remove(player);
                }
            }
            AdminOp::SetDefaultRole { role } => {
                if let Some(r) = role {
                    if !next.roles.contains_key(r) {
                        return refuse(format!("role {r:?} does not exist"));
                    }
                }
                next.default_role = role.clone();
            }
        }
        next.check_roles().map_err(Rejection::AdminRefused)?;
        if !next.someone_manages_roles() {
            return refuse(
                "the change would leave no player able to manage roles; assign manage_roles to someone first".into(),
            );
        }
        *self = next;
        Ok(())
    }

    /// Checks the limits on roles and assignments.
    pub fn check_roles(&self) -> Result<(), String> {
        if self.roles.len() > MAX_ROLES {
            return Err(format!("a cluster has at most {MAX_ROLES} roles"));
        }
        for (name, permissions) in &self.roles {
            if name.is_empty() || name.len() > MAX_ROLE_NAME_BYTES {
                return Err(format!(
                    "role name must be 1 to {MAX_ROLE_NAME_BYTES} bytes"
                ));
            }
            check_permissions(permissions).map_err(|e| format!("role {name:?}: {e}"))?;
        }
        let bytes = crate::tx::canonical_encode(self).len();
        if bytes > MAX_POLICY_BYTES {
            return Err(format!(
                "the policy would take {bytes} bytes; the limit is {MAX_POLICY_BYTES}"
            ));
        }
        let assigned: usize = self.assignments.values().map(BTreeSet::len).sum();
        if assigned > MAX_ASSIGNMENTS {
            return Err(format!(
                "a cluster holds at most {MAX_ASSIGNMENTS} role assignments"
            ));
        }
        if let Some(d) = &self.default_role {
            if !self.roles.contains_key(d) {
                return Err(format!("the default role {d:?} is not defined"));
            }
        }
        Ok(())
    }

    /// True when some player (or every player, through the default role)
    /// may still manage roles: no change may lock the administrators out.
    fn someone_manages_roles(&self) -> bool {
        let manages = |role: &str| {
            self.roles
                .get(role)
                .into_iter()
                .flatten()
                .any(|p| p.actions.contains(&Action::ManageRoles))
        };
        self.default_role.as_deref().is_some_and(manages)
            || self
                .assignments
                .values()
                .flatten()
                .any(|(role, scope)| *scope == Scope::Everywhere && manages(role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_globs() {
        let cases = [
            ("*", "unit/1", true),
            ("*", "", true),
            ("unit/*", "unit/17", true),
            ("unit/*", "unit/", true),
            ("unit/*", "units/1", false),
            ("unit/*", "base/unit/1", false),
            ("unit/1", "unit/1", true),
            ("unit/1", "unit/10", false),
            ("*/flag", "base/3/flag", true),
            ("*/flag", "base/3/flags", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("a*", "a", true),
            ("*a*", "bab", true),
            ("*a*", "bbb", false),
            ("a**b", "ab", true),
            ("**", "", true),
            ("a*b*b", "abb", true),
            ("a*b*b", "ab", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                pattern_matches(pattern, key),
                expected,
                "{pattern} vs {key}"
            );
        }
    }

    #[test]
    fn a_reader_decides_reads_as_check_does() {
        let permission = |entities: &str, owner| Permission {
            actions: vec![Action::Read],
            entities: entities.into(),
            owner,
        };
        let mut policy = Policy::default();
        policy
            .roles
            .insert("player".into(), vec![permission("*", Owner::Any)]);
        policy.roles.insert(
            "scout".into(),
            vec![
                permission("unit/*", Owner::Own),
                permission("flag/*", Owner::Any),
            ],
        );
        policy.roles.insert("blind".into(), vec![]);
        policy.default_role = Some("player".into());
        let (p1, p2, p3) = ([1; 32], [2; 32], [3; 32]);
        let assign = |policy: &mut Policy, player, role: &str, scope| {
            policy
                .assignments
                .entry(player)
                .or_default()
                .insert((role.to_string(), scope));
        };
        assign(&mut policy, p1, "scout", Scope::Location("north".into()));
        assign(&mut policy, p2, "blind", Scope::Everywhere);
        let mut allowed = 0;
        for player in [p1, p2, p3] {
            for location in ["north", "south"] {
                let reader = policy.reader(&player, location);
                for entity in [None, Some("unit/1"), Some("flag/2"), Some("base/1")] {
                    for owner in [None, Some(&p1), Some(&p2)] {
                        let checked = policy
                            .check(&player, Some(location), Action::Read, entity, owner)
                            .is_ok();
                        assert_eq!(
                            reader.may_read(entity, owner),
                            checked,
                            "{player:?} in {location} reading {entity:?} of {owner:?}"
                        );
                        allowed += usize::from(checked);
                    }
                }
            }
        }
        // Both answers occur, so the comparison says something.
        assert!(allowed > 0 && allowed < 3 * 2 * 4 * 3, "{allowed}");
    }

    #[test]
    fn a_policy_too_large_for_one_log_entry_is_refused() {
        let mut policy = Policy::default();
        policy.roles.insert("r".into(), vec![]);
        let manager = Permission {
            actions: vec![Action::ManageRoles],
            entities: "*".into(),
            owner: Owner::Own,
        };
        policy.roles.insert("boss".into(), vec![manager]);
        policy.default_role = Some("boss".into());
        let long = "l".repeat(120);
        let mut refused = None;
        for i in 0..MAX_ASSIGNMENTS as u32 {
            let mut player = [0; 32];
            player[..4].copy_from_slice(&i.to_le_bytes());
            let op = AdminOp::AssignRole {
                player,
                role: "r".into(),
                scope: Scope::Location(format!("{long}{i}")),
            };
            if let Err(e) = policy.apply_admin(&op) {
                refused = Some((i, e));
                break;
            }
        }
        let (at, why) = refused.expect("refused before the assignment limit");
        assert!(why.to_string().contains("bytes; the limit is"), "{why}");
        assert!(crate::tx::canonical_encode(&policy).len() <= MAX_POLICY_BYTES);
        assert!(at > 100, "refused already at {at}");
    }

    #[test]
    fn limits_are_named_in_errors() {
        let too_many = vec![
            Permission {
                actions: vec![Action::Read],
                entities: "*".into(),
                owner: Owner::Any,
            };
            MAX_PERMISSIONS_PER_ROLE + 1
        ];
        let cases = [
            (
                AdminOp::DefineRole {
                    role: "r".into(),
                    permissions: too_many,
                },
                "at most",
            ),
            (
                AdminOp::DefineRole {
                    role: "r".into(),
                    permissions: vec![Permission {
                        actions: vec![Action::Read],
                        entities: "unit 1".into(),
                        owner: Owner::Own,
                    }],
                },
                "contains ' '",
            ),
            (
                AdminOp::DefineRole {
                    role: "r".into(),
                    permissions: vec![Permission {
                        actions: vec![],
                        entities: "*".into(),
                        owner: Owner::Own,
                    }],
                },
                "at least one action",
            ),
            (AdminOp::DeleteRole { role: "".into() }, "role name"),
            (
                AdminOp::AssignRole {
                    // The identity point: a weak key nobody can use.
                    player: {
                        let mut k = [0; 32];
                        k[0] = 1;
                        k
                    },
                    role: "admin".into(),
                    scope: Scope::Everywhere,
                },
                "weak",
            ),
            (
                AdminOp::UnassignRole {
                    player: [9; 32],
                    role: "admin".into(),
                    scope: Scope::Location("no place".into()),
                },
                "contains ' '",
            ),
            (
                AdminOp::DefineRole {
                    role: "r".into(),
                    permissions: vec![Permission {
                        actions: vec![Action::Read, Action::Read],
                        entities: "*".into(),
                        owner: Owner::Any,
                    }],
                },
                "each action once",
            ),
            (
                AdminOp::CreateLocation {
                    name: "x".repeat(200),
                },
                "location name",
            ),
        ];
        for (op, expected) in cases {
            let err = op.check_limits().unwrap_err();
            assert!(err.contains(expected), "{op:?}: {err}");
        }
    }
}
