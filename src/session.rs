//! TransactionAuthenticator, session half: login challenges, session tokens
//! and their checks, and the meta clock tokens expire on.
//!
//! The token format and the signature rules are `garrison_client::token`'s;
//! this module holds the cluster's token key and the two facts a token check
//! needs from the meta group: its log time (now) and the player's latest
//! revocation. Both come from this node's meta replica, so a revocation is
//! honoured by a node once it has applied it (a heartbeat after commit on a
//! healthy node); `tests/sessions.rs` polls every node for it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use garrison_client::api::ApiError;
use garrison_client::token::{Challenge, SessionToken, TokenClaims, TokenError, MAX_TOKEN_TTL_MS};
use garrison_client::tx::{PlayerKey, SIGNATURE_BYTES};
use garrison_client::Keypair;
use garrison_raft::{codec, Node, META_GROUP};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminApp, AdminCommand, AdminReply};
use crate::service::api_error;

/// How long the meta log may stay quiet before its leader advances its log
/// time with a tick (tokens expire on that time).
pub const META_CLOCK_TICK_MS: u64 = 1_000;

/// The cluster's token key and the lifetime of the tokens this node issues.
pub struct Sessions {
    key: Keypair,
    public: PlayerKey,
    cluster: String,
    ttl_ms: u64,
}

/// Milliseconds since the Unix epoch on this node's clock.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        })
    }

    /// A fresh login challenge.
    pub fn challenge(&self) -> Challenge {
        Challenge::issue(&self.key, &self.cluster, wall_clock_ms())
    }

    /// Checks a login's challenge and the player's answer (cheap checks
    /// first); the caller then charges the player and stamps the login.
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

    /// Stamps `player`'s login in the meta log and issues its token.
    pub async fn issue(&self, node: &Node, player: PlayerKey) -> Result<SessionToken, ApiError> {
        let command = codec::encode(&AdminCommand::StampLogin { player });
        let reply = node.extension_command(command).await.map_err(api_error)?;
        let AdminReply::Stamped { index, log_time_ms } = codec::decode(&reply)
            .map_err(|e| ApiError::Internal(format!("undecodable login stamp: {e}")))?
        else {
            return Err(ApiError::Internal(
                "the meta group did not stamp the login".into(),
            ));
        };
        let claims = TokenClaims {
            cluster: self.cluster.clone(),
            player,
            issued_at_ms: log_time_ms,
            issued_at_index: index,
            expires_at_ms: log_time_ms.saturating_add(self.ttl_ms),
        };
        Ok(SessionToken::issue(&self.key, &claims))
    }

    /// Checks a token against this node's meta replica: signature, cluster,
    /// expiry on its log time, revocations it has applied.
    pub fn verify(&self, node: &Node, token: &SessionToken) -> Result<TokenClaims, ApiError> {
        let now_ms = node
            .read_local(META_GROUP, |s| s.log_time_ms)
            .map_err(api_error)?;
        let claims = token
            .verify(&self.public, &self.cluster, now_ms)
            .map_err(ApiError::Token)?;
        let revoked = node
            .read_extension(|ext| {
                ext.as_any()
                    .downcast_ref::<AdminApp>()
                    .and_then(|a| a.revoked(&claims.player))
            })
            .map_err(api_error)?;
        match revoked {
            Some(r) if r.index > claims.issued_at_index => {
                Err(ApiError::Token(TokenError::Revoked {
                    revoked_at_index: r.index,
                }))
            }
            _ => Ok(claims),
        }
    }
}

/// While this node leads the meta group, advances its log time whenever the
/// log has been quiet for [`META_CLOCK_TICK_MS`], until `stop` is cancelled.
pub async fn clock(node: Node, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(META_CLOCK_TICK_MS / 2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.leader(META_GROUP) != Some(node.id()) {
            continue;
        }
        let log_time_ms = node.read_local(META_GROUP, |s| s.log_time_ms).unwrap_or(0);
        if wall_clock_ms() < log_time_ms.saturating_add(META_CLOCK_TICK_MS) {
            continue;
        }
        if let Err(e) = node
            .extension_command(codec::encode(&AdminCommand::Tick))
            .await
        {
            tracing::debug!("meta clock tick failed: {e}");
        }
    }
}
