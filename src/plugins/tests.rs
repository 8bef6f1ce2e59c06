//! Plugins in location apply, in this process: the examples' effects,
//! binding at the deploy's index, versions, snapshots, failures and
//! suspension, the role check, and the same outcome on two replicas.

use std::sync::Arc;

use garrison_client::api::{Outcome, Rejection, TxReceipt};
use garrison_client::events::EventBody;
use garrison_client::plugins::{
    plugin_identity, DeployedPlugin, PluginFailure, PluginSet, PluginSpec,
};
use garrison_client::tx::Transaction;
use garrison_client::{Keypair, Op, Value};
use garrison_raft::typ::{Membership, Node};
use garrison_raft::{codec, ApplyContext, GroupApp};

use super::host::PluginHost;
use super::runtime::engine_fingerprint;
use crate::cep::lang::parse;
use crate::cep::script::rule_set;
use crate::security::access::{Policy, RolesFile, DEFAULT_ROLES_TOML};
use crate::state::location::{LocationApp, LocationCommand};

const LOCATION: &str = "alpha";

fn example(path: &str) -> Vec<u8> {
    let file = format!("{}/examples/plugins/{path}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&file).unwrap();
    if bytes.starts_with(b"\0asm") {
        bytes
    } else {
        wat::parse_bytes(&bytes).unwrap().into_owned()
    }
}

fn key(n: u8) -> Keypair {
    Keypair::from_seed([n; 32])
}

/// One replica of a location, driven entry by entry.
struct Replica {
    location: String,
    app: LocationApp,
    membership: Membership,
    index: u64,
    log_time_ms: u64,
    sequences: std::collections::BTreeMap<[u8; 32], u64>,
}

impl Replica {
    fn new(host: &Arc<PluginHost>) -> Self {
        Self::named(host, LOCATION)
    }

    fn named(host: &Arc<PluginHost>, location: &str) -> Self {
        let nodes: std::collections::BTreeMap<u64, Node> =
            [(1u64, Node::new("x"))].into_iter().collect();
        let mut r = Self {
            location: location.to_string(),
            app: LocationApp::new(location).with_plugin_host(host.clone()),
            membership: Membership::new(vec![[1u64].into_iter().collect()], nodes),
            index: 0,
            log_time_ms: 1_000_000,
            sequences: Default::default(),
        };
        let roles = RolesFile::parse(DEFAULT_ROLES_TOML).unwrap();
        let policy = Policy::bootstrap(&roles.policy(), &[key(1).public()], 1).unwrap();
        r.apply(&LocationCommand::Policy(policy));
        r
    }

    fn apply(&mut self, command: &LocationCommand) -> Vec<u8> {
        self.index += 1;
        self.log_time_ms += 10;
        let ctx = ApplyContext {
            group: 1,
            index: self.index,
            term: 1,
            leader: 1,
            log_time_ms: self.log_time_ms,
            membership: &self.membership,
        };
        self.app.apply(&ctx, &codec::encode(command))
    }

    fn deploy(&mut self, version: u64, specs: &[PluginSpec]) {
        let set = PluginSet {
            version,
            engine: engine_fingerprint(),
            plugins: specs
                .iter()
                .map(|s| {
                    let deployed = DeployedPlugin {
                        version,
                        spec: s.clone(),
                    };
                    (s.name.clone(), deployed)
                })
                .collect(),
        };
        self.apply(&LocationCommand::Plugins(set));
    }

    fn tx(&mut self, who: &Keypair, ops: Vec<Op>) -> TxReceipt {
        let seq = self.sequences.entry(who.public()).or_insert(0);
        *seq += 1;
        let tx = Transaction {
            cluster: "test".into(),
            location: self.location.clone(),
            player: who.public(),
            sequence: *seq,
            ops,
        };
        let reply = self.apply(&LocationCommand::Submit(tx.sign(who.signing_key())));
        codec::decode(&reply).unwrap()
    }

    fn emit(&mut self, kind: &str, fields: &[(&str, Value)]) -> TxReceipt {
        let fields = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.tx(
            &key(1),
            vec![Op::Emit {
                kind: kind.into(),
                fields,
            }],
        )
    }

    /// The events of the entry at `index`.
    fn events_at(&self, index: u64) -> Vec<EventBody> {
        self.app
            .events()
            .iter()
            .filter(|e| e.index == index)
            .map(|e| e.body.clone())
            .collect()
    }

    fn field(&self, entity: &str, field: &str) -> Option<Value> {
        self.app
            .fragment()
            .entities
            .get(entity)
            .and_then(|e| e.fields.get(field).cloned())
    }

    fn digest(&self) -> Vec<u8> {
        self.app.snapshot()
    }
}

fn host() -> Arc<PluginHost> {
    Arc::new(PluginHost::new().unwrap())
}

fn spec(name: &str, module: Vec<u8>, on: &[&str]) -> PluginSpec {
    let mut s = PluginSpec::new(name, module, "game_master");
    s.on = on.iter().map(|s| s.to_string()).collect();
    s
}

fn put(entity: &str, field: &str, v: i64) -> Op {
    Op::Put {
        entity: entity.into(),
        fields: vec![(field.into(), Value::Int(v))],
    }
}

/// A WAT plugin whose `on_event` is `body` (params $kp $kl $ep $el).
fn wat(body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
             (import "garrison" "propose" (func $propose (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "incr depot/1:ammo=1")
             (func (export "alloc") (param i32) (result i32) (i32.const 1024))
             (func (export "on_event") (param $kp i32) (param $kl i32) (param $ep i32) (param $el i32) (result i32)
               {body}))"#
    );
    wat::parse_str(text).unwrap()
}

const PROPOSE: &str =
    "(drop (call $propose (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 19)))";

#[test]
fn the_depot_refills_in_the_entry_of_the_resupply_event() {
    let host = host();
    let mut r = Replica::new(&host);
    r.tx(&key(1), vec![put("depot/1", "ammo", 0)]);
    r.deploy(3, &[spec("depot", example("depot.wat"), &["resupply"])]);
    let receipt = r.emit("resupply", &[("depot", Value::Str("depot/1".into()))]);
    assert!(matches!(receipt.outcome, Outcome::Committed { .. }));
    assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(10)));
    let events = r.events_at(receipt.index);
    // The game event, its commit, then the plugin's change.
    assert!(matches!(&events[0], EventBody::Emitted { kind, .. } if kind == "resupply"));
    assert!(matches!(&events[1], EventBody::Committed { .. }));
    assert!(
        matches!(&events[2], EventBody::Changed { entity, owner, .. } if entity == "depot/1" && *owner == key(1).public()),
        "{events:?}"
    );
    // Capped at 100 by the operation's max: the tenth refill fails.
    for _ in 0..9 {
        r.emit("resupply", &[("depot", Value::Str("depot/1".into()))]);
    }
    assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(100)));
    let last = r.emit("resupply", &[("depot", Value::Str("depot/1".into()))]);
    assert!(
        matches!(
            &r.events_at(last.index)[2],
            EventBody::PluginFailed { failure, .. } if matches!(**failure, PluginFailure::Refused { .. })
        ),
        "{:?}",
        r.events_at(last.index)
    );
    // The failed call's line is kept too: it says what the plugin tried.
    let logs = host.logs(Some("depot"), 0, 100).0;
    assert_eq!(logs.len(), 11, "{logs:?}");
    assert_eq!(logs[0].line, "refilled depot/1");
    let status = r.app.plugins().status();
    assert_eq!(status.plugins[0].record.runs, 11);
    assert_eq!(status.plugins[0].record.failures, 1);
}

