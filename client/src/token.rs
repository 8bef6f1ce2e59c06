//! Session tokens: what a player shows for what is not a signed transaction
//! (reads, the audit trail, later subscriptions and the dashboard).
//!
//! # Logging in
//!
//! 1. The client asks any node for a [`Challenge`]: a random nonce, the
//!    cluster's name and an expiry, signed with the cluster's token key (a
//!    key every node holds: `token_key` in the configuration), so any node
//!    can later check it without remembering it.
//! 2. The player signs [`LOGIN_DOMAIN`] ‖ the challenge's bytes with its own
//!    key and sends the challenge, its public key and that signature.
//! 3. The node checks the challenge (signature, cluster, not expired) and the
//!    player's signature (`verify_strict`), then stamps the login in the meta
//!    group's log; the token it returns carries that entry's log time and
//!    meta index, and an expiry `ttl` later, signed with the cluster's token
//!    key.
//!
//! # Checking a token
//!
//! A node accepts a token whose signature verifies under the cluster's token
//! key, whose cluster is its own, which has not expired *on log time* (the
//! log time of the node's meta replica, which the meta leader advances at
//! least every second; node clocks do not matter), and which was not issued
//! before a revocation of the player's tokens recorded in the meta group
//! (`AdminOp::RevokeTokens`, ordered in the same log as the logins).
//!
//! Tokens, challenges and their claims are encoded like transactions:
//! bincode 2, little-endian, fixed-width integers (`docs/formats.md`).

use serde::{Deserialize, Serialize};

use crate::keys::Keypair;
use crate::tx::{self, PlayerKey};

/// Prefix of what the cluster signs in a token.
pub const TOKEN_DOMAIN: &[u8] = b"garrison/token/v1";
/// Prefix of what the cluster signs in a challenge.
pub const CHALLENGE_DOMAIN: &[u8] = b"garrison/challenge/v1";
/// Prefix of what a player signs to log in.
pub const LOGIN_DOMAIN: &[u8] = b"garrison/login/v1";
/// Largest encoded token or challenge, in bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// How long a challenge may be answered, in milliseconds.
pub const CHALLENGE_TTL_MS: u64 = 30_000;
/// The longest token lifetime a node may be configured with (revocations
/// are kept this long, so it bounds the meta group's revocation list).
pub const MAX_TOKEN_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// What a challenge says, signed by the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeBody {
    /// The cluster's name.
    pub cluster: String,
    /// Random bytes: no two challenges are alike.
    pub nonce: [u8; 16],
    /// The node's clock plus [`CHALLENGE_TTL_MS`] when it was issued.
    pub expires_at_ms: u64,
}

/// A login challenge: canonical [`ChallengeBody`] bytes and the cluster's
/// signature of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The canonical body.
    pub body: Vec<u8>,
    /// The cluster token key's signature of `CHALLENGE_DOMAIN ‖ body`.
    pub signature: Vec<u8>,
}

/// What a token says, signed by the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The cluster's name.
    pub cluster: String,
    /// Whose token it is.
    pub player: PlayerKey,
    /// The log time of the meta entry that stamped the login (ms since the epoch).
    pub issued_at_ms: u64,
    /// The meta index of that entry: revocations compare against it.
    pub issued_at_index: u64,
    /// The log time after which the token is refused.
    pub expires_at_ms: u64,
}

/// A session token: canonical [`TokenClaims`] bytes and the cluster's
/// signature of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken {
    /// The canonical claims.
    pub claims: Vec<u8>,
    /// The cluster token key's signature of `TOKEN_DOMAIN ‖ claims`.
    pub signature: Vec<u8>,
}

