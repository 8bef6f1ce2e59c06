//! The meta group's extension: the access policy's source of truth, and the
//! administrative transactions that change it or the location directory.
//!
//! An administrative transaction is an ordinary signed transaction for the
//! pseudo-location [`ADMIN_LOCATION`], holding only [`AdminOp`]s. It goes
//! through the same ingress checks as any other and is ordered by the meta
//! group; apply checks the sequence number (replay protection and
//! exactly-once, per player, like a location), then each operation's
//! permission against the policy as the transaction's earlier operations
//! left it, and carries out all of them or none.
//!
//! The cluster is bootstrapped once, by the first node that sees an
//! unbootstrapped meta group and has `admin_keys` configured: the roles file
//! and the admin keys go into the log as [`AdminCommand::Bootstrap`], so
//! every replica starts from the same policy. Later bootstraps are refused.

use std::any::Any;
use std::collections::BTreeMap;

use garrison_client::api::{Event, EventKind, Outcome, Rejection, TxReceipt};
use garrison_client::plugins::{DeployedPlugin, PluginSet, MAX_PLUGINS, MAX_PLUGIN_SET_BYTES};
use garrison_client::policy::{Action, AdminOp, Scope, ADMIN_LOCATION};
use garrison_client::rules::{DeployedRule, RuleSet, MAX_RULES, MAX_RULE_SET_BYTES};
use garrison_client::token::MAX_TOKEN_TTL_MS;
use garrison_client::tx::{Op, PlayerKey, SignedTransaction, Transaction};
use garrison_raft::meta::Directory;
use garrison_raft::{codec, ApplyContext, MetaExtension};
use serde::{Deserialize, Serialize};

use crate::security::access::Policy;
use crate::security::audit::AuditLog;
use crate::security::sequence::{self, Admission, Players};
use crate::state::location::decode_image;

/// Version of [`AdminImage`].
pub const ADMIN_FORMAT_VERSION: u16 = 4;

/// What the meta group's extension entries carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Starts the cluster's policy: `roles` (from the roles file) with
    /// `admins` holding the admin role everywhere. Proposed by a node.
    Bootstrap {
        /// The admin public keys of the bootstrapping node's configuration.
        admins: Vec<PlayerKey>,
        /// The roles and default role (assignments and version are ignored).
        roles: Policy,
        /// How many replicas a location created by an admin transaction gets.
        replication_factor: u32,
    },
    /// A signed administrative transaction that passed ingress checks
    /// (one that deploys a plugin is refused here: it comes as
    /// [`AdminCommand::SubmitValidated`]).
    Submit(SignedTransaction),
    /// A signed administrative transaction whose plugin modules the
    /// proposing node validated with the engine of fingerprint `engine`,
    /// which the plugin set records.
    SubmitValidated {
        /// The transaction.
        signed: SignedTransaction,
        /// The validating engine's fingerprint.
        engine: String,
    },
    /// Advances the session clock (tokens expire on it) by the time the
    /// proposing leader measured, on its monotonic clock, since it saw the
    /// last tick applied; proposed about once a second.
    Tick {
        /// Milliseconds elapsed; at most [`MAX_TICK_MS`] count.
        elapsed_ms: u64,
    },
}

/// The most one tick may advance the session clock: a leader that was
/// paused or whose clock misbehaves cannot make tokens expire early by more.
pub const MAX_TICK_MS: u64 = 10_000;

/// The extension's answer to an [`AdminCommand`]. (Encoded at once and
/// rare, so the size difference between variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    /// The cluster's first policy, at this version.
    Bootstrapped(u64),
    /// The outcome of an administrative transaction.
    Submitted {
        /// The receipt.
        receipt: TxReceipt,
        /// The new policy, if the transaction changed it.
        policy: Option<Policy>,
        /// The new rule set, if the transaction changed it.
        rules: Option<RuleSet>,
        /// The new plugin set, if the transaction changed it.
        plugins: Option<PluginSet>,
        /// The locations it created.
        created: Vec<String>,
    },
    /// The command was refused and changed nothing; the text says why.
    Refused(String),
    /// The session clock after a tick, in ms.
    Ticked(u64),
}

/// A revocation of a player's session tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The meta index of the revoking transaction: tokens issued at a lower
    /// index are refused.
    pub index: u64,
    /// The session clock then; the record is dropped, at the next
    /// revocation, once every token it could refuse has expired anyway.
    pub at_ms: u64,
}

