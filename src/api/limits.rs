//! Rate limits and timeouts of the client port: a token bucket per
//! connection (charged for every request before any work), a token bucket
//! per player (charged for every transaction whose signature verified), and
//! a watchdog that closes connections that never send a request
//! (`handshake_timeout_ms`) or fall silent (`idle_timeout_ms`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use garrison_client::api::ApiError;
use garrison_client::tx::PlayerKey;

/// Most players whose buckets a node tracks at once; when full, buckets
/// that have refilled completely (idle players) are forgotten first.
pub const MAX_TRACKED_PLAYERS: usize = 100_000;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
    rate_per_s: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            tokens: burst as f64,
            updated: Instant::now(),
            rate_per_s: rate_per_s as f64,
            burst: burst.max(1) as f64,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
        self.updated = now;
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(if self.rate_per_s > 0.0 {
            missing / self.rate_per_s
        } else {
            3600.0
        }))
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

fn limited(what: &str, wait: Duration) -> ApiError {
    ApiError::RateLimited {
        what: what.to_string(),
        retry_after_ms: wait.as_millis().max(1) as u64,
    }
}

/// The per-player buckets of one node.
pub struct PlayerLimiter {
    buckets: Mutex<HashMap<PlayerKey, Bucket>>,
    rate_per_s: u32,
    burst: u32,
}

impl PlayerLimiter {
    /// Buckets of `rate_per_s`, `burst`.
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            rate_per_s,
            burst,
        }
    }

    /// Charges one transaction to `player`.
    pub fn admit(&self, player: &PlayerKey) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("player buckets");
        if buckets.len() >= MAX_TRACKED_PLAYERS && !buckets.contains_key(player) {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_TRACKED_PLAYERS {
                return Err(limited(
                    "too many active players on this node",
                    Duration::from_secs(1),
                ));
            }
        }
        let bucket = buckets
            .entry(*player)
            .or_insert_with(|| Bucket::new(self.rate_per_s, self.burst));
        bucket
            .take(now)
            .map_err(|wait| limited("player_transactions_per_s", wait))
    }
}

/// One client connection's bucket and activity clock.
pub struct Connection {
    bucket: Mutex<Bucket>,
    opened: Instant,
    /// Milliseconds after `opened` of the last request; 0: none yet.
    last_request_ms: AtomicU64,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Connection {
    /// A new connection's state.
    pub fn new(
        requests_per_s: u32,
        burst: u32,
        handshake_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            bucket: Mutex::new(Bucket::new(requests_per_s, burst)),
            opened: Instant::now(),
            last_request_ms: AtomicU64::new(0),
            handshake_timeout,
            idle_timeout,
        }
    }

    /// Charges one request and records the activity.
    pub fn admit(&self) -> Result<(), ApiError> {
        let now = Instant::now();
        self.last_request_ms.store(
            now.duration_since(self.opened).as_millis().max(1) as u64,
            Ordering::Relaxed,
        );
        self.bucket
            .lock()
            .expect("connection bucket")
            .take(now)
            .map_err(|wait| limited("connection_requests_per_s", wait))
    }

    /// Resolves when the connection has been silent too long, with the reason.
    pub async fn close_when_idle(&self) -> &'static str {
        loop {
            let last = self.last_request_ms.load(Ordering::Relaxed);
            let (deadline, why) = if last == 0 {
                (
                    self.opened + self.handshake_timeout,
                    "no request within handshake_timeout_ms",
                )
            } else {
                (
                    self.opened + Duration::from_millis(last) + self.idle_timeout,
                    "idle for idle_timeout_ms",
                )
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(10, 3);
        for _ in 0..3 {
            b.take(start).unwrap();
        }
        let wait = b.take(start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        b.take(start + Duration::from_millis(100)).unwrap();
        assert!(b.take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn players_have_separate_buckets() {
        let limiter = PlayerLimiter::new(1, 2);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        limiter.admit(&a).unwrap();
        limiter.admit(&a).unwrap();
        assert!(matches!(
            limiter.admit(&a),
            Err(ApiError::RateLimited { .. })
        ));
        limiter.admit(&b).unwrap();
    }
}
