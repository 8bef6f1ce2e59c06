//! The complex event processor against a real cluster (in-process
//! servers, real sled, real tarpc): rules deployed through the log, their
//! matches in the event stream on every replica, an absence judged in an
//! idle location by a tick, state that survives a restart, and a backtest
//! that runs a rule over a location's retained events with the engine's
//! own code.

mod common;

use std::collections::BTreeSet;

use common::{admin_key, eventually, Servers};
use garrison::cep::lang::parse;
use garrison::cli::rules;
use garrison_client::api::{Outcome, Rejection, TxReceipt};
use garrison_client::events::{
    Cursor, EventBody, EventFilter, EventId, EventQuery, EventType, StartAt, StreamEvent,
};
use garrison_client::policy::AdminOp;
use garrison_client::{Client, Keypair, Op, Player, Value};

const LOCATION: &str = "ridge";

fn attack(target: &str, damage: i64) -> Op {
    Op::Emit {
        kind: "attack".into(),
        fields: vec![
            ("target".into(), Value::Str(target.into())),
            ("damage".into(), Value::Int(damage)),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backtest_finds_the_matches_of_the_retained_events_by_their_ids() {
    let servers = Servers::start(3, "cep-backtest").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    let mut indexes = Vec::new();
    for (target, damage) in [("hill", 3), ("fort", 9), ("hill", 5), ("hill", 1)] {
        let receipt = admin
            .transact(&client, LOCATION, vec![attack(target, damage)])
            .await
            .unwrap();
        indexes.push(receipt.index);
    }
    let rule = parse(
        r#"rule pile_on
           pattern a: emitted "attack"
             followed by b: emitted "attack" where b.target == a.target and b.damage > a.damage
           skip past last
           emit "pile_on" { target = a.target, total = a.damage + b.damage }"#,
    )
    .unwrap();
    let events = rules::retained(&client, LOCATION).await.unwrap();
    // Four emits and four outcomes.
    assert!(events.len() >= 8, "{events:#?}");
    let result = rules::run(&rule, &events);
    let at = |index: u64| Cursor { index, position: 0 };
    // hill 3 then hill 5 (fort is another target; hill 1 does less).
    assert_eq!(result.found.len(), 1, "{:#?}", result.found);
    let found = &result.found[0];
    let EventBody::Matched { events, fields, .. } = &found.body else {
        panic!("{found:?}")
    };
    assert_eq!(events, &[at(indexes[0]), at(indexes[2])]);
    // After the entry's emit and its outcome.
    let id = EventId {
        location: LOCATION.into(),
        index: indexes[2],
        position: 2,
    };
    assert_eq!(found.at, id);
    assert_eq!(
        fields,
        &[
            ("target".to_string(), Value::Str("hill".into())),
            ("total".to_string(), Value::Int(8)),
        ]
    );
    // Past the match, hill 1 starts a partial match that is still waiting.
    assert_eq!(result.pending, 1);
    servers.shutdown().await;
}

#[test]
fn rules_check_prints_the_canonical_text_or_what_is_wrong_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.rule");
    std::fs::write(
        &good,
        "rule r   pattern a: emitted \"x\"\n followed by b: any within 60000ms emit \"m\"",
    )
    .unwrap();
    let bad = dir.path().join("bad.rule");
    std::fs::write(&bad, "rule r\npattern a: exploded emit \"m\"").unwrap();
    let check = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_garrison"))
            .args(["rules", "check"])
            .arg(file)
            .env("GARRISON_HOME", dir.path())
            .output()
            .unwrap()
    };
    let out = check(&good);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "rule r\npattern a: emitted \"x\"\n  followed by b: any\nwithin 1m\nemit \"m\"\n"
    );
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.rule: line 2, column 12: \"exploded\" is not an event type"),
        "{err}"
    );
}

const PAIR: &str = r#"rule pair
pattern a: emitted "hit" followed by b: emitted "hit" where b.player != a.player
skip past last
emit "pair" { earlier = a.index, later = b.index }"#;

const UNANSWERED: &str = r#"rule unanswered
on "ridge"
pattern a: emitted "alarm" not followed by b: emitted "ack" within 1s
emit "unanswered" { at = a.time }"#;

fn emit(kind: &str) -> Op {
    Op::Emit {
        kind: kind.into(),
        fields: Vec::new(),
    }
}

async fn admin_op(admin: &mut Player, client: &Client, op: AdminOp) -> TxReceipt {
    admin.admin(client, vec![op]).await.unwrap()
}

