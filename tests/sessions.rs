//! Session tokens against a real cluster (attack-suite item 11): forged,
//! tampered, another cluster's, expired and revoked tokens are refused with
//! a clear error; logins need the player's own signature of a fresh
//! challenge; reads and audit queries are held to the reader's roles.

mod common;

use common::{admin_key, eventually, token_key, Servers};
use garrison_client::api::{ApiError, GarrisonClient, ReadMode, Rejection, API_VERSION};
use garrison_client::policy::AdminOp;
use garrison_client::token::{Challenge, SessionToken, TokenClaims, TokenError};
use garrison_client::{Client, ClientError, Keypair, Op, Outcome, Player, Value};
use tarpc::context;

const LOCATION: &str = "keep";

async fn raw(endpoint: &str) -> GarrisonClient {
    let stream = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let transport = tarpc::serde_transport::new(
        tokio_util::codec::Framed::new(stream, garrison_wire::frame_codec(1 << 20)),
        garrison_wire::Bincode2::default(),
    );
    GarrisonClient::new(tarpc::client::Config::default(), transport).spawn()
}

async fn read_with(c: &GarrisonClient, token: SessionToken) -> Result<(), ApiError> {
    c.get_entity(
        context::current(),
        API_VERSION,
        token,
        LOCATION.into(),
        "unit/1".into(),
        ReadMode::Linearizable,
    )
    .await
    .unwrap()
    .map(|_| ())
}