/// Most players whose tokens can be revoked at once (within
/// [`MAX_TOKEN_TTL_MS`] of each other).
pub const MAX_REVOCATIONS: usize = 65_536;
/// Of [`MAX_REVOCATIONS`], how many only holders of `revoke_tokens` may
/// fill: players revoking their own tokens cannot lock them out.
pub const RESERVED_REVOCATIONS: usize = 4_096;

/// Reads of the extension's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminQuery {
    /// The current policy; the reply is [`Policy`] (version 0: not bootstrapped).
    Policy,
    /// The deployed rules; the reply is [`RuleSet`].
    Rules,
    /// A player's next administrative sequence number; the reply is `u64`.
    NextSequence(PlayerKey),
    /// Audit trail of administrative transactions; the reply is as the
    /// location's `Audit` query's.
    Audit {
        /// Who asks: anyone may read its own entries; others' need the
        /// audit permission everywhere.
        reader: PlayerKey,
        /// Only this player's, if given.
        player: Option<PlayerKey>,
        /// Entries at or after this meta index.
        from_index: u64,
        /// How many at most.
        max: u32,
    },
    /// The latest revocation of a player's tokens; the reply is `Option<Revocation>`.
    Revoked(PlayerKey),
    /// The deployed plugins; the reply is [`PluginSet`].
    Plugins,
}

/// The extension's whole state, as meta snapshots store it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminImage {
    /// [`ADMIN_FORMAT_VERSION`].
    pub format_version: u16,
    /// The access policy (version 0 until bootstrapped).
    pub policy: Policy,
    /// The rules of the complex event processor.
    pub rules: RuleSet,
    /// The WebAssembly plugins.
    pub plugins: PluginSet,
    /// Replicas of a location created by an admin transaction.
    pub replication_factor: u32,
    /// Every player that has submitted an administrative transaction.
    pub players: Players,
    /// The administrative transactions carried out.
    pub audit: AuditLog,
    /// The latest revocation of each player's tokens, for
    /// [`MAX_TOKEN_TTL_MS`] of session time after it.
    pub revoked: BTreeMap<PlayerKey, Revocation>,
    /// The session clock, in ms: tokens are issued and expire on it. It
    /// advances only by ticks, by the time meta leaders measured passing.
    pub session_clock_ms: u64,
}

/// The garrison [`MetaExtension`].
#[derive(Debug)]
pub struct AdminApp {
    state: AdminImage,
}

impl Default for AdminApp {
    fn default() -> Self {
        Self {
            state: AdminImage {
                format_version: ADMIN_FORMAT_VERSION,
                ..Default::default()
            },
        }
    }
}

impl AdminApp {
    /// The current policy (version 0: not bootstrapped).
    pub fn policy(&self) -> &Policy {
        &self.state.policy
    }

    /// The deployed rules.
    pub fn rules(&self) -> &RuleSet {
        &self.state.rules
    }

    /// The deployed plugins.
    pub fn plugins(&self) -> &PluginSet {
        &self.state.plugins
    }

    /// The latest revocation of `player`'s tokens, if still relevant.
    pub fn revoked(&self, player: &PlayerKey) -> Option<Revocation> {
        self.state.revoked.get(player).copied()
    }

    /// The session clock, in ms (0 before the first tick).
    pub fn session_clock_ms(&self) -> u64 {
        self.state.session_clock_ms
    }

    /// The player's next administrative sequence number.
    pub fn next_sequence(&self, player: &PlayerKey) -> u64 {
        sequence::next_sequence(&self.state.players, player)
    }

    fn bootstrap(
        &mut self,
        ctx: &ApplyContext<'_>,
        admins: &[PlayerKey],
        roles: &Policy,
        replication_factor: u32,
    ) -> AdminReply {
        if self.state.policy.version != 0 {
            return AdminReply::Refused(format!(
                "the cluster was bootstrapped at meta index {}",
                self.state.policy.version
            ));
        }
        if replication_factor == 0 {
            return AdminReply::Refused("replication_factor must be positive".into());
        }
        match Policy::bootstrap(roles, admins, ctx.index) {
            Ok(policy) => {
                self.state.policy = policy;
                self.state.replication_factor = replication_factor;
                AdminReply::Bootstrapped(ctx.index)
            }
            Err(why) => AdminReply::Refused(why),
        }
    }