#[test]
fn a_plugin_sees_exactly_the_events_after_its_deploy_and_v2_replaces_v1() {
    let host = host();
    let mut r = Replica::new(&host);
    r.tx(&key(1), vec![put("depot/1", "ammo", 0)]);
    let v1 = wat(&format!("{PROPOSE} (i32.const 0)"));
    // v2 adds 1 twice.
    let v2 = wat(&format!("{PROPOSE} {PROPOSE} (i32.const 0)"));
    r.emit("resupply", &[]); // before any deploy: not seen
    r.deploy(10, &[spec("counter", v1, &["resupply"])]);
    r.emit("resupply", &[]);
    r.emit("resupply", &[]);
    // A replica restored from a snapshot taken between the deploys.
    let snapshot = r.app.snapshot();
    let at_snapshot = r.index;
    r.deploy(20, &[spec("counter", v2.clone(), &["resupply"])]);
    r.emit("resupply", &[]);
    assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(2 + 2)));

    let mut restored = Replica::new(&host);
    restored.app.restore(&snapshot).unwrap();
    restored.index = at_snapshot;
    restored.log_time_ms = r.log_time_ms - 20;
    restored.sequences = r.sequences.clone();
    *restored.sequences.get_mut(&key(1).public()).unwrap() -= 1;
    restored.deploy(20, &[spec("counter", v2, &["resupply"])]);
    restored.emit("resupply", &[]);
    assert_eq!(restored.field("depot/1", "ammo"), Some(Value::Int(4)));
    assert_eq!(restored.digest(), r.digest());
    // The new version started its record afresh, bound at its entry.
    let status = r.app.plugins().status();
    assert_eq!(
        (status.plugins[0].version, status.plugins[0].record.runs),
        (20, 1)
    );
}

