//! TransactionAuthenticator, session half: login challenges, session tokens
//! and their checks, and the session clock tokens expire on.
//!
//! The token format and the signature rules are `garrison_client::token`'s;
//! this module holds the cluster's token key and reads what a token check
//! needs from the meta group, in one look at this node's meta replica: the
//! session clock (now), its applied index and the player's latest
//! revocation. A revocation is honoured by a node once it has applied it (a
//! heartbeat after commit on a healthy node; `tests/sessions.rs` polls every
//! node for it).
//!
//! The session clock lives in the meta group's state and advances only by
//! ticks: about once a second the meta leader's node proposes the time its
//! monotonic clock measured since it saw the last tick applied (at most 10 s
//! a tick). No node's wall clock enters it, so a leader whose clock is wrong
//! can neither freeze tokens nor expire them early. A node that has seen no
//! tick for 5 s refuses tokens as unavailable: cut off from the meta group,
//! it could not tell the time or recent revocations.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use garrison_client::api::ApiError;
use garrison_client::token::{Challenge, SessionToken, TokenClaims, TokenError, MAX_TOKEN_TTL_MS};
use garrison_client::tx::{PlayerKey, SIGNATURE_BYTES};
use garrison_client::Keypair;
use garrison_raft::{codec, Node, META_GROUP};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::api::service::api_error;
use crate::security::admin::{AdminApp, AdminCommand, Revocation};

/// How often the meta leader's node ticks the session clock.
pub const SESSION_TICK_MS: u64 = 1_000;
/// A node that has seen no tick applied for this long refuses tokens
/// (Unavailable): its meta replica is cut off or behind, so it can tell
/// neither the time nor recent revocations.
pub const MAX_SESSION_CLOCK_STALENESS_MS: u64 = 5_000;

/// The cluster's token key, the lifetime of the tokens this node issues, and
/// when this node last saw the session clock move.
pub struct Sessions {
    key: Keypair,
    public: PlayerKey,
    cluster: String,
    ttl_ms: u64,
    seen: Mutex<(u64, Instant)>,
    /// Tokens whose signature checked out, by digest of their bytes.
    verified: Mutex<HashMap<[u8; 32], TokenClaims>>,
}

/// Most verified tokens a node remembers; it forgets them all when full.
pub const MAX_VERIFIED_TOKENS: usize = 65_536;

/// Milliseconds since the Unix epoch on this node's clock (challenges only).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a token check reads from the meta replica, in one look.
struct MetaView {
    index: u64,
    clock_ms: u64,
    revoked: Option<Revocation>,
}

fn meta_view(node: &Node, player: Option<&PlayerKey>) -> Result<MetaView, ApiError> {
    node.read_local(META_GROUP, |s| {
        let admin = garrison_raft::meta::extension_of(s)
            .and_then(|e| e.as_any().downcast_ref::<AdminApp>());
        MetaView {
            index: s.applied_index(),
            clock_ms: admin.map(AdminApp::session_clock_ms).unwrap_or(0),
            revoked: admin.zip(player).and_then(|(a, p)| a.revoked(p)),
        }
    })
    .map_err(api_error)
}

