//! Access control, driven by golden scripts (`tests/golden/access/*.txt`):
//! each command line is followed by the output it must produce (`> ...`
//! lines). `UPDATE_GOLDEN=1 cargo test --test access` rewrites the outputs;
//! review the diff before committing it.
//!
//! The scripts run the real apply code of the meta group's extension
//! ([`AdminApp`]) and of a location ([`LocationApp`]) with signed
//! transactions, and carry the policy from one to the other only when a
//! script says `sync`, so they can order a transaction before or after a
//! policy change at will: that is how "revoked between two transactions" and
//! "role changed while a transaction is in flight" are written.
//!
//! Commands (players are names; their keys derive from the name):
//! - `bootstrap ADMIN`: bootstraps the default roles with ADMIN as admin.
//! - `PLAYER admin OP...`: an administrative transaction, one operation:
//!   `assign P ROLE [LOCATION]`, `unassign P ROLE [LOCATION]`,
//!   `define ROLE ACTIONS PATTERN own|any`, `delete-role ROLE`,
//!   `default ROLE|none`, `create LOCATION`, `remove LOCATION`.
//! - `sync LOCATION`: the location's log receives the meta group's policy.
//! - `PLAYER@LOCATION OP`: signs and applies a transaction with one entity
//!   operation: `put ENTITY FIELD=N`, `delete ENTITY`, `incr ENTITY FIELD BY`,
//!   `expect ENTITY VERSION`.
//! - `PLAYER@LOCATION sign NAME OP`: signs it now, applies nothing.
//! - `apply NAME`: applies a transaction signed earlier.
//! - `check PLAYER LOCATION|- ACTION [ENTITY [OWNER]]`: asks the meta
//!   group's policy directly (`-`: an administrative action).
//! - `events LOCATION [AFTER]`: the location's retained events after the
//!   cursor AFTER (`INDEX.POSITION`; default: all), one per line.
//!
//! Entity operations also include `emit KIND [FIELD=N...]`.

use std::collections::BTreeMap;
use std::path::Path;

use garrison::events::log::{ReadLimits, RetainedEvent};
use garrison::security::access::{RolesFile, DEFAULT_ROLES_TOML};
use garrison::security::admin::{AdminApp, AdminCommand, AdminReply};
use garrison::state::location::{LocationApp, LocationCommand};
use garrison_client::api::{Outcome, TxReceipt};
use garrison_client::events::{Cursor, EventBody, EventFilter};
use garrison_client::policy::{Action, AdminOp, Owner, Permission, Scope, ADMIN_LOCATION};
use garrison_client::tx::{Op, PlayerKey, SignedTransaction, Transaction, Value};
use garrison_client::Keypair;
use garrison_raft::meta::Directory;
use garrison_raft::typ::{Membership, Node};
use garrison_raft::{codec, ApplyContext, GroupApp, MetaExtension};
use sha2::{Digest, Sha256};

fn key(name: &str) -> Keypair {
    Keypair::from_seed(Sha256::digest(name.as_bytes()).into())
}

fn action(name: &str) -> Action {
    let quoted = format!("{name:?}");
    toml::from_str::<BTreeMap<String, Action>>(&format!("a = {quoted}"))
        .unwrap_or_else(|e| panic!("unknown action {name}: {e}"))["a"]
}

struct World {
    admin: AdminApp,
    directory: Directory,
    locations: BTreeMap<String, LocationApp>,
    meta_index: u64,
    location_index: u64,
    sequences: BTreeMap<(String, String), u64>,
    signed: BTreeMap<String, (String, SignedTransaction)>,
    membership: Membership,
    names: BTreeMap<PlayerKey, String>,
}

impl World {
    fn new() -> Self {
        let nodes: BTreeMap<u64, Node> = (1..=3).map(|n| (n, Node::new("x"))).collect();
        World {
            admin: AdminApp::default(),
            directory: Directory::default(),
            locations: BTreeMap::new(),
            meta_index: 0,
            location_index: 0,
            sequences: BTreeMap::new(),
            signed: BTreeMap::new(),
            membership: Membership::new(vec![(1..=3).collect()], nodes),
            names: BTreeMap::new(),
        }
    }

    fn meta_apply(&mut self, command: &AdminCommand) -> AdminReply {
        self.meta_index += 1;
        let ctx = ApplyContext {
            group: 0,
            index: self.meta_index,
            term: 1,
            leader: 1,
            log_time_ms: self.meta_index,
            membership: &self.membership,
        };
        let reply = self
            .admin
            .apply(&ctx, &mut self.directory, &codec::encode(command));
        codec::decode(&reply).unwrap()
    }

    fn location_apply(&mut self, location: &str, command: &LocationCommand) -> Vec<u8> {
        self.location_index += 1;
        let ctx = ApplyContext {
            group: 1,
            index: self.location_index,
            term: 1,
            leader: 1,
            log_time_ms: self.location_index,
            membership: &self.membership,
        };
        let app = self
            .locations
            .get_mut(location)
            .unwrap_or_else(|| panic!("no location {location}"));
        app.apply(&ctx, &codec::encode(command))
    }