#[test]
fn an_infinite_loop_stops_by_fuel_alike_and_repeated_failures_suspend() {
    let host = host();
    let (mut a, mut b) = (
        Replica::new(&host),
        Replica::new(&Arc::new(PluginHost::new().unwrap())),
    );
    // Spins on "spin", proposes otherwise.
    let body = format!(
        "(if (i32.eq (i32.load8_u (local.get $kp)) (i32.const 115)) (then (loop (br 0)))) {PROPOSE} (i32.const 0)"
    );
    let mut s = spec("spinner", wat(&body), &[]);
    s.suspend_after = 3;
    for r in [&mut a, &mut b] {
        r.tx(&key(1), vec![put("depot/1", "ammo", 0)]);
        r.deploy(5, std::slice::from_ref(&s));
        let spun = r.emit("spin", &[]);
        let failed: Vec<_> = r
            .events_at(spun.index)
            .into_iter()
            .filter_map(|e| match e {
                EventBody::PluginFailed { failure, .. } => Some(*failure),
                _ => None,
            })
            .collect();
        // Called for the Emitted and for the Committed event: the first
        // spins, the second ("committed") proposes.
        assert!(
            matches!(failed[..], [PluginFailure::OutOfFuel(_)]),
            "{failed:?}"
        );
        assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(1)));
        // The next event is handled normally.
        r.emit("other", &[]);
        assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(3)));
        // Three failures in a row suspend it: "spin" then its commit
        // succeeds, so spin three times within one transaction's events.
        let spins: Vec<Op> = (0..3)
            .map(|_| Op::Emit {
                kind: "spin".into(),
                fields: vec![],
            })
            .collect();
        let at = r.tx(&key(1), spins).index;
        let suspended = r.app.plugins().status().plugins[0].record.suspended_at;
        assert_eq!(suspended, Some(at));
        r.emit("other", &[]);
        assert_eq!(
            r.field("depot/1", "ammo"),
            Some(Value::Int(3)),
            "suspended: no more calls"
        );
    }
    assert_eq!(a.digest(), b.digest(), "the same outcome on both replicas");
}

#[test]
fn a_trap_after_a_proposal_leaves_only_the_failure_record() {
    let host = host();
    let mut r = Replica::new(&host);
    r.tx(&key(1), vec![put("depot/1", "ammo", 0)]);
    r.deploy(
        3,
        &[spec(
            "trapper",
            wat(&format!("{PROPOSE} unreachable")),
            &["resupply"],
        )],
    );
    let receipt = r.emit("resupply", &[]);
    assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(0)));
    let events = r.events_at(receipt.index);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(
        &events[2],
        EventBody::PluginFailed { plugin, failure, suspended: false, .. }
            if plugin == "trapper" && matches!(&**failure, PluginFailure::Trap(t) if t.contains("unreachable"))
    ));
}