    fn submit(
        &mut self,
        ctx: &ApplyContext<'_>,
        directory: &mut Directory,
        signed: &SignedTransaction,
        engine: Option<&str>,
    ) -> AdminReply {
        let done = |receipt| AdminReply::Submitted {
            receipt,
            policy: None,
            rules: None,
            plugins: None,
            created: Vec::new(),
        };
        let fresh = match sequence::admit(&self.state.players, ADMIN_LOCATION, ctx.index, signed) {
            Admission::Done(receipt) => return done(receipt),
            Admission::Fresh(fresh) => fresh,
        };
        let (outcome, changes) = if self.state.policy.version == 0 {
            let reason = Rejection::PolicyPending;
            (Outcome::Rejected { op: None, reason }, None)
        } else {
            match self.carry_out(ctx, directory, &fresh.tx, engine) {
                Ok(c) => {
                    self.state.revoked = c.revoked;
                    (
                        Outcome::Committed {
                            events: c.events,
                            emitted: Vec::new(),
                        },
                        Some((c.policy, c.rules, c.plugins, c.directory, c.created)),
                    )
                }
                Err((op, reason)) => (
                    Outcome::Rejected {
                        op: Some(op),
                        reason,
                    },
                    None,
                ),
            }
        };
        let receipt = fresh.decide(
            &mut self.state.players,
            &mut self.state.audit,
            ctx.log_time_ms,
            signed,
            outcome,
        );
        let Some((mut policy, mut rules, mut plugins, dir, created)) = changes else {
            return done(receipt);
        };
        *directory = dir;
        let changed = policy != self.state.policy;
        if changed {
            policy.version = ctx.index;
            self.state.policy = policy.clone();
        }
        let rules_changed = rules != self.state.rules;
        if rules_changed {
            rules.version = ctx.index;
            self.state.rules = rules.clone();
        }
        let plugins_changed = plugins != self.state.plugins;
        if plugins_changed {
            plugins.version = ctx.index;
            self.state.plugins = plugins.clone();
        }
        AdminReply::Submitted {
            receipt,
            policy: changed.then_some(policy),
            rules: rules_changed.then_some(rules),
            plugins: plugins_changed.then_some(plugins),
            created,
        }
    }

