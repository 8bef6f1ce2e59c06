//! Plugins against a real cluster (in-process servers, real sled, real
//! tarpc): deployed through the log and validated at deploy, their effect
//! the same on every replica, exactly once across the death of the
//! location's leader, refusals that change nothing, and the `garrison
//! plugin` commands.

#![cfg(feature = "plugins")]

mod common;

use std::collections::BTreeSet;

use common::{admin_key, eventually, group_of, Servers};
use garrison_client::api::{ApiError, Outcome, ReadMode, TxReceipt};
use garrison_client::plugins::PluginSpec;
use garrison_client::policy::AdminOp;
use garrison_client::{Client, ClientError, Keypair, Op, Player, Value};

const LOCATION: &str = "depot-hill";

fn example(path: &str) -> Vec<u8> {
    let file = format!("{}/examples/plugins/{path}", env!("CARGO_MANIFEST_DIR"));
    garrison::cli::plugin::module_bytes(std::path::Path::new(&file)).unwrap()
}

fn depot_spec() -> PluginSpec {
    let mut spec = PluginSpec::new("depot", example("depot.wat"), "game_master");
    spec.on = vec!["resupply".into()];
    spec
}

fn resupply() -> Op {
    Op::Emit {
        kind: "resupply".into(),
        fields: vec![("depot".into(), Value::Str("depot/1".into()))],
    }
}

async fn deploy(admin: &mut Player, client: &Client, spec: PluginSpec) -> TxReceipt {
    admin
        .admin(client, vec![AdminOp::DeployPlugin { spec }])
        .await
        .unwrap()
}

async fn ammo(client: &Client) -> Option<Value> {
    let read = client
        .get_entity(LOCATION, "depot/1", ReadMode::Linearizable)
        .await
        .unwrap();
    read.entity.and_then(|e| e.fields.get("ammo").cloned())
}

