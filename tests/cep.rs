//! The complex event processor against a real cluster (in-process
//! servers, real sled, real tarpc): a backtest reads a location's
//! retained events and runs a rule with the engine's own code.

mod common;

use common::{admin_key, Servers};
use garrison::cep::lang::parse;
use garrison::cli::rules;
use garrison_client::events::EventId;
use garrison_client::{Op, Player, Value};

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
    // Four emits and four outcomes, and the location's creation before.
    assert!(events.len() >= 8, "{events:#?}");
    let result = rules::run(&rule, &events);
    let id = |index: u64| EventId {
        location: LOCATION.into(),
        index,
        position: 0,
    };
    // hill 3 then hill 5 (fort is another target; hill 1 does less).
    assert_eq!(result.found.len(), 1, "{:#?}", result.found);
    let found = &result.found[0];
    assert_eq!(found.events, [id(indexes[0]), id(indexes[2])]);
    assert_eq!(found.at, id(indexes[2]));
    assert_eq!(
        found.fields,
        [
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