    fn sign(&mut self, player: &str, location: &str, ops: Vec<Op>) -> SignedTransaction {
        let next = self
            .sequences
            .entry((player.to_string(), location.to_string()))
            .or_insert(1);
        let tx = Transaction {
            cluster: "golden".into(),
            location: location.into(),
            player: key(player).public(),
            sequence: *next,
            ops,
        };
        *next += 1;
        self.names.insert(key(player).public(), player.to_string());
        tx.sign(key(player).signing_key())
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["bootstrap", admin] => {
                let roles = RolesFile::parse(DEFAULT_ROLES_TOML).unwrap().policy();
                let command = AdminCommand::Bootstrap {
                    admins: vec![key(admin).public()],
                    roles,
                    replication_factor: 3,
                };
                format!("{:?}", self.meta_apply(&command))
            }
            [player, "admin", op @ ..] => {
                let op = admin_op(op);
                let signed = self.sign(player, ADMIN_LOCATION, vec![Op::Admin(op)]);
                match self.meta_apply(&AdminCommand::Submit(signed)) {
                    AdminReply::Submitted {
                        receipt, created, ..
                    } => {
                        for name in created {
                            self.locations.insert(name.clone(), LocationApp::new(&name));
                        }
                        let gone: Vec<String> = self
                            .locations
                            .keys()
                            .filter(|l| !self.directory.locations.contains_key(*l))
                            .cloned()
                            .collect();
                        for l in gone {
                            self.locations.remove(&l);
                        }
                        outcome(&receipt)
                    }
                    other => format!("{other:?}"),
                }
            }
            ["sync", location] => {
                let policy = self.admin.policy().clone();
                let reply = self.location_apply(location, &LocationCommand::Policy(policy));
                let version: u64 = codec::decode(&reply).unwrap();
                format!("policy version {version}")
            }
            ["apply", name] => {
                let (location, signed) = self.signed.get(*name).cloned().expect("signed earlier");
                let reply = self.location_apply(&location, &LocationCommand::Submit(signed));
                outcome(&codec::decode(&reply).unwrap())
            }
            ["check", player, location, act, rest @ ..] => {
                let location = (*location != "-").then_some(*location);
                let owner = rest.get(1).map(|o| key(o).public());
                let verdict = self.admin.policy().check(
                    &key(player).public(),
                    location,
                    action(act),
                    rest.first().copied(),
                    owner.as_ref(),
                );
                match verdict {
                    Ok(()) => "allowed".into(),
                    Err(e) => format!("denied: {e}"),
                }
            }
            ["events", location, rest @ ..] => {
                let after: Cursor = rest.first().map_or(Cursor::START, |c| c.parse().unwrap());
                let app = &self.locations[*location];
                let limits = ReadLimits {
                    max_events: 1000,
                    max_bytes: 1 << 20,
                    per_event_bytes: 0,
                };
                let mut lines: Vec<String> = Vec::new();
                let read = app.events().read(
                    after,
                    &EventFilter::default(),
                    limits,
                    |_| true,
                    |e, _| lines.push(self.describe(e)),
                );
                match read {
                    Ok(_) if lines.is_empty() => "no events".into(),
                    Ok(_) => lines.join("\n> "),
                    Err(trimmed) => format!("trimmed: {trimmed:?}"),
                }
            }
            [who, rest @ ..] if who.contains('@') => {
                let (player, location) = who.split_once('@').unwrap();
                let (name, op) = match rest {
                    ["sign", name, op @ ..] => (Some(*name), op),
                    op => (None, op),
                };
                let signed = self.sign(player, location, vec![entity_op(op)]);
                match name {
                    Some(name) => {
                        self.signed
                            .insert(name.to_string(), (location.to_string(), signed));
                        "signed".into()
                    }
                    None => {
                        let reply = self.location_apply(location, &LocationCommand::Submit(signed));
                        outcome(&codec::decode(&reply).unwrap())
                    }
                }
            }
            _ => panic!("cannot parse {line:?}"),
        }
    }
}