/// Every match in `location`'s retained events, as `client` reads them.
async fn matches(client: &Client, location: &str) -> Vec<StreamEvent> {
    let query = EventQuery {
        locations: vec![(location.to_string(), StartAt::After(Cursor::START))],
        filter: EventFilter {
            types: vec![EventType::Matched],
            ..Default::default()
        },
        max_events: 1000,
        wait_ms: 0,
        linger_ms: 0,
    };
    client.read_events(&query).await.unwrap().events
}

/// Waits until every running replica of `group` reports the same applied
/// index and state digest (the rules' state is part of it).
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
async fn a_deployed_rule_matches_from_its_index_on_every_replica_alike() {
    let mut servers = Servers::start(3, "cep-deploy").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    let red = Keypair::from_seed([0x11; 32]);
    let blue = Keypair::from_seed([0x22; 32]);
    // Game servers record the hits; the default role may not emit.
    for key in [&red, &blue] {
        let op = AdminOp::AssignRole {
            player: key.public(),
            role: "game_master".into(),
            scope: garrison_client::policy::Scope::Everywhere,
        };
        admin_op(&mut admin, &client, op).await;
    }
    let (mut red, mut blue) = (Player::new(red), Player::new(blue));
    // A hit before the deploy is not seen by the rule.
    red.transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    let deployed = admin_op(
        &mut admin,
        &client,
        AdminOp::DeployRule { text: PAIR.into() },
    )
    .await;
    assert!(
        matches!(deployed.outcome, Outcome::Committed { .. }),
        "{deployed:?}"
    );
    let set = client.rules().await.unwrap();
    assert_eq!(set.rules["pair"].version, deployed.index);
    assert_eq!(
        set.rules["pair"].text,
        parse(PAIR).unwrap().to_string(),
        "canonical"
    );
    let b1 = blue
        .transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    assert!(
        matches(&client, LOCATION).await.is_empty(),
        "red's hit came before the deploy"
    );
    let r2 = red
        .transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    let found = matches(&client, LOCATION).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    let m = &found[0];
    // The match follows the completing entry's emit and outcome.
    assert_eq!((m.id.index, m.id.position), (r2.index, 2));
    match &m.body {
        EventBody::Matched {
            rule,
            version,
            kind,
            events,
            fields,
            depth,
            ..
        } => {
            assert_eq!(
                (rule.as_str(), *version, kind.as_str(), *depth),
                ("pair", deployed.index, "pair", 1)
            );
            let taken = [
                Cursor {
                    index: b1.index,
                    position: 0,
                },
                Cursor {
                    index: r2.index,
                    position: 0,
                },
            ];
            assert_eq!(events, &taken);
            assert_eq!(
                fields,
                &[
                    ("earlier".to_string(), Value::Int(b1.index as i64)),
                    ("later".to_string(), Value::Int(r2.index as i64)),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // The same match on every replica, and the same state.
    for i in 0..3 {
        let pinned = servers.pinned_client(i).await;
        eventually("the replica has the match", || async {
            matches(&pinned, LOCATION).await == found
        })
        .await;
    }
    let group = common::group_of(&client, LOCATION).await;
    same_state(&servers, group).await;
    // A partial match waits; a restarted replica continues from it.
    blue.transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    servers.stop(2).await;
    servers.restart(2).await;
    let restarted = servers.pinned_client(2).await;
    let here = restarted.location_rules(LOCATION).await.unwrap();
    assert_eq!(here.rules.len(), 1, "{here:?}");
    assert_eq!(
        (here.rules[0].matches, here.rules[0].pending),
        (1, 1),
        "{here:?}"
    );
    let r3 = red
        .transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    eventually("the restarted replica finds the second match", || async {
        matches(&restarted, LOCATION).await.len() == 2
    })
    .await;
    assert_eq!(
        matches(&restarted, LOCATION).await,
        matches(&client, LOCATION).await
    );
    assert_eq!(matches(&client, LOCATION).await[1].id.index, r3.index);
    same_state(&servers, group).await;
    // Removed: no more matches.
    let removed = admin_op(
        &mut admin,
        &client,
        AdminOp::RemoveRule {
            name: "pair".into(),
        },
    )
    .await;
    assert!(
        matches!(removed.outcome, Outcome::Committed { .. }),
        "{removed:?}"
    );
    blue.transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    red.transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    assert_eq!(matches(&client, LOCATION).await.len(), 2);
    assert!(client
        .location_rules(LOCATION)
        .await
        .unwrap()
        .rules
        .is_empty());
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absence_is_judged_in_an_idle_location_by_a_tick() {
    let servers = Servers::start(3, "cep-absence").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    servers.create_location(&client, "valley").await;
    let mut admin = Player::new(admin_key());
    let text = UNANSWERED.to_string();
    admin_op(&mut admin, &client, AdminOp::DeployRule { text }).await;
    // Answered in time: no match.
    admin
        .transact(&client, LOCATION, vec![emit("alarm")])
        .await
        .unwrap();
    admin
        .transact(&client, LOCATION, vec![emit("ack")])
        .await
        .unwrap();
    // Then one alarm, and no traffic at all.
    let alarm = admin
        .transact(&client, LOCATION, vec![emit("alarm")])
        .await
        .unwrap();
    eventually("the absence is judged without traffic", || async {
        !matches(&client, LOCATION).await.is_empty()
    })
    .await;
    let found = matches(&client, LOCATION).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    let m = &found[0];
    assert!(m.id.index > alarm.index);
    // Its entry is a tick: no player, no other event; log time passed the
    // alarm's by more than the second.
    assert_eq!((m.player, m.id.position), (None, 0));
    let EventBody::Matched { events, .. } = &m.body else {
        panic!("{m:?}")
    };
    assert_eq!(
        events,
        &[Cursor {
            index: alarm.index,
            position: 0
        }]
    );
    let alarm_time = client
        .read_events(&EventQuery {
            locations: vec![(
                LOCATION.into(),
                StartAt::After(Cursor {
                    index: alarm.index - 1,
                    position: u32::MAX,
                }),
            )],
            filter: EventFilter::default(),
            max_events: 1,
            wait_ms: 0,
            linger_ms: 0,
        })
        .await
        .unwrap()
        .events[0]
        .log_time_ms;
    assert!(
        m.log_time_ms > alarm_time + 1_000,
        "{} vs {alarm_time}",
        m.log_time_ms
    );
    // Nothing is pending now, so the location goes quiet; the rule does
    // not run in the valley (it names the ridge), which never ticks.
    let here = client.location_rules(LOCATION).await.unwrap();
    assert_eq!(here.next_deadline_ms, None, "{here:?}");
    let quiet = client.location_rules(LOCATION).await.unwrap().index;
    let valley = client.location_rules("valley").await.unwrap();
    assert!(valley.rules.is_empty(), "{valley:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        client.location_rules(LOCATION).await.unwrap().index,
        quiet,
        "no ticks without a deadline"
    );
    for i in 0..3 {
        let pinned = servers.pinned_client(i).await;
        eventually("the replica has the match", || async {
            matches(&pinned, LOCATION).await == found
        })
        .await;
    }
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_rule_or_an_unpermitted_deploy_is_refused_and_changes_nothing() {
    let servers = Servers::start(3, "cep-refused").await;
    let client = servers.client().await;
    let mut admin = Player::new(admin_key());
    let refused = |r: &TxReceipt| match &r.outcome {
        Outcome::Rejected { reason, .. } => reason.to_string(),
        other => panic!("{other:?}"),
    };
    let bad = AdminOp::DeployRule {
        text: "rule r\npattern a: exploded emit \"m\"".into(),
    };
    let r = admin_op(&mut admin, &client, bad).await;
    let why = refused(&r);
    assert!(
        why.contains("line 2, column 12") && why.contains("not an event type"),
        "{why}"
    );
    let r = admin_op(
        &mut admin,
        &client,
        AdminOp::RemoveRule {
            name: "nope".into(),
        },
    )
    .await;
    assert!(refused(&r).contains("no rule \"nope\""), "{r:?}");
    let mut stranger = Player::new(Keypair::from_seed([0x33; 32]));
    let op = AdminOp::DeployRule { text: PAIR.into() };
    // Refused at ingress already (apply would refuse it too).
    match stranger.admin(&client, vec![op]).await {
        Err(garrison_client::ClientError::Api(garrison_client::api::ApiError::Forbidden(
            Rejection::Denied { .. },
        ))) => {}
        other => panic!("{other:?}"),
    }
    assert!(client.rules().await.unwrap().rules.is_empty());
    // Too large for a transaction: refused at once, before signing.
    let big = AdminOp::DeployRule {
        text: format!(
            "{PAIR} # {}",
            "x".repeat(garrison_client::rules::MAX_RULE_TEXT_BYTES)
        ),
    };
    assert!(big.check_limits().unwrap_err().contains("the limit is"));
    servers.shutdown().await;
}

/// Each folder of `tests/golden/cep/` holds an event script (`events`),
/// rules (`*.rule`, run in file-name order) and the exact report they must
/// give (`expected`). `GARRISON_BLESS=1` rewrites the reports (then read
/// the diff).
#[test]
fn golden_scripts_give_exactly_their_matches() {
    use garrison::cep::script::{parse_script, run_script};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cep");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "{cases:?}");
    let bless = std::env::var_os("GARRISON_BLESS").is_some();
    for case in cases {
        let mut files: Vec<_> = std::fs::read_dir(&case)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rule"))
            .collect();
        files.sort();
        let rules: Vec<_> = files
            .iter()
            .map(|f| {
                parse(&std::fs::read_to_string(f).unwrap()).unwrap_or_else(|e| panic!("{f:?}: {e}"))
            })
            .collect();
        let script = std::fs::read_to_string(case.join("events")).unwrap();
        let entries = parse_script(&script).unwrap_or_else(|e| panic!("{case:?}: {e}"));
        let got = run_script(&rules, &entries);
        let expected_file = case.join("expected");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap();
        assert_eq!(got, expected, "golden script {}", case.display());
    }
}

#[test]
fn rules_test_prints_the_report_of_a_script() {
    let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cep/negation");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_garrison"))
        .args(["rules", "test", "-s"])
        .arg(case.join("events"))
        .arg(case.join("absence.rule"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        "8.0 absence unanswered: events 6.0 {at=5000}\n\
         12.1 absence unanswered: events 11.0 {at=12000}\n\
         2 matches; 0 pending\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.events");
    std::fs::write(&bad, "1000 emitted alarm\n900 tick\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_garrison"))
        .args(["rules", "test", "-s"])
        .arg(&bad)
        .arg(case.join("absence.rule"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("line 2: log time goes back"));
}

#[test]
fn the_example_rules_are_valid_and_canonical_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let rule = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            parse(&rule.to_string()).unwrap(),
            rule,
            "{}",
            path.display()
        );
        n += 1;
    }
    assert_eq!(n, 10, "the benchmark's ten typical rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_caught_up_by_snapshot_continues_the_partial_matches() {
    // Snapshots every 20 entries, 5 kept behind: a replica that misses 60
    // entries can only catch up by installing a snapshot.
    let mut servers = Servers::start_edited(3, "cep-snapshot", |c| {
        c.raft.snapshot_logs_since_last = 20;
        c.raft.snapshot_logs_to_keep = 5;
    })
    .await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    let text = "rule hits pattern a: emitted \"hit\" followed by b: emitted \"hit\" skip past last emit \"two\"".to_string();
    admin_op(&mut admin, &client, AdminOp::DeployRule { text }).await;
    servers.stop(2).await;
    // 61 hits: 30 matches, one partial match left.
    for _ in 0..61 {
        admin
            .transact(&client, LOCATION, vec![emit("hit")])
            .await
            .unwrap();
    }
    servers.restart(2).await;
    let group = common::group_of(&client, LOCATION).await;
    same_state(&servers, group).await;
    let restarted = servers.pinned_client(2).await;
    eventually("the restarted replica holds the matches", || async {
        matches(&restarted, LOCATION).await.len() == 30
    })
    .await;
    let local = |i: usize| {
        servers
            .server(i)
            .node
            .read_local(group, |s| {
                let app = s
                    .app
                    .as_any()
                    .downcast_ref::<garrison::state::location::LocationApp>()
                    .unwrap();
                app.cep().clone()
            })
            .unwrap()
    };
    let cep = local(2);
    assert_eq!(cep.rules["hits"].pending(), 1, "{cep:?}");
    assert_eq!(cep.rules["hits"].matches, 30);
    // The next hit completes the partial match the snapshot carried.
    admin
        .transact(&client, LOCATION, vec![emit("hit")])
        .await
        .unwrap();
    same_state(&servers, group).await;
    let cep = local(2);
    assert_eq!(
        (cep.rules["hits"].matches, cep.rules["hits"].pending()),
        (31, 0)
    );
    assert_eq!(
        matches(&restarted, LOCATION).await,
        matches(&client, LOCATION).await
    );
    servers.shutdown().await;
}