    /// Runs `tx`'s operations on copies of the policy and the directory; on
    /// error, the failing operation's position and why.
    #[allow(clippy::result_large_err)] // built once per refused transaction
    fn carry_out(
        &self,
        ctx: &ApplyContext<'_>,
        directory: &Directory,
        tx: &Transaction,
        engine: Option<&str>,
    ) -> Result<Carried, (u32, Rejection)> {
        let mut policy = self.state.policy.clone();
        let mut rules = self.state.rules.clone();
        let mut plugins = self.state.plugins.clone();
        let mut dir = directory.clone();
        let mut revoked = self.state.revoked.clone();
        let mut events = Vec::new();
        let mut created = Vec::new();
        for (i, op) in tx.ops.iter().enumerate() {
            let at = |reason| (i as u32, reason);
            let Op::Admin(op) = op else {
                let why = "an entity operation in an administrative transaction";
                return Err(at(Rejection::Malformed(why.into())));
            };
            policy.check_admin(&tx.player, op).map_err(at)?;
            let event = |entity: String, kind| Event {
                location: ADMIN_LOCATION.to_string(),
                index: ctx.index,
                entity,
                kind,
            };
            match op {
                AdminOp::CreateLocation { name } => {
                    let factor = self.state.replication_factor;
                    let (_, new) = dir
                        .create_location(ctx, name, &[], factor)
                        .map_err(|why| at(Rejection::AdminRefused(why)))?;
                    if new {
                        events.push(event(format!("location/{name}"), EventKind::Created));
                        created.push(name.clone());
                    }
                }
                AdminOp::RemoveLocation { name } => {
                    dir.remove_location(name)
                        .map_err(|why| at(Rejection::AdminRefused(why)))?;
                    // Roles held there go with it: a new location of the
                    // same name starts without them.
                    let gone = Scope::Location(name.clone());
                    for held in policy.assignments.values_mut() {
                        held.retain(|(_, scope)| *scope != gone);
                    }
                    policy.assignments.retain(|_, held| !held.is_empty());
                    events.push(event(format!("location/{name}"), EventKind::Deleted));
                }
                AdminOp::RevokeTokens { player } => {
                    let now = self.state.session_clock_ms;
                    revoked.retain(|_, r| r.at_ms.saturating_add(MAX_TOKEN_TTL_MS) >= now);
                    revoked.insert(
                        *player,
                        Revocation {
                            index: ctx.index,
                            at_ms: now,
                        },
                    );
                    let privileged = policy
                        .check(&tx.player, None, Action::RevokeTokens, None, None)
                        .is_ok();
                    let room = match privileged {
                        true => MAX_REVOCATIONS,
                        false => MAX_REVOCATIONS - RESERVED_REVOCATIONS,
                    };
                    if revoked.len() > room {
                        let why = format!(
                            "more than {room} revocations within a token lifetime; ask an admin"
                        );
                        return Err(at(Rejection::AdminRefused(why)));
                    }
                    let entity = format!("tokens/{}", hex::encode(player));
                    events.push(event(entity, EventKind::Deleted));
                }
                AdminOp::DeployRule { text } => {
                    let (name, rule) = deployable(text, ctx.index, &rules).map_err(at)?;
                    let kind = match rules.rules.insert(name.clone(), rule) {
                        Some(_) => EventKind::Changed,
                        None => EventKind::Created,
                    };
                    events.push(event(format!("rule/{name}"), kind));
                }
                AdminOp::RemoveRule { name } => {
                    if rules.rules.remove(name).is_none() {
                        let why = format!("no rule {name:?} is deployed");
                        return Err(at(Rejection::AdminRefused(why)));
                    }
                    events.push(event(format!("rule/{name}"), EventKind::Deleted));
                }
                AdminOp::DeployPlugin { spec } => {
                    let Some(engine) = engine else {
                        let why = "a plugin deploy must be validated by the proposing node";
                        return Err(at(Rejection::Malformed(why.into())));
                    };
                    let refuse = |why: String| at(Rejection::AdminRefused(why));
                    spec.check_limits().map_err(refuse)?;
                    if !policy.roles.contains_key(&spec.role) {
                        return Err(refuse(format!(
                            "the plugin's role {:?} is not defined",
                            spec.role
                        )));
                    }
                    let new = !plugins.plugins.contains_key(&spec.name);
                    if new && plugins.plugins.len() >= MAX_PLUGINS {
                        return Err(refuse(format!(
                            "{MAX_PLUGINS} plugins are deployed, the limit; remove one first"
                        )));
                    }
                    plugins.engine = engine.to_string();
                    let deployed = DeployedPlugin {
                        version: ctx.index,
                        spec: spec.clone(),
                    };
                    plugins.plugins.insert(spec.name.clone(), deployed);
                    let kind = if new {
                        EventKind::Created
                    } else {
                        EventKind::Changed
                    };
                    events.push(event(format!("plugin/{}", spec.name), kind));
                }
                AdminOp::RemovePlugin { name } => {
                    if plugins.plugins.remove(name).is_none() {
                        let why = format!("no plugin {name:?} is deployed");
                        return Err(at(Rejection::AdminRefused(why)));
                    }
                    events.push(event(format!("plugin/{name}"), EventKind::Deleted));
                }
                op => {
                    policy.apply_admin(op).map_err(at)?;
                    events.push(event(policy_entity(op), EventKind::Changed));
                }
            }
        }
        let bytes = codec::encode(&rules).len();
        if bytes > MAX_RULE_SET_BYTES {
            let why =
                format!("the rules would take {bytes} bytes; the limit is {MAX_RULE_SET_BYTES}");
            let last = tx.ops.len().saturating_sub(1) as u32;
            return Err((last, Rejection::AdminRefused(why)));
        }
        let bytes = codec::encode(&plugins).len();
        if bytes > MAX_PLUGIN_SET_BYTES {
            let why = format!(
                "the plugins would take {bytes} bytes; the limit is {MAX_PLUGIN_SET_BYTES}"
            );
            let last = tx.ops.len().saturating_sub(1) as u32;
            return Err((last, Rejection::AdminRefused(why)));
        }
        Ok(Carried {
            events,
            policy,
            rules,
            plugins,
            directory: dir,
            revoked,
            created,
        })
    }
}

/// What an administrative transaction's operations left, to be kept if all succeeded.
struct Carried {
    events: Vec<Event>,
    policy: Policy,
    rules: RuleSet,
    plugins: PluginSet,
    directory: Directory,
    revoked: BTreeMap<PlayerKey, Revocation>,
    created: Vec<String>,
}