#[test]
fn a_transaction_outside_the_plugins_role_is_denied_alike() {
    let host = host();
    let (mut a, mut b) = (Replica::new(&host), Replica::new(&host));
    let mut s = spec(
        "sneaky",
        wat(&format!("{PROPOSE} (i32.const 0)")),
        &["resupply"],
    );
    s.role = "observer".into();
    for r in [&mut a, &mut b] {
        r.tx(&key(1), vec![put("depot/1", "ammo", 0)]);
        r.deploy(3, std::slice::from_ref(&s));
        let receipt = r.emit("resupply", &[]);
        let events = r.events_at(receipt.index);
        assert!(
            matches!(
                &events[2],
                EventBody::PluginFailed { failure, .. }
                    if matches!(
                        **failure,
                        PluginFailure::Refused { op: Some(0), reason: Rejection::Denied { .. } }
                    )
            ),
            "{events:?}"
        );
        assert_eq!(r.field("depot/1", "ammo"), Some(Value::Int(0)));
    }
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn the_ban_plugin_bans_a_spammer_for_sixty_seconds_of_log_time() {
    let host = host();
    let mut r = Replica::new(&host);
    let text = std::fs::read_to_string(format!(
        "{}/examples/plugins/spam.rule",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    r.apply(&LocationCommand::Rules(rule_set(
        &[parse(&text).unwrap()],
        2,
    )));
    r.deploy(3, &[spec("ban", example("ban.wat"), &["spam"])]);
    let spammer = key(9);
    for n in 0..5 {
        let receipt = r.tx(&spammer, vec![put(&format!("unit/{n}"), "hp", 1)]);
        assert!(
            matches!(receipt.outcome, Outcome::Committed { .. }),
            "{receipt:?}"
        );
    }
    let ban = format!("ban/{}", hex::encode(spammer.public()));
    let Some(Value::Int(until)) = r.field(&ban, "until_ms") else {
        panic!("no ban: {:?}", r.app.events().iter().collect::<Vec<_>>());
    };
    assert_eq!(until as u64, r.log_time_ms + 60_000);
    let refused = r.tx(&spammer, vec![put("unit/9", "hp", 1)]);
    assert!(
        matches!(refused.outcome, Outcome::Rejected { reason: Rejection::Banned { until_ms }, .. } if until_ms == until as u64),
        "{refused:?}"
    );
    // Log time passes the ban's end: the player acts again.
    r.log_time_ms += 60_000;
    let back = r.tx(&spammer, vec![put("unit/9", "hp", 1)]);
    assert!(
        matches!(back.outcome, Outcome::Committed { .. }),
        "{back:?}"
    );
    assert_eq!(
        r.app.fragment().entities[&ban].owner,
        plugin_identity("ban"),
        "the plugin's own identity owns what it creates"
    );
}

#[test]
fn the_assemblyscript_scoreboard_reads_and_counts() {
    let host = host();
    let mut r = Replica::new(&host);
    r.deploy(
        2,
        &[spec(
            "scoreboard",
            example("scoreboard/scoreboard.wasm"),
            &["unit_lost"],
        )],
    );
    for _ in 0..3 {
        r.emit("unit_lost", &[("by", Value::Str("erin".into()))]);
    }
    r.emit("unit_lost", &[("unit", Value::Str("unit/3".into()))]); // no killer named
    assert_eq!(r.field("score/erin", "kills"), Some(Value::Int(3)));
    let status = r.app.plugins().status();
    assert_eq!(
        (
            status.plugins[0].record.runs,
            status.plugins[0].record.failures
        ),
        (4, 0)
    );
}

#[test]
fn a_node_whose_engine_differs_refuses_to_apply() {
    let host = host();
    let mut r = Replica::new(&host);
    let mut set = PluginSet {
        version: 2,
        engine: "wasmtime 0.0.0; another configuration".into(),
        ..Default::default()
    };
    let s = spec("depot", example("depot.wat"), &[]);
    set.plugins.insert(
        "depot".into(),
        DeployedPlugin {
            version: 2,
            spec: s,
        },
    );
    assert_eq!(r.app.refusal(), None);
    r.apply(&LocationCommand::Plugins(set));
    let why = r.app.refusal().expect("refused");
    assert!(why.contains("wasmtime 0.0.0"), "{why}");
}

#[test]
fn a_transaction_for_another_location_goes_through_the_outbox_once() {
    let host = host();
    let mut a = Replica::new(&host);
    let mut b = Replica::named(&host, "bravo");
    // Proposes its increment to "bravo", written at 64.
    let body = "(drop (call $propose (i32.const 64) (i32.const 5) (i32.const 16) (i32.const 19)))";
    let relay = |end: &str| {
        wat::parse_str(format!(
            r#"(module
                 (import "garrison" "propose" (func $propose (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 16) "incr depot/1:ammo=1")
                 (data (i32.const 64) "bravo")
                 (func (export "alloc") (param i32) (result i32) (i32.const 1024))
                 (func (export "on_event") (param i32 i32 i32 i32) (result i32) {body} {end}))"#
        ))
        .unwrap()
    };
    b.tx(&key(1), vec![put("depot/1", "ammo", 0)]);
    a.deploy(3, &[spec("relay", relay("(i32.const 0)"), &["ship"])]);
    let shipped = a.emit("ship", &[]);
    let item = a
        .app
        .plugins()
        .outbox
        .front()
        .cloned()
        .expect("an outbox item");
    assert_eq!(item.target, "bravo");
    assert_eq!(
        (item.delivery.seq, item.delivery.cause.index),
        (1, shipped.index)
    );
    // Delivered twice (a leader died before the acknowledgement): once.
    let first: crate::plugins::state::DeliveryReply =
        codec::decode(&b.apply(&LocationCommand::Deliver(item.delivery.clone()))).unwrap();
    let again: crate::plugins::state::DeliveryReply =
        codec::decode(&b.apply(&LocationCommand::Deliver(item.delivery.clone()))).unwrap();
    assert_eq!((first.duplicate, first.refused), (false, None));
    assert!(again.duplicate);
    assert_eq!(b.field("depot/1", "ammo"), Some(Value::Int(1)));
    assert!(b
        .app
        .events()
        .iter()
        .any(|e| matches!(&e.body, EventBody::Delivered { plugin, source, .. } if plugin == "relay" && source.index == shipped.index)));
    let dropped: bool = codec::decode(&a.apply(&LocationCommand::Delivered {
        seq: 1,
        refused: None,
    }))
    .unwrap();
    assert!(dropped);
    assert!(a.app.plugins().outbox.is_empty());
    // A failed call puts nothing in the outbox.
    let trap = relay("unreachable");
    a.deploy(9, &[spec("relay", trap, &["ship"])]);
    a.emit("ship", &[]);
    assert!(a.app.plugins().outbox.is_empty());
}