fn put(entity: &str) -> Vec<Op> {
    vec![Op::Put {
        entity: entity.into(),
        fields: vec![("hp".into(), Value::Int(1))],
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_foreign_and_expired_tokens_are_refused() {
    let servers = Servers::start(3, "tokens").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let good = client.token().expect("logged in");
    let c = raw(&servers.endpoints[1]).await;
    read_with(&c, good.clone()).await.unwrap();
    let claims = good.peek().unwrap();
    let sign = |key: &Keypair, claims: &TokenClaims| SessionToken::issue(key, claims);
    let forger = Keypair::from_seed([0xf0; 32]);
    let cases = [
        // Signed by a key that is not the cluster's.
        (sign(&forger, &claims), TokenError::BadSignature),
        // The cluster's signature over other claims (a longer life).
        (
            SessionToken {
                claims: sign(
                    &forger,
                    &TokenClaims {
                        expires_at_ms: u64::MAX,
                        ..claims.clone()
                    },
                )
                .claims,
                signature: good.signature.clone(),
            },
            TokenError::BadSignature,
        ),
        // Garbage.
        (
            SessionToken {
                claims: vec![0xff; 2000],
                signature: vec![0; 64],
            },
            TokenError::Malformed("2000 bytes; the limit is 1024".into()),
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(read_with(&c, token).await, Err(ApiError::Token(expected)));
    }
    // Another cluster's token, even under the same key.
    let foreign = sign(
        &token_key(),
        &TokenClaims {
            cluster: "elsewhere".into(),
            ..claims.clone()
        },
    );
    assert!(matches!(
        read_with(&c, foreign).await,
        Err(ApiError::Token(TokenError::WrongCluster { .. }))
    ));
    // An expired one (made with the cluster's key, so only the expiry is wrong).
    let expired = sign(
        &token_key(),
        &TokenClaims {
            expires_at_ms: claims.issued_at_ms,
            ..claims.clone()
        },
    );
    assert!(matches!(
        read_with(&c, expired).await,
        Err(ApiError::Token(TokenError::Expired { .. }))
    ));
    // The verify_token call gives the same answers, and whose a good token is.
    let who = c
        .verify_token(context::current(), API_VERSION, good)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who.player, admin_key().public());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_needs_the_players_own_answer_to_a_fresh_challenge() {
    let servers = Servers::start(3, "logins").await;
    let _ = servers.client().await;
    let c = raw(&servers.endpoints[0]).await;
    let alice = Keypair::from_seed([0xa1; 32]);
    let mallory = Keypair::from_seed([0x66; 32]);
    let challenge = c
        .challenge(context::current(), API_VERSION)
        .await
        .unwrap()
        .unwrap();
    let login = |player: [u8; 32], challenge: Challenge, answer: Vec<u8>| {
        let c = c.clone();
        async move {
            c.login(context::current(), API_VERSION, player, challenge, answer)
                .await
                .unwrap()
        }
    };
    // Mallory answers for Alice; a truncated answer; a challenge Mallory made.
    let cases = [
        (
            alice.public(),
            challenge.clone(),
            challenge.answer(&mallory),
            TokenError::BadLogin,
        ),
        (
            alice.public(),
            challenge.clone(),
            challenge.answer(&alice)[..63].to_vec(),
            TokenError::BadLogin,
        ),
        (
            alice.public(),
            Challenge::issue(&mallory, "logins", u64::MAX / 2),
            Challenge::issue(&mallory, "logins", u64::MAX / 2).answer(&alice),
            TokenError::BadSignature,
        ),
    ];
    for (player, challenge, answer, expected) in cases {
        assert_eq!(
            login(player, challenge, answer).await,
            Err(ApiError::Token(expected))
        );
    }
    // An expired challenge (the cluster's key, issued long ago).
    let old = Challenge::issue(&token_key(), "logins", 0);
    assert!(matches!(
        login(alice.public(), old.clone(), old.answer(&alice)).await,
        Err(ApiError::Token(TokenError::Expired { .. }))
    ));
    // The real thing, answered on another node than the one that issued it.
    let other = raw(&servers.endpoints[2]).await;
    let token = other
        .login(
            context::current(),
            API_VERSION,
            alice.public(),
            challenge.clone(),
            challenge.answer(&alice),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.peek().unwrap().player, alice.public());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_on_log_time_and_the_client_logs_in_again() {
    let servers = Servers::start_edited(3, "expiry", |c| c.token_ttl_ms = 1_500).await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let first = client.token().unwrap();
    let c = raw(&servers.endpoints[0]).await;
    // Nobody writes: the meta leader's clock ticks move log time on.
    eventually("the token to expire on log time", || {
        let (c, first) = (c.clone(), first.clone());
        async move {
            matches!(
                read_with(&c, first).await,
                Err(ApiError::Token(TokenError::Expired { .. }))
            )
        }
    })
    .await;
    // The client notices, logs in again and reads.
    client
        .get_entity(LOCATION, "unit/1", ReadMode::Linearizable)
        .await
        .unwrap();
    assert_ne!(client.token().unwrap(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_honoured_by_every_node() {
    let servers = Servers::start(3, "revoke").await;
    let admin = servers.client().await;
    servers.create_location(&admin, LOCATION).await;
    let bob_key = Keypair::from_seed([0xb0; 32]);
    let bob_client = Client::connect(&servers.endpoints).await.unwrap();
    let stolen = bob_client.login(&bob_key).await.unwrap();
    // Bob logs out everywhere (no permission needed for one's own tokens).
    let mut bob = Player::new(Keypair::from_seed([0xb0; 32]));
    let receipt = bob
        .admin(
            &bob_client,
            vec![AdminOp::RevokeTokens {
                player: bob_key.public(),
            }],
        )
        .await
        .unwrap();
    assert!(
        matches!(receipt.outcome, Outcome::Committed { .. }),
        "{receipt:?}"
    );
    for endpoint in &servers.endpoints {
        let c = raw(endpoint).await;
        eventually("every node to refuse the revoked token", || {
            let (c, stolen) = (c.clone(), stolen.clone());
            async move {
                matches!(
                    read_with(&c, stolen).await,
                    Err(ApiError::Token(TokenError::Revoked { .. }))
                )
            }
        })
        .await;
    }
    // A new login after the revocation is good.
    let fresh = bob_client.login(&bob_key).await.unwrap();
    read_with(&raw(&servers.endpoints[0]).await, fresh)
        .await
        .unwrap();
    // Revoking someone else's tokens needs the permission.
    let other = bob
        .admin(
            &bob_client,
            vec![AdminOp::RevokeTokens {
                player: admin_key().public(),
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            other,
            ClientError::Api(ApiError::Forbidden(Rejection::Denied { .. }))
        ),
        "{other}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_the_audit_trail_follow_the_readers_roles() {
    let servers = Servers::start(3, "reads").await;
    let admin = servers.client().await;
    servers.create_location(&admin, LOCATION).await;
    let mut carol = Player::new(Keypair::from_seed([0xca; 32]));
    let carol_client = Client::connect(&servers.endpoints).await.unwrap();
    carol_client.login(carol.key()).await.unwrap();
    carol
        .transact(&carol_client, LOCATION, put("unit/c"))
        .await
        .unwrap();
    let mut admin_player = servers.admin.lock().await;
    admin_player
        .transact(&admin, LOCATION, put("secret/1"))
        .await
        .unwrap();
    // Invitation-only, and Carol may read only what she owns.
    let reader = AdminOp::DefineRole {
        role: "owner_reader".into(),
        permissions: vec![garrison_client::policy::Permission {
            actions: vec![garrison_client::policy::Action::Read],
            entities: "*".into(),
            owner: garrison_client::policy::Owner::Own,
        }],
    };
    let default = AdminOp::SetDefaultRole {
        role: Some("owner_reader".into()),
    };
    let r = admin_player
        .admin(&admin, vec![reader, default])
        .await
        .unwrap();
    assert!(matches!(r.outcome, Outcome::Committed { .. }), "{r:?}");
    let mine = carol_client
        .get_entity(LOCATION, "unit/c", ReadMode::Linearizable)
        .await
        .unwrap();
    assert!(mine.entity.is_some());
    let theirs = carol_client
        .get_entity(LOCATION, "secret/1", ReadMode::Linearizable)
        .await
        .unwrap_err();
    assert!(
        matches!(
            theirs,
            ClientError::Api(ApiError::Forbidden(Rejection::Denied { .. }))
        ),
        "{theirs}"
    );
    let all = carol_client
        .get_location(LOCATION, ReadMode::Linearizable, 100)
        .await
        .unwrap();
    assert_eq!(all.entities.keys().collect::<Vec<_>>(), ["unit/c"]);
    // Carol's own audit trail: yes. Everyone's: no. The admin's: everything.
    let own = carol_client
        .audit(LOCATION, Some(carol.key().public()), 0, 100)
        .await
        .unwrap();
    assert_eq!(own.entries.len(), 1);
    assert_eq!(own.entries[0].player, carol.key().public());
    own.entries[0]
        .transaction
        .as_ref()
        .unwrap()
        .verify()
        .unwrap();
    let everyone = carol_client
        .audit(LOCATION, None, 0, 100)
        .await
        .unwrap_err();
    assert!(
        matches!(
            everyone,
            ClientError::Api(ApiError::Forbidden(Rejection::Denied { .. }))
        ),
        "{everyone}"
    );
    let full = admin.audit(LOCATION, None, 0, 100).await.unwrap();
    assert_eq!(full.entries.len(), 2);
    let admin_trail = admin
        .audit(garrison_client::policy::ADMIN_LOCATION, None, 0, 100)
        .await
        .unwrap();
    assert!(admin_trail.entries.len() >= 2, "{admin_trail:?}");
    // The administrative pseudo-location holds no entities to read.
    let meta = admin
        .get_entity(
            garrison_client::policy::ADMIN_LOCATION,
            "x",
            ReadMode::Linearizable,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(meta, ClientError::Api(ApiError::InvalidRequest(_))),
        "{meta}"
    );
    // Without a session there is nothing to read.
    let anonymous = Client::connect(&servers.endpoints).await.unwrap();
    assert_eq!(
        anonymous
            .get_entity(LOCATION, "unit/c", ReadMode::Linearizable)
            .await
            .unwrap_err(),
        ClientError::Api(ApiError::Token(TokenError::Missing))
    );
}