/// Why a token, a challenge or a login was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TokenError {
    /// No token came with a request that needs one.
    #[error("this request needs a session token: log in first (Client::login)")]
    Missing,
    /// The bytes are too long or do not decode canonically.
    #[error("malformed token or challenge: {0}")]
    Malformed(String),
    /// The cluster's signature does not verify: forged, or another cluster's key.
    #[error("the token or challenge was not signed by this cluster")]
    BadSignature,
    /// Issued for another cluster.
    #[error("the token is for cluster {got:?}, this is {expected:?}")]
    WrongCluster {
        /// This cluster.
        expected: String,
        /// The token's.
        got: String,
    },
    /// Expired on log time; log in again.
    #[error("expired at log time {expired_at_ms} ms (now {now_ms} ms); log in again")]
    Expired {
        /// When it expired.
        expired_at_ms: u64,
        /// The log time it was checked at.
        now_ms: u64,
    },
    /// The player's tokens were revoked after this one was issued; log in again.
    #[error("revoked at meta index {revoked_at_index}; log in again")]
    Revoked {
        /// The revocation's meta index.
        revoked_at_index: u64,
    },
    /// The player's answer to the challenge does not verify.
    #[error("the login signature does not verify for this challenge and player key")]
    BadLogin,
}

impl Challenge {
    /// A fresh challenge for `cluster`, valid until `now_ms + CHALLENGE_TTL_MS`.
    pub fn issue(cluster_key: &Keypair, cluster: &str, now_ms: u64) -> Self {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let body = tx::canonical_encode(&ChallengeBody {
            cluster: cluster.to_string(),
            nonce,
            expires_at_ms: now_ms.saturating_add(CHALLENGE_TTL_MS),
        });
        let signature = tx::sign_with_domain(cluster_key.signing_key(), CHALLENGE_DOMAIN, &body);
        Self { body, signature }
    }

    /// Checks the cluster's signature, the cluster and the expiry (on the
    /// checking node's clock `now_ms`).
    pub fn check(
        &self,
        cluster_public: &PlayerKey,
        cluster: &str,
        now_ms: u64,
    ) -> Result<ChallengeBody, TokenError> {
        let body: ChallengeBody = decode_signed(
            cluster_public,
            CHALLENGE_DOMAIN,
            &self.body,
            &self.signature,
        )?;
        if body.cluster != cluster {
            return Err(TokenError::WrongCluster {
                expected: cluster.to_string(),
                got: body.cluster,
            });
        }
        if now_ms > body.expires_at_ms {
            return Err(TokenError::Expired {
                expired_at_ms: body.expires_at_ms,
                now_ms,
            });
        }
        Ok(body)
    }

    /// The player's answer: its signature of `LOGIN_DOMAIN ‖ body`.
    pub fn answer(&self, player: &Keypair) -> Vec<u8> {
        tx::sign_with_domain(player.signing_key(), LOGIN_DOMAIN, &self.body)
    }

    /// Checks `player`'s answer (strictly, like a transaction signature).
    pub fn check_answer(&self, player: &PlayerKey, answer: &[u8]) -> Result<(), TokenError> {
        tx::verify_signed(player, LOGIN_DOMAIN, &self.body, answer)
            .map_err(|_| TokenError::BadLogin)
    }
}

impl SessionToken {
    /// Signs `claims` with the cluster's token key.
    pub fn issue(cluster_key: &Keypair, claims: &TokenClaims) -> Self {
        let claims = tx::canonical_encode(claims);
        let signature = tx::sign_with_domain(cluster_key.signing_key(), TOKEN_DOMAIN, &claims);
        Self { claims, signature }
    }

    /// Checks the signature, the cluster and the expiry at log time `now_ms`
    /// (revocation is the caller's: it needs the meta group's state).
    pub fn verify(
        &self,
        cluster_public: &PlayerKey,
        cluster: &str,
        now_ms: u64,
    ) -> Result<TokenClaims, TokenError> {
        let claims: TokenClaims =
            decode_signed(cluster_public, TOKEN_DOMAIN, &self.claims, &self.signature)?;
        if claims.cluster != cluster {
            return Err(TokenError::WrongCluster {
                expected: cluster.to_string(),
                got: claims.cluster,
            });
        }
        if now_ms >= claims.expires_at_ms {
            return Err(TokenError::Expired {
                expired_at_ms: claims.expires_at_ms,
                now_ms,
            });
        }
        Ok(claims)
    }