/// Waits until every running replica of `group` reports the same applied
/// index and state digest (the plugins' records are part of it).
async fn same_state(servers: &Servers, group: u64) {
    eventually("every replica reports the same state digest", || async {
        let mut digests = BTreeSet::new();
        for s in servers.servers.iter().flatten() {
            let r = s.node.consistency(group, None).unwrap();
            digests.insert((r.applied_index, r.state_digest));
        }
        digests.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployed_plugin_acts_in_the_entry_of_its_event_on_every_replica() {
    let servers = Servers::start(3, "plugins-deploy").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    let put = Op::Put {
        entity: "depot/1".into(),
        fields: vec![("ammo".into(), Value::Int(0))],
    };
    admin.transact(&client, LOCATION, vec![put]).await.unwrap();
    // Before the deploy: nothing reacts.
    admin
        .transact(&client, LOCATION, vec![resupply()])
        .await
        .unwrap();
    let deployed = deploy(&mut admin, &client, depot_spec()).await;
    assert!(
        matches!(deployed.outcome, Outcome::Committed { .. }),
        "{deployed:?}"
    );
    let set = client.plugins().await.unwrap();
    assert_eq!(set.version, deployed.index);
    assert_eq!(set.engine, garrison::plugins::runtime::engine_fingerprint());
    let receipt = admin
        .transact(&client, LOCATION, vec![resupply()])
        .await
        .unwrap();
    assert!(matches!(receipt.outcome, Outcome::Committed { .. }));
    assert_eq!(ammo(&client).await, Some(Value::Int(10)));
    let group = group_of(&client, LOCATION).await;
    same_state(&servers, group).await;
    let here = client.location_plugins(LOCATION).await.unwrap();
    assert_eq!(here.plugins.len(), 1);
    assert_eq!(here.plugins[0].version, deployed.index);
    assert_eq!(here.plugins[0].record.runs, 1);
    // The answering node kept the plugin's line.
    eventually("a log line", || async {
        let lines = client.plugin_logs(Some("depot"), 0, 10).await.unwrap();
        lines.iter().any(|l| l.line == "refilled depot/1")
    })
    .await;
    // Removal stops it from its entry on.
    admin
        .admin(
            &client,
            vec![AdminOp::RemovePlugin {
                name: "depot".into(),
            }],
        )
        .await
        .unwrap();
    admin
        .transact(&client, LOCATION, vec![resupply()])
        .await
        .unwrap();
    assert_eq!(ammo(&client).await, Some(Value::Int(10)));
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_deploys_are_refused_with_what_is_wrong_and_change_nothing() {
    let servers = Servers::start(3, "plugins-refused").await;
    let client = servers.client().await;
    let mut admin = Player::new(admin_key());
    // 1 GiB of declared memory.
    let huge = wat::parse_str(
        r#"(module (memory (export "memory") 16384)
             (func (export "alloc") (param i32) (result i32) (i32.const 0))
             (func (export "on_event") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let refused = admin
        .admin(
            &client,
            vec![AdminOp::DeployPlugin {
                spec: PluginSpec::new("huge", huge, "game_master"),
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api(ApiError::InvalidRequest(w)) if w.contains("1073741824 bytes of memory")),
        "{refused:?}"
    );
    // WASI is not the host API.
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "alloc") (param i32) (result i32) (i32.const 0))
             (func (export "on_event") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let refused = admin
        .admin(
            &client,
            vec![AdminOp::DeployPlugin {
                spec: PluginSpec::new("wasi", wasi, "game_master"),
            }],
        )
        .await
        .unwrap_err();
    assert!(
        format!("{refused}").contains("may import only garrison."),
        "{refused}"
    );
    // A role that does not exist: refused by the meta group.
    let mut spec = depot_spec();
    spec.role = "nobody".into();
    let receipt = deploy(&mut admin, &client, spec).await;
    assert!(
        matches!(&receipt.outcome, Outcome::Rejected { reason, .. } if reason.to_string().contains("\"nobody\" is not defined")),
        "{receipt:?}"
    );
    // A player without deploy_plugins: refused at ingress already.
    let stranger = Keypair::from_seed([0x33; 32]);
    let mut stranger = Player::new(stranger);
    let refused = stranger
        .admin(&client, vec![AdminOp::DeployPlugin { spec: depot_spec() }])
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api(ApiError::Forbidden(r)) if r.to_string().contains("deploy_plugins")),
        "{refused:?}"
    );
    assert_eq!(
        client.plugins().await.unwrap().version,
        0,
        "nothing deployed"
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_effect_applies_once_across_the_leaders_death_and_a_resubmission() {
    let mut servers = Servers::start(3, "plugins-once").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    let put = Op::Put {
        entity: "depot/1".into(),
        fields: vec![("ammo".into(), Value::Int(0))],
    };
    admin.transact(&client, LOCATION, vec![put]).await.unwrap();
    deploy(&mut admin, &client, depot_spec()).await;
    let group = group_of(&client, LOCATION).await;
    // Signed once; submitted while the location's leader is stopped.
    let signed = admin
        .sign(&client, LOCATION, vec![resupply()])
        .await
        .unwrap();
    let leader = servers.server(0).node.leader(group).unwrap();
    let i = leader as usize - 1;
    let submit = {
        let client = servers.client().await;
        let signed = signed.clone();
        tokio::spawn(async move { client.submit(&signed).await })
    };
    servers.stop(i).await;
    let first = match submit.await.unwrap() {
        Ok(receipt) => receipt,
        // The leader died with the proposal: the same bytes again.
        Err(_) => client.submit(&signed).await.unwrap(),
    };
    assert!(
        matches!(first.outcome, Outcome::Committed { .. }),
        "{first:?}"
    );
    // A duplicate injected by hand changes nothing.
    let again = client.submit(&signed).await.unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.index, first.index);
    assert_eq!(ammo(&client).await, Some(Value::Int(10)));
    servers.restart(i).await;
    same_state(&servers, group).await;
    let here = client.location_plugins(LOCATION).await.unwrap();
    assert_eq!(here.plugins[0].record.runs, 1, "called once for the event");
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_plugin_commands_deploy_list_show_and_remove() {
    let servers = Servers::start(3, "plugins-cli").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("admin.key");
    admin_key().save(&key).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_garrison"))
            .env("GARRISON_HOME", home.path())
            .arg("--cluster")
            .arg(servers.endpoints.join(","))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let wat = format!("{}/examples/plugins/depot.wat", env!("CARGO_MANIFEST_DIR"));
    let key_arg = key.to_str().unwrap();
    let (code, out, err) = run(&[
        "plugin", "deploy", &wat, "--name", "depot", "--on", "resupply", "--key", key_arg,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Created plugin/depot"), "{out}");
    let (code, out, _) = run(&["plugin", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("depot  version") && out.contains("on resupply  role game_master"),
        "{out}"
    );
    let (code, out, _) = run(&["plugin", "show", "depot", "-l", LOCATION]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!("at {LOCATION}, as of index")),
        "{out}"
    );
    assert!(out.contains("0 runs"), "{out}");
    // A module that is not one: refused locally, exit 1, nothing sent.
    let bad = home.path().join("bad.wat");
    std::fs::write(&bad, "(module (memory (export \"memory\") 1))").unwrap();
    let (code, _, err) = run(&[
        "plugin",
        "deploy",
        bad.to_str().unwrap(),
        "--name",
        "bad",
        "--key",
        key_arg,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exports no alloc"), "{err}");
    let (code, out, err) = run(&["plugin", "remove", "depot", "--key", key_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, out, _) = run(&["plugin", "list"]);
    assert!(out.contains("no plugins deployed"), "{out}");
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_for_another_location_applies_once_across_the_leaders_death() {
    let mut servers = Servers::start(3, "plugins-outbox").await;
    let client = servers.client().await;
    let base = "base-camp";
    servers.create_location(&client, LOCATION).await;
    servers.create_location(&client, base).await;
    let mut admin = Player::new(admin_key());
    let put = Op::Put {
        entity: "depot/1".into(),
        fields: vec![("ammo".into(), Value::Int(0))],
    };
    admin.transact(&client, base, vec![put]).await.unwrap();
    // On "ship" in LOCATION, adds 5 to base-camp's depot.
    let relay = wat::parse_str(
        r#"(module
             (import "garrison" "propose" (func $propose (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "incr depot/1:ammo=5")
             (data (i32.const 64) "base-camp")
             (func (export "alloc") (param i32) (result i32) (i32.const 1024))
             (func (export "on_event") (param i32 i32 i32 i32) (result i32)
               (call $propose (i32.const 64) (i32.const 9) (i32.const 16) (i32.const 19))))"#,
    )
    .unwrap();
    let mut spec = PluginSpec::new("relay", relay, "game_master");
    spec.locations = vec![LOCATION.into()];
    spec.on = vec!["ship".into()];
    let deployed = deploy(&mut admin, &client, spec).await;
    let ship = Op::Emit {
        kind: "ship".into(),
        fields: vec![],
    };
    let shipped = admin.transact(&client, LOCATION, vec![ship]).await.unwrap();
    // The source's leader dies at once: before or after it delivered.
    let source = group_of(&client, LOCATION).await;
    let target = group_of(&client, base).await;
    let leader = servers.server(0).node.leader(source).unwrap();
    servers.stop(leader as usize - 1).await;
    let base_ammo = || async {
        let read = client
            .get_entity(base, "depot/1", ReadMode::Linearizable)
            .await
            .unwrap();
        read.entity.and_then(|e| e.fields.get("ammo").cloned())
    };
    eventually("the delivery and its acknowledgement", || async {
        base_ammo().await == Some(Value::Int(5))
            && client.location_plugins(LOCATION).await.unwrap().outbox == 0
    })
    .await;
    // A duplicate injected by hand does nothing.
    let delivery = garrison::plugins::state::Delivery {
        source: LOCATION.into(),
        seq: 1,
        plugin: "relay".into(),
        version: deployed.index,
        role: "game_master".into(),
        cause: garrison_client::events::EventId {
            location: LOCATION.into(),
            index: shipped.index,
            position: 0,
        },
        ops: vec![Op::Increment {
            entity: "depot/1".into(),
            field: "ammo".into(),
            by: 5,
            min: None,
            max: None,
        }],
    };
    let node = &servers.servers.iter().flatten().next().unwrap().node;
    let payload = garrison_raft::codec::encode(
        &garrison::state::location::LocationCommand::Deliver(delivery),
    );
    let reply = node.write(target, payload).await.unwrap();
    let reply: garrison::plugins::state::DeliveryReply =
        garrison_raft::codec::decode(&reply.reply).unwrap();
    assert!(reply.duplicate, "{reply:?}");
    assert_eq!(base_ammo().await, Some(Value::Int(5)));
    servers.restart(leader as usize - 1).await;
    same_state(&servers, target).await;
    servers.shutdown().await;
}
