//! Attack-suite item 10 against a real three-node cluster: a player changing
//! another player's entity, a player calling an administrative action, a
//! revoked role used right after its revocation's receipt. Each is refused
//! with a clear reason and changes nothing. Also: the policy reaches a
//! location whose leader was down when it changed.

mod common;

use common::{eventually, Servers};
use garrison_client::api::{ApiError, Outcome, ReadMode, Rejection};
use garrison_client::policy::{Action, AdminOp, Scope};
use garrison_client::{Client, ClientError, Keypair, Op, Player, Value};

const LOCATION: &str = "keep";

fn put(entity: &str, n: i64) -> Vec<Op> {
    vec![Op::Put {
        entity: entity.into(),
        fields: vec![("n".into(), Value::Int(n))],
    }]
}

fn denied(outcome: &Outcome) -> Option<(Action, String)> {
    match outcome {
        Outcome::Rejected {
            reason: Rejection::Denied { action, reason, .. },
            ..
        } => Some((*action, reason.clone())),
        _ => None,
    }
}

async fn value(client: &Client, entity: &str) -> Option<Value> {
    let read = client
        .get_entity(LOCATION, entity, ReadMode::Linearizable)
        .await
        .unwrap();
    read.entity.and_then(|e| e.fields.get("n").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_are_held_to_their_roles_and_a_revocation_binds_at_once() {
    let servers = Servers::start(3, "access").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut bob = Player::new(Keypair::from_seed([0xb0; 32]));
    let mut carol = Player::new(Keypair::from_seed([0xca; 32]));

    // A player changing another player's entity.
    let mine = carol
        .transact(&client, LOCATION, put("unit/c", 1))
        .await
        .unwrap();
    assert!(matches!(mine.outcome, Outcome::Committed { .. }));
    let theft = bob
        .transact(&client, LOCATION, put("unit/c", 99))
        .await
        .unwrap();
    let (action, reason) = denied(&theft.outcome).expect("denied");
    assert_eq!(action, Action::Put);
    assert!(reason.contains("belongs to another player"), "{reason}");
    assert_eq!(value(&client, "unit/c").await, Some(Value::Int(1)));

    // A player calling an administrative action: refused at ingress, before
    // it costs a meta write (apply refuses it too: tests/golden/access).
    let grab = bob
        .admin(
            &client,
            vec![AdminOp::AssignRole {
                player: bob.key().public(),
                role: "admin".into(),
                scope: Scope::Everywhere,
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            grab,
            ClientError::Api(ApiError::Forbidden(Rejection::Denied {
                action: Action::ManageRoles,
                ..
            }))
        ),
        "{grab}"
    );
    let err = bob.create_location(&client, "bobland").await.unwrap_err();
    assert!(err.to_string().contains("create_location"), "{err}");
    assert!(client
        .locations()
        .await
        .unwrap()
        .iter()
        .all(|l| l.name != "bobland"));

    // A game master's role, used, revoked, and used again right after the
    // revocation's receipt: refused, nothing changes.
    let gm = AdminOp::AssignRole {
        player: bob.key().public(),
        role: "game_master".into(),
        scope: Scope::Location(LOCATION.into()),
    };
    let mut admin = servers.admin.lock().await;
    let granted = admin.admin(&client, vec![gm]).await.unwrap();
    assert!(
        matches!(granted.outcome, Outcome::Committed { .. }),
        "{granted:?}"
    );
    let used = bob
        .transact(&client, LOCATION, put("unit/c", 2))
        .await
        .unwrap();
    assert!(
        matches!(used.outcome, Outcome::Committed { .. }),
        "{used:?}"
    );
    let revoke = AdminOp::UnassignRole {
        player: bob.key().public(),
        role: "game_master".into(),
        scope: Scope::Location(LOCATION.into()),
    };
    let revoked = admin.admin(&client, vec![revoke]).await.unwrap();
    assert!(matches!(revoked.outcome, Outcome::Committed { .. }));
    let after = bob
        .transact(&client, LOCATION, put("unit/c", 3))
        .await
        .unwrap();
    assert!(denied(&after.outcome).is_some(), "{after:?}");
    assert_eq!(value(&client, "unit/c").await, Some(Value::Int(2)));
}

/// The node that submits an administrative transaction pushes the policy to
/// every location; if it dies before that, the leaders' sync task does it.
/// Here the transaction goes straight into the meta group (nobody pushes),
/// and one replica is down meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_reaches_every_location_even_if_nobody_pushed_it() {
    use garrison::security::admin::AdminCommand;
    use garrison_client::policy::ADMIN_LOCATION;
    let mut servers = Servers::start(3, "catch-up").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    servers.stop(2).await;
    let admin = common::admin_key();
    let sequence = client
        .next_sequence(ADMIN_LOCATION, admin.public())
        .await
        .unwrap();
    let tx = garrison_client::Transaction {
        cluster: client.cluster().into(),
        location: ADMIN_LOCATION.into(),
        player: admin.public(),
        sequence,
        ops: vec![Op::Admin(AdminOp::SetDefaultRole {
            role: Some("observer".into()),
        })],
    }
    .sign(admin.signing_key());
    let node = servers.server(0).node.clone();
    node.extension_command(garrison_raft::codec::encode(&AdminCommand::Submit(tx)))
        .await
        .unwrap();
    servers.restart(2).await;
    for i in 0..3 {
        let node = servers.server(i).node.clone();
        let group = node.directory().locations[LOCATION].group;
        eventually("every replica to hold the new policy", || {
            let node = node.clone();
            async move {
                let meta = garrison::security::propagate::meta_policy(&node);
                meta.default_role.as_deref() == Some("observer")
                    && garrison::security::propagate::location_policy_version(&node, group)
                        == meta.version
            }
        })
        .await;
    }
    // And it binds: the default role now only reads.
    let mut dan = Player::new(Keypair::from_seed([0xda; 32]));
    let r = dan
        .transact(&client, LOCATION, put("unit/d", 1))
        .await
        .unwrap();
    assert!(denied(&r.outcome).is_some(), "{r:?}");
}