    /// The claims, unchecked (for a client that wants to know its expiry).
    pub fn peek(&self) -> Result<TokenClaims, TokenError> {
        tx::canonical_decode(&self.claims, MAX_TOKEN_BYTES).map_err(TokenError::Malformed)
    }
}

/// Size check, then the signature, then canonical decoding.
fn decode_signed<T: serde::de::DeserializeOwned + Serialize>(
    public: &PlayerKey,
    domain: &[u8],
    bytes: &[u8],
    signature: &[u8],
) -> Result<T, TokenError> {
    if bytes.len() > MAX_TOKEN_BYTES || signature.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "more than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    tx::verify_signed(public, domain, bytes, signature).map_err(|_| TokenError::BadSignature)?;
    tx::canonical_decode(bytes, MAX_TOKEN_BYTES).map_err(TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(player: &Keypair) -> TokenClaims {
        TokenClaims {
            cluster: "c".into(),
            player: player.public(),
            issued_at_ms: 1_000,
            issued_at_index: 7,
            expires_at_ms: 5_000,
        }
    }

    #[test]
    fn a_token_verifies_only_under_its_cluster_key_name_and_lifetime() {
        let cluster = Keypair::from_seed([1; 32]);
        let other = Keypair::from_seed([2; 32]);
        let player = Keypair::from_seed([3; 32]);
        let token = SessionToken::issue(&cluster, &claims(&player));
        assert_eq!(
            token.verify(&cluster.public(), "c", 4_999).unwrap(),
            claims(&player)
        );
        let cases = [
            (
                token.verify(&other.public(), "c", 2_000),
                "not signed by this cluster",
            ),
            (
                token.verify(&cluster.public(), "d", 2_000),
                "is for cluster",
            ),
            (token.verify(&cluster.public(), "c", 5_000), "expired"),
        ];
        for (result, words) in cases {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
        // A forged token: the same claims with a player's own signature, or
        // claims changed under the cluster's signature.
        let forged = SessionToken::issue(&player, &claims(&player));
        assert_eq!(
            forged.verify(&cluster.public(), "c", 2_000),
            Err(TokenError::BadSignature)
        );
        let mut longer = claims(&player);
        longer.expires_at_ms = u64::MAX;
        let tampered = SessionToken {
            claims: tx::canonical_encode(&longer),
            signature: token.signature.clone(),
        };
        assert_eq!(
            tampered.verify(&cluster.public(), "c", 2_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_challenge_is_answered_only_by_the_player_in_time() {
        let cluster = Keypair::from_seed([1; 32]);
        let player = Keypair::from_seed([3; 32]);
        let thief = Keypair::from_seed([4; 32]);
        let challenge = Challenge::issue(&cluster, "c", 0);
        challenge.check(&cluster.public(), "c", 100).unwrap();
        assert!(matches!(
            challenge.check(&cluster.public(), "c", CHALLENGE_TTL_MS + 1),
            Err(TokenError::Expired { .. })
        ));
        let answer = challenge.answer(&player);
        challenge.check_answer(&player.public(), &answer).unwrap();
        assert_eq!(
            challenge.check_answer(&thief.public(), &answer),
            Err(TokenError::BadLogin)
        );
        assert_eq!(
            challenge.check_answer(&player.public(), &challenge.answer(&thief)),
            Err(TokenError::BadLogin)
        );
        let forged = Challenge::issue(&thief, "c", 0);
        assert_eq!(
            forged.check(&cluster.public(), "c", 100),
            Err(TokenError::BadSignature)
        );
    }
}