/// Parses and checks a rule to deploy at meta index `index` into `rules`:
/// its name and the rule as stored (canonical text), or why not.
fn deployable(
    text: &str,
    index: u64,
    rules: &RuleSet,
) -> Result<(String, DeployedRule), Rejection> {
    let rule = crate::cep::lang::parse(text)
        .map_err(|e| Rejection::AdminRefused(format!("the rule does not parse: {e}")))?;
    if !rules.rules.contains_key(&rule.name) && rules.rules.len() >= MAX_RULES {
        return Err(Rejection::AdminRefused(format!(
            "{MAX_RULES} rules are deployed, the limit; remove one first"
        )));
    }
    let deployed = DeployedRule {
        version: index,
        text: rule.to_string(),
    };
    Ok((rule.name, deployed))
}

/// The name an event gives to what a policy operation changed.
fn policy_entity(op: &AdminOp) -> String {
    match op {
        AdminOp::DefineRole { role, .. } | AdminOp::DeleteRole { role } => format!("role/{role}"),
        AdminOp::AssignRole { player, .. } | AdminOp::UnassignRole { player, .. } => {
            format!("player/{}", hex::encode(player))
        }
        AdminOp::SetDefaultRole { .. } => "default_role".into(),
        AdminOp::CreateLocation { name } | AdminOp::RemoveLocation { name } => {
            format!("location/{name}")
        }
        AdminOp::RevokeTokens { player } => format!("tokens/{}", hex::encode(player)),
        AdminOp::DeployRule { .. } => "rule".into(),
        AdminOp::RemoveRule { name } => format!("rule/{name}"),
        AdminOp::DeployPlugin { spec } => format!("plugin/{}", spec.name),
        AdminOp::RemovePlugin { name } => format!("plugin/{name}"),
    }
}

impl MetaExtension for AdminApp {
    fn apply(
        &mut self,
        ctx: &ApplyContext<'_>,
        directory: &mut Directory,
        payload: &[u8],
    ) -> Vec<u8> {
        let reply = match codec::decode::<AdminCommand>(payload) {
            Ok(AdminCommand::Bootstrap {
                admins,
                roles,
                replication_factor,
            }) => self.bootstrap(ctx, &admins, &roles, replication_factor),
            Ok(AdminCommand::Submit(signed)) => self.submit(ctx, directory, &signed, None),
            Ok(AdminCommand::SubmitValidated { signed, engine }) => {
                self.submit(ctx, directory, &signed, Some(&engine))
            }
            Ok(AdminCommand::Tick { elapsed_ms }) => {
                // The clock starts at the log time of the first tick, so
                // token times read like dates; after that only elapsed
                // time counts, never a leader's wall clock.
                let clock = &mut self.state.session_clock_ms;
                *clock = match *clock {
                    0 => ctx.log_time_ms,
                    t => t.saturating_add(elapsed_ms.min(MAX_TICK_MS)),
                };
                AdminReply::Ticked(*clock)
            }
            Err(e) => AdminReply::Refused(format!("undecodable admin command: {e}")),
        };
        codec::encode(&reply)
    }

    fn query(&self, _: &Directory, query: &[u8]) -> Vec<u8> {
        match codec::decode::<AdminQuery>(query) {
            Ok(AdminQuery::Policy) => codec::encode(&self.state.policy),
            Ok(AdminQuery::Rules) => codec::encode(&self.state.rules),
            Ok(AdminQuery::Plugins) => codec::encode(&self.state.plugins),
            Ok(AdminQuery::NextSequence(player)) => codec::encode(&self.next_sequence(&player)),
            Ok(AdminQuery::Audit {
                reader,
                player,
                from_index,
                max,
            }) => {
                if player != Some(reader) {
                    let allowed = self
                        .state
                        .policy
                        .check(&reader, None, Action::Audit, None, None);
                    if let Err(denied) = allowed {
                        return codec::encode(&Err::<(), _>(denied));
                    }
                }
                self.state.audit.reply(player.as_ref(), from_index, max)
            }
            Ok(AdminQuery::Revoked(player)) => codec::encode(&self.revoked(&player)),
            Err(_) => Vec::new(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.state)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.state = decode_image(snapshot, "admin", ADMIN_FORMAT_VERSION, |i: &AdminImage| {
            i.format_version
        })?;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