impl Sessions {
    /// Loads the cluster's token key (a key file, the same on every node).
    pub fn load(path: &Path, cluster: &str, ttl_ms: u64) -> anyhow::Result<Self> {
        if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL_MS {
            anyhow::bail!("token_ttl_ms must be 1 to {MAX_TOKEN_TTL_MS}, got {ttl_ms}");
        }
        let key = Keypair::load(path)
            .with_context(|| format!("the cluster's token key ({})", path.display()))?;
        Ok(Self {
            public: key.public(),
            key,
            cluster: cluster.to_string(),
            ttl_ms,
            seen: Mutex::new((0, Instant::now())),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Notes the session clock's value; returns how long ago it last moved.
    fn observe(&self, clock_ms: u64) -> Duration {
        let mut seen = self.seen.lock().expect("session clock");
        if seen.0 != clock_ms {
            *seen = (clock_ms, Instant::now());
        }
        seen.1.elapsed()
    }

    /// The replica's view, refused if the session clock stands still.
    fn fresh_view(&self, node: &Node, player: Option<&PlayerKey>) -> Result<MetaView, ApiError> {
        let view = meta_view(node, player)?;
        let still = self.observe(view.clock_ms);
        if view.clock_ms == 0 || still > Duration::from_millis(MAX_SESSION_CLOCK_STALENESS_MS) {
            return Err(ApiError::Unavailable(format!(
                "this node's meta replica has seen no session-clock tick for {} ms; try another node",
                still.as_millis()
            )));
        }
        Ok(view)
    }

    /// A fresh login challenge.
    pub fn challenge(&self) -> Challenge {
        Challenge::issue(&self.key, &self.cluster, wall_clock_ms())
    }

    /// Checks a login's challenge and the player's answer (cheap checks
    /// first); the caller then charges the player and issues the token.
    pub fn check_login(
        &self,
        player: &PlayerKey,
        challenge: &Challenge,
        answer: &[u8],
    ) -> Result<(), ApiError> {
        if answer.len() != SIGNATURE_BYTES {
            return Err(ApiError::Token(TokenError::BadLogin));
        }
        challenge
            .check(&self.public, &self.cluster, wall_clock_ms())
            .map_err(ApiError::Token)?;
        challenge
            .check_answer(player, answer)
            .map_err(ApiError::Token)
    }

    /// Issues `player`'s token, stamped with this node's meta replica's
    /// applied index and session clock. No write: a replica that lags only
    /// makes the token expire sooner and fall to revocations it has not yet
    /// seen, never the other way round.
    pub fn issue(&self, node: &Node, player: PlayerKey) -> Result<SessionToken, ApiError> {
        let view = self.fresh_view(node, None)?;
        let claims = TokenClaims {
            cluster: self.cluster.clone(),
            player,
            issued_at_ms: view.clock_ms,
            issued_at_index: view.index,
            expires_at_ms: view.clock_ms.saturating_add(self.ttl_ms),
        };
        Ok(SessionToken::issue(&self.key, &claims))
    }

    /// Checks a token against this node's meta replica, read once:
    /// signature, cluster, expiry on the session clock, revocations.
    pub fn verify(&self, node: &Node, token: &SessionToken) -> Result<TokenClaims, ApiError> {
        // A token whose signature this node checked before is looked up,
        // not verified again (a signature check costs ~45 µs per read);
        // expiry and revocation are checked every time.
        let digest: [u8; 32] = Sha256::new()
            .chain_update(&token.claims)
            .chain_update(&token.signature)
            .finalize()
            .into();
        let known = self
            .verified
            .lock()
            .expect("verified tokens")
            .get(&digest)
            .cloned();
        let player = match &known {
            Some(claims) => claims.player,
            None => token.peek().map_err(ApiError::Token)?.player,
        };
        let view = self.fresh_view(node, Some(&player))?;
        let claims = match known {
            Some(claims) if view.clock_ms >= claims.expires_at_ms => {
                return Err(ApiError::Token(TokenError::Expired {
                    expired_at_ms: claims.expires_at_ms,
                    now_ms: view.clock_ms,
                }))
            }
            Some(claims) => claims,
            None => {
                let claims = token
                    .verify(&self.public, &self.cluster, view.clock_ms)
                    .map_err(ApiError::Token)?;
                let mut verified = self.verified.lock().expect("verified tokens");
                if verified.len() >= MAX_VERIFIED_TOKENS {
                    verified.clear();
                }
                verified.insert(digest, claims.clone());
                claims
            }
        };
        match view.revoked {
            Some(r) if r.index > claims.issued_at_index => {
                Err(ApiError::Token(TokenError::Revoked {
                    revoked_at_index: r.index,
                }))
            }
            _ => Ok(claims),
        }
    }
}

/// Ticks the session clock while this node leads the meta group: about
/// every [`SESSION_TICK_MS`], by the time elapsed (on this node's monotonic
/// clock) since it saw the clock last move. Runs until `stop` is cancelled.
pub async fn clock(node: Node, sessions: Arc<Sessions>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(SESSION_TICK_MS / 4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(view) = meta_view(&node, None) else {
            continue;
        };
        let since = sessions.observe(view.clock_ms);
        if node.leader(META_GROUP) != Some(node.id())
            || since < Duration::from_millis(SESSION_TICK_MS)
        {
            continue;
        }
        let elapsed_ms = since.as_millis() as u64;
        if let Err(e) = node
            .extension_command(codec::encode(&AdminCommand::Tick { elapsed_ms }))
            .await
        {
            tracing::debug!("session clock tick failed: {e}");
        }
    }
}