impl World {
    /// One event on one line: position, player, what happened.
    fn describe(&self, e: &RetainedEvent) -> String {
        let who = e
            .player
            .and_then(|p| self.names.get(&p).cloned())
            .unwrap_or_else(|| "?".into());
        let fields = |f: &mut dyn Iterator<Item = (&String, &Value)>| {
            let parts: Vec<String> = f.map(|(k, v)| format!("{k}={v}")).collect();
            parts.join(" ")
        };
        let what = match &e.body {
            EventBody::Created {
                entity, fields: f, ..
            } => format!("created {entity} {}", fields(&mut f.iter())),
            EventBody::Changed {
                entity, changes, ..
            } => {
                let changes: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        let old = c.old.as_ref().map_or("-".into(), |v| v.to_string());
                        format!("{}: {old} -> {}", c.field, c.new)
                    })
                    .collect();
                format!("changed {entity} {}", changes.join(", "))
            }
            EventBody::Deleted {
                entity, fields: f, ..
            } => format!("deleted {entity} {}", fields(&mut f.iter())),
            EventBody::Emitted { kind, fields: f } => {
                format!(
                    "emitted {kind} {}",
                    fields(&mut f.iter().map(|(k, v)| (k, v)))
                )
            }
            EventBody::Committed { sequence } => format!("committed sequence {sequence}"),
            EventBody::Rejected {
                sequence,
                op,
                reason,
            } => {
                let at = op.map(|o| format!(" op {o}")).unwrap_or_default();
                format!("rejected sequence {sequence}{at}: {reason}")
            }
            EventBody::Matched { rule, kind, .. } => format!("matched {rule} {kind}"),
            EventBody::Derived { plugin, kind, .. } => format!("derived {plugin} {kind}"),
            EventBody::PluginFailed {
                plugin, failure, ..
            } => format!("plugin {plugin} failed: {failure}"),
            EventBody::Delivered { plugin, source, .. } => {
                format!("delivered {plugin} from {source}")
            }
        };
        format!("{}.{} {who} {}", e.index, e.position, what.trim_end())
    }
}

fn admin_op(words: &[&str]) -> AdminOp {
    let scope = |w: Option<&&str>| match w {
        Some(l) => Scope::Location(l.to_string()),
        None => Scope::Everywhere,
    };
    match words {
        ["assign", p, role, rest @ ..] => AdminOp::AssignRole {
            player: key(p).public(),
            role: role.to_string(),
            scope: scope(rest.first()),
        },
        ["unassign", p, role, rest @ ..] => AdminOp::UnassignRole {
            player: key(p).public(),
            role: role.to_string(),
            scope: scope(rest.first()),
        },
        ["define", role, actions, pattern, owner] => AdminOp::DefineRole {
            role: role.to_string(),
            permissions: vec![Permission {
                actions: actions.split(',').map(action).collect(),
                entities: pattern.to_string(),
                owner: if *owner == "any" {
                    Owner::Any
                } else {
                    Owner::Own
                },
            }],
        },
        ["delete-role", role] => AdminOp::DeleteRole {
            role: role.to_string(),
        },
        ["default", role] => AdminOp::SetDefaultRole {
            role: (*role != "none").then(|| role.to_string()),
        },
        ["create", name] => AdminOp::CreateLocation {
            name: name.to_string(),
        },
        ["remove", name] => AdminOp::RemoveLocation {
            name: name.to_string(),
        },
        _ => panic!("cannot parse admin operation {words:?}"),
    }
}

fn entity_op(words: &[&str]) -> Op {
    match words {
        ["put", entity, assignment] => {
            let (field, n) = assignment.split_once('=').expect("FIELD=N");
            Op::Put {
                entity: entity.to_string(),
                fields: vec![(field.into(), Value::Int(n.parse().unwrap()))],
            }
        }
        ["delete", entity] => Op::Delete {
            entity: entity.to_string(),
        },
        ["incr", entity, field, by] => Op::Increment {
            entity: entity.to_string(),
            field: field.to_string(),
            by: by.parse().unwrap(),
            min: None,
            max: None,
        },
        ["expect", entity, version] => Op::ExpectVersion {
            entity: entity.to_string(),
            version: version.parse().unwrap(),
        },
        ["emit", kind, fields @ ..] => Op::Emit {
            kind: kind.to_string(),
            fields: fields
                .iter()
                .map(|f| {
                    let (field, n) = f.split_once('=').expect("FIELD=N");
                    (field.to_string(), Value::Int(n.parse().unwrap()))
                })
                .collect(),
        },
        _ => panic!("cannot parse operation {words:?}"),
    }
}

fn outcome(receipt: &TxReceipt) -> String {
    let dup = if receipt.duplicate {
        " (duplicate)"
    } else {
        ""
    };
    match &receipt.outcome {
        Outcome::Committed { events, emitted } => {
            let events: Vec<String> = events
                .iter()
                .map(|e| format!("{:?} {}", e.kind, e.entity))
                .chain(emitted.iter().map(|kind| format!("Emitted {kind}")))
                .collect();
            format!("committed at {}{dup}: {}", receipt.index, events.join(", "))
        }
        Outcome::Rejected { op, reason } => {
            let at = op.map(|o| format!(" op {o}")).unwrap_or_default();
            format!("rejected at {}{at}{dup}: {reason}", receipt.index)
        }
    }
}

/// Runs one script and compares (or rewrites) its outputs.
fn run_script(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut world = World::new();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('>') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        let command = line.trim();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        out.push_str(&format!("> {}\n", world.run(command)));
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &out).unwrap();
    } else if out != text {
        let diff: Vec<String> = text
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(want, got)| format!("  want: {want}\n  got:  {got}"))
            .collect();
        panic!(
            "{} differs (UPDATE_GOLDEN=1 rewrites it):\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

#[test]
fn access_control_golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/access");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts in {}", dir.display());
    for script in scripts {
        run_script(&script);
    }
}
